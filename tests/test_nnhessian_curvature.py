"""nnhessian.ggn and nnhessian.curvature: per-sample GGN spectra and the exact batch GGN spectrum
against dense float64 references built here from torch.func.jacrev of the batch logits (an
independent route: one reverse pass per output row of the whole batch, no per-sample vmap, the
closed-form Lambda = diag(p) - p p^T, a P x P eigensolver or an SVD)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nnhessian.ggn
from nnhessian.curvature import curvature_summary, per_sample_curvature, residual_share
from nnhessian.data import InMemoryDataset, draw_batch_indices
from nnhessian.ggn import batch_ggn_spectrum
from nnhessian.models import build
from rmt.tails import hill_estimate
from tests.helpers import BATCH_IDX, F64, images_for, subset, tiny_model
from tests.tolerances import (
    GGN_RTOL64,
    GGN_WRONG_LAMBDA_MIN,
    RESIDUAL_LINEAR_ATOL64,
    overlap_atol,
)

pytestmark = pytest.mark.usefixtures("single_thread")

DIGITS_MODELS = ("mlp", "cnn", "cnn_bn")  # cnn_bn: dropout 0.3, left in train mode (helpers)


# ---- the independent reference ----------------------------------------------------------------


def reference(model, X):
    """``(J, p, losses-free logits)``: J ``(n, C, P)`` by jacrev of the batch logits (eval mode,
    float64 copy), p ``(n, C)`` the softmax."""
    m = copy.deepcopy(model).double().eval()
    named = [(k, p) for k, p in m.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in named]
    consts = {k: b.detach() for k, b in m.named_buffers()}
    w = torch.cat([p.detach().reshape(-1) for _, p in named])
    X = X.double()

    def logits(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {k: t.view(s) for (k, _), t, s in zip(named, parts, shapes, strict=True)}
        return torch.func.functional_call(m, (params, consts), (X,))

    f = logits(w)
    return torch.func.jacrev(logits)(w).detach(), torch.softmax(f, -1).detach()


def closed_form_lambda(p):
    return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)


def dense_ggn(J, p):
    """``(n, P, P)``: J_i^T Lambda_i J_i."""
    return J.transpose(1, 2) @ closed_form_lambda(p) @ J


def factored(J, p):
    """``A_i^T J_i`` with the closed-form factor A = diag(sqrt p) - p sqrt(p)^T (A A^T = Lambda,
    no eigensolver): its squared singular values are the nonzero spectrum of G_i."""
    s = p.sqrt()
    A = torch.diag_embed(s) - p.unsqueeze(-1) * s.unsqueeze(-2)
    return A.transpose(1, 2) @ J


def top_eigs(G, r):
    """The r largest eigenvalues of symmetric G (descending)."""
    return torch.linalg.eigvalsh(G).flip(-1)[..., :r].numpy()


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def digits_case(name):
    data = subset(images_for(name))
    J, p = reference(tiny_model(name), data.X)
    return tiny_model(name), data, J, p


def cifar_case():
    """CIFAR-shaped inputs (3 x 32 x 32), C = 100, random data: P = 25,738 (too large for a
    P x P matrix; the reference is the SVD of the stacked closed-form factors)."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(5, 3, 32, 32, generator=g, dtype=F64)
    y = torch.randint(0, 100, (5,), generator=g)
    model = build("cnn", 100, in_channels=3, width=1, image_size=32, generator=g)
    return model, InMemoryDataset(X, y, 100)


# ---- per-sample spectra -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_per_sample_eigenvalues_match_the_dense_ggn(name):
    model, data, J, p = digits_case(name)
    flags = [m.training for m in model.modules()]
    before = [t.clone() for t in model.state_dict().values()]
    table = per_sample_curvature(model, data)
    G = dense_ggn(J, p)
    C = p.shape[1]
    assert table.eigenvalues.shape == (len(data), C) and table.num_classes == C
    errs = [rel(table.eigenvalues[i], top_eigs(G[i], C)) for i in range(len(data))]
    assert max(errs) <= GGN_RTOL64, max(errs)
    # the table's other columns
    np.testing.assert_array_equal(table.indices, np.arange(len(data)))
    np.testing.assert_array_equal(table.labels, data.y.numpy())
    losses = F.cross_entropy(torch.log(p), data.y, reduction="none").numpy()
    assert rel(table.losses, losses) <= GGN_RTOL64
    assert table.subset_size is None and table.seed is None and table.num_samples == len(data)
    # the model is left as it was: modes restored, weights untouched
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))


def test_per_sample_eigenvalues_with_100_classes():
    model, data = cifar_case()
    J, p = reference(model, data.X)
    table = per_sample_curvature(model, data)
    assert table.eigenvalues.shape == (5, 100) and table.num_parameters == 25_738
    ref = torch.linalg.svdvals(factored(J, p)).numpy() ** 2  # (5, 100) descending
    errs = [rel(table.eigenvalues[i], ref[i]) for i in range(5)]
    assert max(errs) <= GGN_RTOL64, max(errs)


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_ggn_is_psd_and_its_trace_is_the_frobenius_norm(name):
    model, data, J, p = digits_case(name)
    table = per_sample_curvature(model, data)
    G = dense_ggn(J, p)
    # ||Lambda^(1/2) J||_F^2 = tr(J^T Lambda J), summed elementwise
    frob = (J * (closed_form_lambda(p) @ J)).sum((1, 2)).numpy()
    assert rel(table.trace, frob) <= GGN_RTOL64
    tops = table.top[:, None]
    assert np.all(table.eigenvalues >= -GGN_RTOL64 * tops)
    assert np.all(top_eigs(G, G.shape[1])[:, -1] >= -GGN_RTOL64 * table.top)
    # full GGN over all samples: trace = mean of the per-sample traces
    full = batch_ggn_spectrum(model, data, range(len(data)))
    assert abs(full.trace - table.trace.mean()) <= GGN_RTOL64 * table.trace.mean()


def test_chunking_and_subsets_give_the_same_rows():
    model, data, _, _ = digits_case("mlp")
    table = per_sample_curvature(model, data)
    small = per_sample_curvature(model, data, max_numbers=4 * 10 * 460)
    assert small.chunk == 4 and table.chunk > len(data)
    assert rel(small.eigenvalues, table.eigenvalues) <= GGN_RTOL64
    sub = per_sample_curvature(
        model, data, subset_size=6, generator=torch.Generator().manual_seed(3)
    )
    expected = draw_batch_indices(len(data), 6, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(sub.indices, expected.numpy())
    assert sub.subset_size == 6 and sub.seed == 3 and sub.num_samples == len(data)
    assert rel(sub.eigenvalues, table.eigenvalues[sub.indices]) <= GGN_RTOL64
    with pytest.raises(TypeError, match="generator"):
        per_sample_curvature(model, data, subset_size=6)
    with pytest.raises(ValueError, match="not both"):
        per_sample_curvature(model, data, indices=[1], subset_size=1)


def test_summary_quantiles_and_tail_index():
    model, data, _, _ = digits_case("mlp")
    table = per_sample_curvature(model, data)
    s = curvature_summary(table)
    np.testing.assert_array_equal(s.quantiles, np.quantile(table.top, [0.5, 0.9, 0.99]))
    assert s.maximum == table.top.max() and s.n == len(data)
    assert s.hill == hill_estimate(table.top) and s.hill.k == 4  # floor(sqrt(23))
    assert s.mean_trace == pytest.approx(table.trace.mean(), rel=1e-15)


# ---- top eigenvector overlaps ------------------------------------------------------------------


def test_top_overlaps_match_the_dense_eigenvectors():
    """<u_i, v>^2 / ||v||^2 against the top eigenvector of the dense G_i: 1 for v = that
    eigenvector (sample 7), the dense overlap for a random v; the eigenvectors are accurate to
    angle <= (error of G) / gap (Davis-Kahan), as is the reference's."""
    model, data, J, p = digits_case("mlp")
    d, U = torch.linalg.eigh(dense_ggn(J, p))
    u_ref, gap = U[:, :, -1], (d[:, -1] - d[:, -2]).numpy()
    angle = 2 * GGN_RTOL64 * d[:, -1].numpy() / gap
    hit = per_sample_curvature(model, data, direction=3.0 * u_ref[7])
    assert abs(hit.top_overlaps[7] - 1.0) <= overlap_atol(angle[7])
    v = torch.randn(J.shape[2], generator=torch.Generator().manual_seed(4), dtype=F64)
    table = per_sample_curvature(model, data, direction=v, max_numbers=5 * 10 * 460)
    expected = ((u_ref @ v) ** 2 / (v @ v)).numpy()
    diff = np.abs(table.top_overlaps - expected)
    assert np.all(diff <= overlap_atol(angle)), diff.max()
    assert np.all(table.top_overlaps < 0.5)  # a random direction is far from every u_i
    with pytest.raises(ValueError, match="length P"):
        per_sample_curvature(model, data, direction=v[:-1])


# ---- the batch GGN from the Gram matrix --------------------------------------------------------


def dense_batch(J, p, idx):
    return dense_ggn(J[idx], p[idx]).mean(0)


@pytest.mark.parametrize("name", DIGITS_MODELS)
@pytest.mark.parametrize("idx", [BATCH_IDX.tolist(), [13]], ids=["B=7", "B=1"])
def test_batch_spectrum_matches_the_dense_batch_ggn(name, idx):
    model, data, J, p = digits_case(name)
    spec = batch_ggn_spectrum(model, data, idx)
    B, C, P = len(idx), p.shape[1], J.shape[2]
    assert spec.route == "gram" and spec.eigenvalues.shape == (B * C,) and spec.batch_size == B
    ref = top_eigs(dense_batch(J, p, idx), B * C)
    assert rel(spec.eigenvalues, ref) <= GGN_RTOL64, rel(spec.eigenvalues, ref)
    np.testing.assert_array_equal(spec.indices, np.asarray(idx))
    assert spec.num_parameters == P and spec.num_classes == C


def test_batch_routes_and_memory_blocks_agree():
    """Gram matrix kept whole, in recomputed blocks of 3 samples (B = 7: blocks 3, 3, 1), and
    the P x P route, including B C > P (B = 50 > P / C = 46: padded with exact zeros)."""
    model, data, J, p = digits_case("mlp")
    idx = BATCH_IDX.tolist()
    ref = top_eigs(dense_batch(J, p, idx), 70)
    blocks = batch_ggn_spectrum(model, data, idx, max_numbers=3 * 10 * 460, keep_bytes=0)
    kept = batch_ggn_spectrum(model, data, idx, max_numbers=3 * 10 * 460)
    param = batch_ggn_spectrum(model, data, idx, route="parameter")
    assert blocks.chunk == 3 and param.route == "parameter"
    assert rel(blocks.eigenvalues, ref) <= GGN_RTOL64
    assert np.array_equal(kept.eigenvalues, blocks.eigenvalues)  # the same products, kept
    assert rel(param.eigenvalues, ref) <= GGN_RTOL64
    many = list(range(23)) * 2 + [0, 1, 2, 3]  # 50 samples with repeats: G_B is their mean
    auto = batch_ggn_spectrum(model, data, many)
    gram = batch_ggn_spectrum(model, data, many, route="gram")
    assert auto.route == "parameter" and auto.eigenvalues.shape == (500,)
    assert np.all(auto.eigenvalues[460:] == 0.0)
    ref = top_eigs(dense_batch(J, p, many), 460)
    assert rel(auto.eigenvalues[:460], ref) <= GGN_RTOL64
    assert rel(gram.eigenvalues, auto.eigenvalues) <= GGN_RTOL64


def test_batch_spectrum_with_100_classes():
    model, data = cifar_case()
    J, p = reference(model, data.X)
    idx = [4, 0, 2]
    spec = batch_ggn_spectrum(model, data, idx)
    stacked = factored(J[idx], p[idx]).reshape(-1, J.shape[2]) / np.sqrt(len(idx))
    ref = torch.linalg.svdvals(stacked).numpy() ** 2
    assert spec.eigenvalues.shape == (300,)
    assert rel(spec.eigenvalues, ref) <= GGN_RTOL64, rel(spec.eigenvalues, ref)


# ---- a wrong Lambda must fail the same comparisons -----------------------------------------------


def test_a_wrong_output_hessian_fails_the_comparisons(monkeypatch):
    """Lambda = diag(p) without the -p p^T term: per-sample and batch errors are orders of
    magnitude above the tolerance (so the tests above can fail)."""
    model, data, J, p = digits_case("mlp")
    monkeypatch.setattr(nnhessian.ggn, "output_hessian_sqrt", lambda q: torch.diag_embed(q.sqrt()))
    table = per_sample_curvature(model, data)
    G = dense_ggn(J, p)
    err = min(rel(table.eigenvalues[i], top_eigs(G[i], 10)) for i in range(len(data)))
    assert err >= GGN_WRONG_LAMBDA_MIN, err
    idx = BATCH_IDX.tolist()
    spec = batch_ggn_spectrum(model, data, idx)
    assert rel(spec.eigenvalues, top_eigs(dense_batch(J, p, idx), 70)) >= GGN_WRONG_LAMBDA_MIN


# ---- the residual (non-GGN) share, dense ---------------------------------------------------------


def test_residual_share_is_zero_for_softmax_regression():
    """Logits linear in w: nabla^2 f_c = 0, so H_i = G_i exactly."""
    model = build("mlp", 10, hidden=(), generator=torch.Generator().manual_seed(2))
    data = subset(False)
    share = residual_share(model, data, range(8))
    assert share.num_parameters == 650
    assert share.spectral <= RESIDUAL_LINEAR_ATOL64, share.spectral
    assert share.per_sample_frobenius.max() <= RESIDUAL_LINEAR_ATOL64
    assert share.ggn_top == pytest.approx(share.hessian_top, rel=RESIDUAL_LINEAR_ATOL64)


def test_residual_share_is_positive_for_the_mlp():
    model, data, _, _ = digits_case("mlp")
    share = residual_share(model, data, range(8))
    assert share.spectral >= 0.1 and share.per_sample_frobenius.min() >= 0.1, share
    np.testing.assert_array_equal(share.indices, np.arange(8))


def test_ggn_matrix_is_the_mean_of_the_dense_per_sample_ggns():
    model, data, J, p = digits_case("mlp")
    expected = dense_ggn(J, p).mean(0)
    got = nnhessian.ggn.ggn_matrix(model, data)
    assert rel(got.numpy(), expected.numpy()) <= GGN_RTOL64
    half = torch.arange(len(data) // 2)
    got_half = nnhessian.ggn.ggn_matrix(model, data, half, max_numbers=3 * 10 * J.shape[-1])
    assert rel(got_half.numpy(), dense_ggn(J[half], p[half]).mean(0).numpy()) <= GGN_RTOL64


def test_summary_of_a_table_with_too_few_positive_curvatures_has_no_tail_index():
    """Constant outputs (e.g. a dead network at initialisation) give zero GGN eigenvalues: the
    summary reports them, and Hill's index, which needs positive values, is NaN."""
    from nnhessian.curvature import PerSampleCurvature

    n, C = 40, 3
    eig = np.zeros((n, C))
    eig[0, 0] = 2.0  # one positive value: no upper order statistic beyond it
    table = PerSampleCurvature(
        indices=np.arange(n), labels=np.zeros(n, dtype=int), losses=np.ones(n), eigenvalues=eig,
        top_overlaps=None, num_samples=n, subset_size=None, seed=None, num_parameters=10,
        num_classes=C, dtype="float64", chunk=n,
    )  # fmt: skip
    summary = curvature_summary(table)
    assert summary.maximum == 2.0 and np.isnan(summary.hill.alpha) and summary.hill.n == 1
