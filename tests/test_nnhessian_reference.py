"""Dense reference Hessians for the nnhessian tests, and tests of the references themselves.

The references never touch nnhessian's HVP code: they build the loss as a function of the flat
parameter vector of a float64 deep copy of the model and differentiate it densely.

* policy "eval": ``torch.func.hessian`` (forward over reverse, vmapped over the basis);
* policy "batch-stats": ``torch.autograd.functional.hessian`` (reverse over reverse, a loop over
  rows). torch.func.hessian is wrong for BatchNorm with batch statistics in torch 2.14 (see the
  strict xfail below and pytorch/pytorch#196699 on forward-mode BatchNorm derivatives), so the
  reference there must not use it.

Other test modules import the helpers from here.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nnhessian.data import load_digits
from nnhessian.operators import load_forward_ad
from tests.tolerances import EPS64, FD_RATIO_RANGE, FD_RTOL, FD_STEPS

load_forward_ad()  # torch's forward-AD import warns once (documented in nnhessian.operators)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread while a module's tests run, restored after.

    The test problems are tiny (P ~ 500, N ~ 23): threads only add synchronisation, and on a
    loaded 2-core machine OpenMP spin-waiting made products 10-30x slower. Modules that import
    this fixture get it too.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reference_model(model: nn.Module, policy: str) -> nn.Module:
    """A float64 deep copy in the policy's mode: eval, or BatchNorm on batch statistics."""
    m = copy.deepcopy(model).double()
    m.eval()
    if policy == "batch-stats":
        for mod in m.modules():
            if isinstance(mod, _BatchNorm):
                mod.train()
                mod.track_running_stats = False
    return m


def flat_loss(model: nn.Module, batches, weights, policy: str = "eval"):
    """``(f, theta0)``: ``f(theta) = sum_b weights[b] * mean-loss of batch b`` at flat ``theta``."""
    m = reference_model(model, policy)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    consts = {n: b.detach() for n, b in m.named_buffers()}
    batches = [(X.double(), y) for X, y in batches]

    def f(theta):
        parts = torch.split(theta, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        total = theta.new_zeros(())
        for (X, y), w in zip(batches, weights, strict=True):
            out = torch.func.functional_call(m, (params, consts), (X,))
            total = total + w * F.cross_entropy(out, y)
        return total

    return f, theta0


def dense_hessian(model, batches, weights, policy: str = "eval") -> torch.Tensor:
    """The dense P x P Hessian of ``flat_loss`` (float64)."""
    f, theta0 = flat_loss(model, batches, weights, policy)
    if policy == "batch-stats":
        return torch.autograd.functional.hessian(f, theta0)
    return torch.func.hessian(f)(theta0)


def dense_per_sample_hessians(model, X, y) -> torch.Tensor:
    """``(N, P, P)`` per-sample Hessians ``H_i`` (eval mode), one dense Hessian per sample."""
    return torch.stack(
        [dense_hessian(model, [(X[i : i + 1], y[i : i + 1])], [1.0]) for i in range(X.shape[0])]
    )


def fd_errors(grad_at, theta0, v, hv, steps=FD_STEPS) -> list[float]:
    """Relative errors of central differences ``(g(w + h v) - g(w - h v)) / 2h`` against ``hv``."""
    errs = []
    for h in steps:
        fd = (grad_at(theta0 + h * v) - grad_at(theta0 - h * v)) / (2 * h)
        errs.append(rel_err(fd, hv))
    return errs


def assert_second_order_agreement(errs) -> None:
    """Errors shrink as h^2 (ratio 4 when h halves) and are small: HVP = derivative of gradient."""
    lo, hi = FD_RATIO_RANGE
    assert lo <= errs[0] / errs[1] <= hi, errs
    assert errs[1] <= FD_RTOL, errs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error ``||a - b|| / ||b||``."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@functools.cache
def digits(images: bool):
    return load_digits(images=images, dtype=torch.float64)


# ---- tests of the references ----------------------------------------------------------------


def test_reference_matches_closed_form_softmax_regression():
    """Multinomial logistic regression: H = mean_i (diag p_i - p_i p_i^T) kron x_i x_i^T.

    Closed form for ``nn.Linear(d, C, bias=False)`` with the weight flattened row-major (class
    major), so the reference's parameter flattening and loss are both checked.
    """
    g = torch.Generator().manual_seed(3)
    N, d, C = 9, 4, 3
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    model = nn.Linear(d, C, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(C, d, generator=g, dtype=torch.float64))
    p = torch.softmax(X @ model.weight.detach().T, dim=1)
    H = (
        sum(
            torch.kron(torch.diag(p[i]) - torch.outer(p[i], p[i]), torch.outer(X[i], X[i]))
            for i in range(N)
        )
        / N
    )
    H_ref = dense_hessian(model, [(X, y)], [1.0])
    # a few hundred flops per entry in float64
    assert rel_err(H_ref, H) <= 100 * EPS64


def test_batch_stats_reference_is_symmetric_and_matches_its_gradient():
    """The reverse-over-reverse reference is symmetric and is the derivative of its gradient."""
    from nnhessian.models import build

    data = digits(True)
    model = build("cnn_bn", 10, width=2, generator=torch.Generator().manual_seed(0))
    batches = [(data.X[:8], data.y[:8])]
    H = dense_hessian(model, batches, [1.0], "batch-stats")
    assert float((H - H.T).abs().max()) <= 1e3 * EPS64 * float(H.abs().max())
    f, theta0 = flat_loss(model, batches, [1.0], "batch-stats")
    v = torch.randn(theta0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grad_at(theta):
        theta = theta.detach().requires_grad_(True)
        return torch.autograd.grad(f(theta), theta)[0]

    assert_second_order_agreement(fd_errors(grad_at, theta0, v, H @ v))


@pytest.mark.xfail(
    strict=True,
    reason="torch.func.hessian mishandles BatchNorm batch statistics "
    "in torch 2.14 (forward-mode through vmapped batch_norm backward); when this "
    "passes, torch is fixed and the reference may use torch.func again",
)
def test_torch_func_hessian_batchnorm_batch_stats_upstream_bug():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    c = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)

    def f(theta):
        y = F.batch_norm(x * theta[4], None, None, theta[:2], theta[2:4], training=True)
        return (torch.tanh(y) * c).sum()

    theta = torch.randn(5, generator=g, dtype=torch.float64)
    H_func = torch.func.hessian(f)(theta)
    H_loop = torch.autograd.functional.hessian(f, theta)
    assert rel_err(H_func, H_loop) <= 1e-10
