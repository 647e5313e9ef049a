"""HessianOperator: HVPs against dense Hessians, invariants, model state, determinism, bad input.

All exact comparisons are in float64 on small models (P ~ 400-600) and 23 digits samples in
batches of 10, 10 and 3 (an uneven last batch), against the dense Hessians of
:mod:`nnhessian.reference` (itself checked in ``tests/test_nnhessian_reference.py``) and central
differences of gradients.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnhessian
import nnhessian.hvp as hvp
import nnhessian.operators as operators
from nnhessian import reference
from nnhessian.data import DeterminismError, InMemoryDataset
from nnhessian.models import build
from nnhessian.operators import HessianOperator, as_linear_operator
from tests.helpers import (
    BATCH,
    BATCH_IDX,
    BATCH_RANGES,
    CASES,
    F64,
    N_SUB,
    assert_second_order_agreement,
    fd_errors,
    flat_loss,
    full_operator,
    gradient_of,
    images_for,
    make_model,
    probes,
    references,
    rel_err,
    subset,
    tiny_model,
)
from tests.tolerances import EPS32, HVP_RTOL32, HVP_RTOL64, HVP_SYMMETRY_RTOL64

pytestmark = pytest.mark.usefixtures("single_thread")
METHODS = ("forward-over-reverse", "double-backward")


@functools.cache
def operators_for(name: str, policy: str, method: str) -> dict[str, HessianOperator]:
    full = full_operator(name, policy, method=method)
    return {
        "full": full,
        "batch": full.batch_operator(BATCH_IDX),
        "noise": full.noise_operator(BATCH_IDX),
    }


def state_snapshot(model: nn.Module):
    """Every tensor of the state dict (cloned), every module's mode and BatchNorm settings."""
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = [
        (n, m.training, getattr(m, "track_running_stats", None), getattr(m, "momentum", None))
        for n, m in model.named_modules()
    ]
    return tensors, flags


def assert_same_state(a, b) -> None:
    ta, fa = a
    tb, fb = b
    assert fa == fb
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


# ---- HVPs against dense Hessians ------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("name", "policy"), CASES)
@pytest.mark.parametrize("kind", ["full", "batch", "noise"])
def test_hvp_matches_dense_hessian(name, policy, method, kind):
    op = operators_for(name, policy, method)[kind]
    H = references(name, policy)[kind]
    assert op.dim == H.shape[0] and op.kind == kind and op.method == method
    for v in probes(op.dim, 3):
        hv = op.matvec(v)
        assert hv.shape == (op.dim,) and hv.dtype == F64 and hv.device.type == "cpu"
        assert rel_err(hv, H @ v) <= HVP_RTOL64


def test_batch_stats_differs_from_eval():
    """The two BatchNorm policies give different Hessians (the policy is not a no-op)."""
    H_eval = references("cnn_bn", "eval")["full"]
    H_bs = references("cnn_bn", "batch-stats")["full"]
    assert rel_err(H_eval, H_bs) > 1e6 * HVP_RTOL64


@pytest.mark.parametrize(("name", "policy"), CASES)
def test_hvp_is_symmetric(name, policy):
    op = operators_for(name, policy, "double-backward")["full"]
    u, v = probes(op.dim, 2, seed=5)
    hu, hv = op.matvec(u), op.matvec(v)
    scale = float(torch.linalg.vector_norm(u) * torch.linalg.vector_norm(hv))
    assert abs(float(u @ hv - hu @ v)) <= HVP_SYMMETRY_RTOL64 * scale


@pytest.mark.parametrize(("name", "policy"), CASES)
def test_hvp_matches_central_differences_of_gradient(name, policy):
    """Independent of any dense Hessian: the HVP is the derivative of the gradient."""
    data = subset(images_for(name))
    batches = list(data.batches(BATCH))
    f, theta0 = flat_loss(
        tiny_model(name), batches, [X.shape[0] / N_SUB for X, _ in batches], policy
    )
    op = operators_for(name, policy, "forward-over-reverse")["full"]
    assert torch.equal(op.parameters(), theta0)  # flat order = named_parameters order
    v = probes(op.dim, 1, seed=7)[0]
    assert_second_order_agreement(fd_errors(gradient_of(f), theta0, v, op.matvec(v)))


def test_forward_over_reverse_equals_double_backward_per_call():
    a = operators_for("cnn", "eval", "forward-over-reverse")["full"]
    b = operators_for("cnn", "eval", "double-backward")["full"]
    v = probes(a.dim, 1, seed=3)[0]
    assert rel_err(a.matvec(v), b.matvec(v)) <= HVP_RTOL64


def test_float32_operator_agrees_with_float64():
    model, data = tiny_model("cnn"), subset(True)
    op32 = HessianOperator.full(model, data, batch_size=BATCH, dtype=torch.float32)
    op64 = operators_for("cnn", "eval", "double-backward")["full"]
    v = probes(op64.dim, 1, seed=9)[0]
    hv32 = op32.matvec(v.float())
    assert hv32.dtype == torch.float32 and op32.dtype == torch.float32
    assert rel_err(hv32.double(), op64.matvec(v)) <= HVP_RTOL32
    assert rel_err(hv32.double(), op64.matvec(v)) > EPS32 / 10  # really computed in float32


# ---- data-set weighting ---------------------------------------------------------------------


def test_uneven_last_batch_is_weighted_by_sample_count():
    """H_emp over batches (10, 10, 3) equals the Hessian of the plain mean over all 23 samples;
    averaging the three batch Hessians with equal weights would be detectably different."""
    data = subset(False)
    model = tiny_model("mlp")
    op = operators_for("mlp", "eval", "double-backward")["full"]
    assert op.num_samples == N_SUB
    H_exact = reference.dense_hessian(model, data, dtype=F64)
    batches = list(data.batches(BATCH))
    assert [X.shape[0] for X, _ in batches] == [len(r) for r in BATCH_RANGES] == [10, 10, 3]
    H_equal = sum(reference.dense_hessian(model, data, r, dtype=F64) / 3 for r in BATCH_RANGES)
    V = probes(op.dim, 3, seed=11)
    for v in V:
        assert rel_err(op.matvec(v), H_exact @ v) <= HVP_RTOL64
    assert rel_err(H_equal, H_exact) > 1e6 * HVP_RTOL64


def test_full_operator_batch_size_does_not_change_eval_hessian():
    data, model = subset(False), tiny_model("mlp")
    a = operators_for("mlp", "eval", "double-backward")["full"]
    b = HessianOperator.full(model, data, batch_size=N_SUB, dtype=F64)
    c = HessianOperator.full(model, data, batch_size=4, dtype=F64)  # 4*5 + 3
    v = probes(a.dim, 1, seed=2)[0]
    assert rel_err(b.matvec(v), a.matvec(v)) <= HVP_RTOL64
    assert rel_err(c.matvec(v), a.matvec(v)) <= HVP_RTOL64


def test_chunked_batch_operator_equals_whole_batch():
    full = operators_for("cnn_bn", "eval", "double-backward")["full"]
    whole = full.batch_operator(BATCH_IDX)
    chunked = full.batch_operator(BATCH_IDX, chunk_size=3)  # 3 + 3 + 1
    v = probes(full.dim, 1, seed=4)[0]
    assert rel_err(chunked.matvec(v), whole.matvec(v)) <= HVP_RTOL64


def test_standalone_constructors_equal_derived_ones():
    model, data = tiny_model("cnn"), subset(True)
    derived = operators_for("cnn", "eval", "double-backward")
    batch = HessianOperator.batch(model, data, BATCH_IDX, dtype=F64)
    noise = HessianOperator.noise(model, data, BATCH_IDX, batch_size=BATCH, dtype=F64)
    v = probes(batch.dim, 1, seed=6)[0]
    assert rel_err(batch.matvec(v), derived["batch"].matvec(v)) <= HVP_RTOL64
    assert rel_err(noise.matvec(v), derived["noise"].matvec(v)) <= HVP_RTOL64
    assert noise.kind == "noise" and torch.equal(noise.batch_indices, BATCH_IDX)


def test_deterministic_loader_equals_in_memory_data():
    data, model = subset(False), tiny_model("mlp")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.X, data.y), batch_size=BATCH, shuffle=False
    )
    op = HessianOperator.full(model, loader, dtype=F64)
    ref = operators_for("mlp", "eval", "double-backward")["full"]
    v = probes(op.dim, 1, seed=8)[0]
    assert op.num_samples == N_SUB
    assert rel_err(op.matvec(v), ref.matvec(v)) <= HVP_RTOL64


# ---- per-sample Hessians --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_per_sample_matvecs_match_dense_per_sample_hessians(name):
    data = subset(images_for(name))
    idx = [0, 3, 22]
    H_i = reference.dense_per_sample_hessians(tiny_model(name), data, idx, dtype=F64)
    ps = operators_for(name, "eval", "forward-over-reverse")["full"].per_sample(chunk_size=2)
    v = probes(ps.dim, 1, seed=12)[0]
    rows = ps.matvecs(v, indices=idx)
    assert ps.mode == "vmap" and rows.shape == (3, ps.dim)
    for r, H in zip(rows, H_i, strict=True):
        assert rel_err(r, H @ v) <= HVP_RTOL64
    # the mean of all per-sample products is the full-data product (eval mode)
    full = operators_for(name, "eval", "forward-over-reverse")["full"]
    assert rel_err(ps.matvecs(v).mean(0), full.matvec(v)) <= HVP_RTOL64
    single = ps.operator(3)
    assert rel_err(single.matvec(v), H_i[1] @ v) <= HVP_RTOL64


def test_per_sample_refused_for_batch_statistics():
    op = operators_for("cnn_bn", "batch-stats", "double-backward")["full"]
    with pytest.raises(ValueError, match="batch statistics"):
        op.per_sample()


# ---- model state, policy and determinism ----------------------------------------------------


def test_model_state_and_buffers_unchanged_by_hvps():
    model = make_model("cnn_bn")  # train mode, dropout, running statistics after 3 batches
    model.features[1].eval()  # a mixed train/eval state must survive too
    before = state_snapshot(model)
    assert int(model.features[4].num_batches_tracked) == 3
    data = subset(True)
    for policy in ("eval", "batch-stats"):
        for method in METHODS:
            op = HessianOperator.full(
                model, data, batch_size=BATCH, dtype=F64, policy=policy, method=method
            )
            for v in probes(op.dim, 3, seed=13):
                op.matvec(v)
            op.loss_and_gradient()
            op.noise_operator(BATCH_IDX).matvec(v)
    ps = HessianOperator.full(model, data, batch_size=BATCH, dtype=F64).per_sample()
    ps.matvecs(v, indices=[0, 1])
    assert_same_state(state_snapshot(model), before)
    # the check itself can fail: one train-mode forward moves the running statistics
    with torch.no_grad():
        model(data.X[:5].float())
    with pytest.raises(AssertionError):
        assert_same_state(state_snapshot(model), before)


def test_dropout_in_train_mode_is_switched_off_by_the_policy():
    data = subset(False)
    model = build("mlp", 10, hidden=6, dropout=0.5, generator=torch.Generator().manual_seed(2))
    model.train()
    op = HessianOperator.full(model, data, batch_size=BATCH, dtype=F64)  # verify=True passes
    H = reference.dense_hessian(model, data, dtype=F64)  # reference in eval mode
    v = probes(op.dim, 1, seed=14)[0]
    assert rel_err(op.matvec(v), H @ v) <= HVP_RTOL64
    assert model.training and all(m.training for m in model.modules())


def test_determinism_check_catches_dropout_when_the_policy_is_bypassed(monkeypatch):
    model = build("mlp", 10, hidden=6, dropout=0.5, generator=torch.Generator().manual_seed(2))
    model.train()
    monkeypatch.setattr(hvp, "policy_mode", lambda m, p: contextlib.nullcontext())
    with pytest.raises(DeterminismError, match="stochastic"):
        HessianOperator.full(model, subset(False), batch_size=BATCH, dtype=F64)


class _FunctionalDropoutMLP(nn.Module):
    """Dropout through F.dropout(training=True): no module flag can switch it off."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 6), nn.Linear(6, 10)

    def forward(self, x):
        return self.fc2(F.dropout(torch.tanh(self.fc1(x)), p=0.5, training=True))


def test_determinism_check_catches_functional_dropout():
    torch.manual_seed(0)  # test fixture: the dropout masks come from the global RNG
    with pytest.raises(DeterminismError, match="stochastic"):
        HessianOperator.full(_FunctionalDropoutMLP(), subset(False), batch_size=BATCH, dtype=F64)


class _FlippingLoader:
    """Deterministic batches, but every image is flipped left-right with probability 1/2."""

    def __init__(self, data, generator):
        self.data, self.g = data, generator

    def __iter__(self):
        for X, y in self.data.batches(BATCH):
            flip = torch.rand(X.shape[0], generator=self.g) < 0.5
            yield torch.where(flip[:, None, None, None], X.flip(-1), X), y

    def __len__(self):
        return 3


def test_shuffled_loader_fails_loudly():
    data = subset(False)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.X, data.y),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(DeterminismError, match="shuffled or augmented"):
        HessianOperator.full(tiny_model("mlp"), loader, dtype=F64)
    # also without the construction-time check: the second pass fails
    op = HessianOperator.full(tiny_model("mlp"), loader, dtype=F64, verify=False)
    v = probes(op.dim, 1)[0]
    op.matvec(v)
    with pytest.raises(DeterminismError, match="different data"):
        op.matvec(v)


def test_augmenting_loader_fails_loudly():
    """A flip keeps batch sums and sums of squares; a position-weighted fingerprint changes."""
    loader = _FlippingLoader(subset(True), torch.Generator().manual_seed(0))
    with pytest.raises(DeterminismError, match="shuffled or augmented"):
        HessianOperator.full(tiny_model("cnn"), loader, dtype=F64)


def test_check_determinism_passes_and_reports_difference():
    op = operators_for("mlp", "eval", "forward-over-reverse")["full"]
    assert op.check_determinism() == 0.0  # CPU products are bitwise reproducible


# ---- fallback between implementations -------------------------------------------------------


class _OldStyleTanh(torch.autograd.Function):
    """tanh as a legacy autograd.Function (no setup_context): torch.func refuses it, while its
    backward is built from differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(x) ** 2)


class _LegacyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 5), nn.Linear(5, 10)

    def forward(self, x):
        return self.fc2(_OldStyleTanh.apply(self.fc1(x)))


def test_auto_falls_back_when_torch_func_cannot_run(monkeypatch):
    torch.manual_seed(0)  # test fixture: default nn.Linear initialisation
    model = _LegacyMLP()
    data = subset(False)
    with pytest.raises(RuntimeError):
        HessianOperator.full(
            model, data, batch_size=BATCH, dtype=F64, method="forward-over-reverse"
        )
    monkeypatch.setattr(hvp, "AUTO_ORDER", ("forward-over-reverse", "double-backward"))
    op = HessianOperator.full(model, data, batch_size=BATCH, dtype=F64, method="auto")
    assert op.method == "double-backward"
    assert "forward-over-reverse failed" in op.fallback_reason
    # torch.func (and so nnhessian.reference) refuses the legacy Function too: the exact
    # reference here is central differences of the gradient, by plain autograd
    f, theta0 = flat_loss(model, [(data.X, data.y)], [1.0])
    v = probes(op.dim, 1, seed=15)[0]
    assert_second_order_agreement(fd_errors(gradient_of(f), theta0, v, op.matvec(v)))
    ps = op.per_sample(chunk_size=4)
    rows = ps.matvecs(v, indices=[2, 5])
    assert ps.mode == "loop"
    f2, _ = flat_loss(model, [(data.X[2:3], data.y[2:3])], [1.0])
    assert_second_order_agreement(fd_errors(gradient_of(f2), theta0, v, rows[0]))


def test_auto_uses_the_benchmarked_default_first():
    op = HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH, dtype=F64)
    assert op.method == hvp.AUTO_ORDER[0] and op.fallback_reason is None


# ---- adapters -------------------------------------------------------------------------------


def test_scipy_linear_operator_adapter():
    from scipy.sparse.linalg import eigsh

    op = operators_for("mlp", "eval", "double-backward")["full"]
    lin = as_linear_operator(op)
    assert lin.dtype == np.float64 and lin.shape == (op.dim, op.dim)
    v = probes(op.dim, 1, seed=16)[0]
    assert np.allclose(lin.matvec(v.numpy()), op.matvec(v).numpy(), rtol=0, atol=0)
    top = eigsh(lin, k=1, which="LA", tol=1e-12, v0=np.ones(op.dim))[0][0]
    H = references("mlp", "eval")["full"]
    assert abs(top - float(torch.linalg.eigvalsh(H)[-1])) <= 1e3 * 2.2e-16 * float(H.norm())
    op32 = HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH)
    assert as_linear_operator(op32).dtype == np.float32
    assert as_linear_operator(op32).matvec(np.ones(op.dim)).dtype == np.float32


def test_public_names_importable():
    assert nnhessian.HessianOperator is HessianOperator
    assert nnhessian.PerSampleHessians is reference.PerSampleHessians
    assert nnhessian.dense_hessian is reference.dense_hessian
    assert callable(nnhessian.lanczos) and callable(nnhessian.models.build)


# ---- bad input ------------------------------------------------------------------------------


def test_unknown_device_string_is_a_value_error():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH, device="gpu0")
    with pytest.raises(ValueError, match="unsupported device"):
        operators.resolve_device("meta")
    assert operators.resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_value_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float16, "int", None])
def test_unsupported_dtype_is_a_value_error(dtype):
    with pytest.raises(ValueError, match="unsupported dtype"):
        HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH, dtype=dtype)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_a_value_error(bad):
    model = build("mlp", 10, hidden=6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.net[1].weight[0, 0] = bad
    with pytest.raises(ValueError, match="'net.1.weight' contains NaN or inf"):
        HessianOperator.full(model, subset(False), batch_size=BATCH)


def test_nonfinite_loss_is_a_value_error():
    data = subset(False)
    X = data.X.clone()
    X[4, 0] = float("nan")
    with pytest.raises(ValueError, match="loss is not finite"):
        HessianOperator.full(tiny_model("mlp"), InMemoryDataset(X, data.y), batch_size=BATCH)


def test_bad_vectors_and_options():
    op = operators_for("mlp", "eval", "double-backward")["full"]
    with pytest.raises(ValueError, match="length"):
        op.matvec(torch.zeros(op.dim + 1, dtype=F64))
    with pytest.raises(ValueError, match="length"):
        op.matvec(torch.zeros(1, op.dim, dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        op.matvec(torch.full((op.dim,), float("nan"), dtype=F64))
    with pytest.raises(TypeError):
        op.matvec(np.zeros(op.dim))
    model, data = tiny_model("mlp"), subset(False)
    with pytest.raises(ValueError, match="policy"):
        HessianOperator.full(model, data, batch_size=BATCH, policy="train")
    with pytest.raises(ValueError, match="HVP method"):
        HessianOperator.full(model, data, batch_size=BATCH, method="finite-differences")
    with pytest.raises(ValueError, match="batch_size is required"):
        HessianOperator.full(model, data)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        HessianOperator.full(model, data, batch_size=0)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (list(range(N_SUB + 1)), "exceeds the data set size"),
        ([], "B >= 1|B = 0"),
        ([1, 1, 2], "distinct"),
        ([0, N_SUB], r"\[0, 22\]"),
    ],
)
def test_bad_batch_indices(indices, message):
    full = operators_for("mlp", "eval", "double-backward")["full"]
    with pytest.raises(ValueError, match=message):
        full.batch_operator(indices)


def test_chunked_batch_statistics_refused():
    full = operators_for("cnn_bn", "batch-stats", "double-backward")["full"]
    with pytest.raises(ValueError, match="chunk_size"):
        full.batch_operator(BATCH_IDX, chunk_size=2)


# ---- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_operator_matches_cpu_float64(dtype):
    """Same data, weights and vector on CUDA: agreement at the dtype's HVP tolerance, results on
    the device, the determinism check passes there (atomics may reorder sums by a few eps)."""
    model, data = tiny_model("cnn_bn"), subset(True)
    op = HessianOperator.full(model, data, batch_size=BATCH, dtype=dtype, device="cuda")
    assert op.device.type == "cuda"
    ref = operators_for("cnn_bn", "eval", "double-backward")["full"]
    v = probes(op.dim, 1, seed=17)[0]
    hv = op.matvec(v.to("cuda", dtype))
    assert hv.device.type == "cuda" and hv.dtype == dtype
    tol = HVP_RTOL64 if dtype == F64 else HVP_RTOL32
    assert rel_err(hv.double().cpu(), ref.matvec(v)) <= tol
    noise = op.noise_operator(BATCH_IDX)
    assert (
        rel_err(
            noise.matvec(v.to("cuda", dtype)).double().cpu(),
            operators_for("cnn_bn", "eval", "double-backward")["noise"].matvec(v),
        )
        <= tol
    )
