"""nnhessian.lanczos: exact spectra at steps = dim, quadrature exactness, SLQ, breakdown."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnhessian import reference
from nnhessian.lanczos import (
    LanczosRun,
    gauss_quadrature,
    lanczos,
    quadrature_moments,
    random_unit_vector,
    ritz_vectors,
    smooth_density,
)
from nnhessian.operators import MatrixOperator
from nnhessian.slq import extreme_eigenvalues, second_moments, slq
from rmt.testing import seeds
from tests.helpers import F64, digits_mlp_operator, subset
from tests.tolerances import (
    EPS64,
    LANCZOS_MOMENT_RTOL64,
    LANCZOS_RESIDUAL_ATOL,
    Z_STAT,
    eig_atol,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def random_symmetric(P: int, seed: int) -> torch.Tensor:
    A = torch.randn(P, P, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (A + A.T) / np.sqrt(2 * P)


@functools.cache
def dense_of_hessian_operator() -> torch.Tensor:
    """The dense float64 Hessian of :func:`tests.helpers.digits_mlp_operator`."""
    return reference.dense_hessian(digits_mlp_operator().model, subset(False), dtype=F64)


def spectral_measure(A: np.ndarray, q: np.ndarray, nodes: np.ndarray):
    """Mass of q in the eigenspaces of A, each eigenvalue assigned to its nearest node."""
    ev, U = np.linalg.eigh(A)
    mass = (U.T @ q) ** 2
    nearest = np.abs(ev[:, None] - nodes[None, :]).argmin(axis=1)
    return np.bincount(nearest, weights=mass, minlength=nodes.size), ev


# ---- steps = dim reproduces the spectrum ----------------------------------------------------


@given(seed=seeds, P=st.integers(2, 40))
def test_full_lanczos_on_random_matrix_reproduces_eigvalsh(seed, P):
    A = random_symmetric(P, seed)
    res = lanczos(MatrixOperator(A), P, generator=torch.Generator().manual_seed(seed))
    ev = np.linalg.eigvalsh(A.numpy())
    norm = float(np.abs(ev).max())
    assert res.steps == P and res.ritz_values.shape == (P,)
    assert np.abs(res.ritz_values - ev).max() <= eig_atol(norm, P)
    assert abs(res.weights.sum() - 1) <= 10 * P * EPS64
    assert (res.weights >= 0).all()


def test_full_lanczos_on_hessian_reproduces_eigvalsh_and_spectral_measure():
    """steps = dim on the HVP operator. The Hessian is rank-deficient (softmax invariances and
    N = 23 samples leave ~260 zero eigenvalues): Lanczos finds each distinct eigenvalue once and
    stops with a breakdown. Ritz values are then eigenvalues, every eigenvalue is a Ritz value,
    and the weights are the masses of the start vector in the eigenspaces."""
    op = digits_mlp_operator()
    H = dense_of_hessian_operator().numpy()
    v0 = random_unit_vector(op.dim, generator=torch.Generator().manual_seed(0))
    res = lanczos(op, op.dim, v0=v0)
    ev = np.linalg.eigvalsh(H)
    norm = float(np.abs(ev).max())
    tol = eig_atol(norm, op.dim)
    assert res.breakdown and res.steps < op.dim
    assert np.abs(res.ritz_values[:, None] - ev[None, :]).min(axis=1).max() <= tol
    assert np.abs(ev[:, None] - res.ritz_values[None, :]).min(axis=1).max() <= tol
    assert abs(res.ritz_values[-1] - ev[-1]) <= tol and abs(res.ritz_values[0] - ev[0]) <= tol
    mass, _ = spectral_measure(H, v0.numpy(), res.ritz_values)
    # eigenvector (hence weight) errors: eps ||H|| / gap (Davis-Kahan), gap = smallest Ritz gap
    gap = float(np.diff(res.ritz_values).min())
    assert np.abs(res.weights - mass).max() <= 100 * op.dim * EPS64 * norm / gap
    assert abs(res.weights.sum() - 1) <= 10 * res.steps * EPS64
    assert res.residuals.max() <= tol


def test_breakdown_on_matrix_with_few_distinct_eigenvalues():
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=F64))
    values = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=F64).repeat_interleave(10)
    A = Q @ torch.diag(values) @ Q.T
    v0 = random_unit_vector(50, generator=g)
    res = lanczos(MatrixOperator(A), 20, v0=v0)
    assert res.breakdown and res.steps == 5 and res.steps_requested == 20
    assert np.abs(res.ritz_values - np.array([-2.0, -0.5, 0.0, 1.0, 3.0])).max() <= eig_atol(3, 50)
    mass, _ = spectral_measure(A.numpy(), v0.numpy(), res.ritz_values)
    assert np.abs(res.weights - mass).max() <= eig_atol(3, 50)
    assert res.beta_last <= res.breakdown_rtol * 3 * 3
    no_break = lanczos(MatrixOperator(random_symmetric(50, 0)), 20, v0=v0)
    assert not no_break.breakdown and no_break.steps == 20


# ---- invariants at m < dim ------------------------------------------------------------------


def test_residual_estimates_equal_true_ritz_residuals():
    A = random_symmetric(120, 3)
    res = lanczos(
        MatrixOperator(A), 30, generator=torch.Generator().manual_seed(3), keep_basis=True
    )
    Y = ritz_vectors(res)  # (m, P)
    true = torch.linalg.vector_norm(Y @ A - torch.as_tensor(res.ritz_values)[:, None] * Y, dim=1)
    assert np.abs(true.numpy() - res.residuals).max() <= LANCZOS_RESIDUAL_ATOL * 120 * EPS64
    # the basis is orthonormal to working precision (full reorthogonalisation)
    Qb = res.basis
    assert float((Qb @ Qb.T - torch.eye(30, dtype=F64)).abs().max()) <= 100 * EPS64
    # converged extreme pairs really are eigenpairs: within their residual of an eigenvalue
    ev = np.linalg.eigvalsh(A.numpy())
    assert abs(res.ritz_values[-1] - ev[-1]) <= res.residuals[-1] + eig_atol(3, 120)
    assert res.residuals[-1] < 1e-2 and res.residuals[len(res.residuals) // 2] > 1e-2


def test_quadrature_is_exact_to_degree_2m_minus_1():
    """sum_j w_j theta_j^k = q^T A^k q for k <= 2m - 1 (Gauss quadrature of q's measure)."""
    A = random_symmetric(80, 4)
    q = random_unit_vector(80, generator=torch.Generator().manual_seed(4))
    m = 6
    res = lanczos(MatrixOperator(A), m, v0=q)
    ks = np.arange(2 * m + 1)
    quad = quadrature_moments(res.ritz_values, res.weights, ks)
    exact = np.array([float(q @ torch.linalg.matrix_power(A, int(k)) @ q) for k in ks])
    norm = float(torch.linalg.matrix_norm(A, 2))
    err = np.abs(quad - exact) / norm**ks
    assert err[: 2 * m].max() <= LANCZOS_MOMENT_RTOL64
    assert err[2 * m] > 1e3 * LANCZOS_MOMENT_RTOL64  # degree 2m is not integrated exactly


def test_lanczos_on_float32_operator():
    op = MatrixOperator(random_symmetric(40, 5), dtype=torch.float32)
    res = lanczos(op, 40, generator=torch.Generator().manual_seed(5), keep_basis=True)
    assert res.alpha.dtype == np.float64 and res.basis.dtype == torch.float32
    ev = np.linalg.eigvalsh(op.matrix.double().numpy())
    eps32 = float(np.finfo(np.float32).eps)
    assert np.abs(res.ritz_values - ev).max() <= eig_atol(3, 40, eps=eps32)


def test_lanczos_is_reproducible_from_the_generator():
    op = MatrixOperator(random_symmetric(30, 6))
    a = lanczos(op, 10, generator=torch.Generator().manual_seed(7))
    b = lanczos(op, 10, generator=torch.Generator().manual_seed(7))
    c = lanczos(op, 10, generator=torch.Generator().manual_seed(8))
    assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.beta, b.beta)
    assert not np.array_equal(a.alpha, c.alpha)
    T = a.tridiagonal
    assert np.allclose(np.linalg.eigvalsh(T), a.ritz_values, rtol=0, atol=eig_atol(3, 10))


# ---- SLQ ------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_second_moments_equal_slq_quadrature_on_the_same_probes(distribution):
    """Same generator -> same probes: ||A q||^2 equals the Gauss quadrature sum_j w_j theta_j^2
    of SLQ's run from q (exact for k = 2 <= 2m - 1), to LANCZOS_MOMENT_RTOL64 ||A||^2."""
    A = random_symmetric(120, 4) + torch.diag(torch.linspace(-1, 3, 120, dtype=F64))
    op = MatrixOperator(A)
    res = slq(
        op, steps=6, probes=7, generator=torch.Generator().manual_seed(5), distribution=distribution
    )
    quad = quadrature_moments(res.ritz_values, res.weights, [2])[:, 0]
    direct = second_moments(
        op, 7, generator=torch.Generator().manual_seed(5), distribution=distribution
    )
    norm2 = float(torch.linalg.matrix_norm(A, 2)) ** 2
    assert np.abs(direct - quad).max() <= LANCZOS_MOMENT_RTOL64 * norm2
    # and estimate tr(A^2)/P without bias: Z_STAT standard errors over 400 probes
    many = second_moments(op, 400, generator=torch.Generator().manual_seed(6))
    exact = float((A * A).sum()) / 120
    assert abs(many.mean() - exact) <= Z_STAT * many.std(ddof=1) / np.sqrt(400)
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        second_moments(op, 0, generator=torch.Generator())


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_slq_moments_estimate_normalised_traces(distribution):
    """mean_p sum_j w_pj theta_pj^k estimates tr(A^k)/P; asserted within Z_STAT standard errors
    of the probe mean (se from the sample sd of the 40 per-probe quadratures)."""
    A = random_symmetric(200, 9) + torch.diag(torch.linspace(0, 2, 200, dtype=F64))
    res = slq(
        MatrixOperator(A),
        steps=8,
        probes=40,
        generator=torch.Generator().manual_seed(9),
        distribution=distribution,
    )
    assert res.ritz_values.shape == (40, 8) and res.weights.shape == (40, 8)
    assert np.allclose(res.weights.sum(axis=1), 1, rtol=0, atol=100 * EPS64)
    ks = [1, 2, 3, 4]
    per_probe = quadrature_moments(res.ritz_values, res.weights, ks)  # (probes, 4)
    mean = per_probe.mean(axis=0)
    se = per_probe.std(axis=0, ddof=1) / np.sqrt(res.probes)
    exact = np.array([float(torch.trace(torch.linalg.matrix_power(A, k))) / 200 for k in ks])
    assert (np.abs(mean - exact) <= Z_STAT * se).all()
    assert (se > 0).all()


def test_slq_on_hessian_operator_moments_and_extremes():
    op = digits_mlp_operator()
    H = dense_of_hessian_operator()
    res = slq(op, steps=40, probes=6, generator=torch.Generator().manual_seed(10))
    per_probe = quadrature_moments(res.ritz_values, res.weights, [1, 2])
    mean, se = per_probe.mean(0), per_probe.std(0, ddof=1) / np.sqrt(6)
    exact = np.array([float(torch.trace(H)), float(torch.trace(H @ H))]) / op.dim
    assert (np.abs(mean - exact) <= Z_STAT * se).all()
    ext = extreme_eigenvalues(res)
    ev = np.linalg.eigvalsh(H.numpy())
    assert ext.largest <= ev[-1] + eig_atol(2, op.dim)  # Ritz values interlace
    assert abs(ext.largest - ev[-1]) <= ext.largest_residual + eig_atol(2, op.dim)
    assert ext.largest_per_probe.shape == (6,)
    assert ext.converged(rtol=1e-6)
    rough = extreme_eigenvalues(lanczos(op, 3, generator=torch.Generator().manual_seed(1)))
    assert not rough.converged(rtol=1e-6)


def test_slq_pads_runs_that_break_down():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=F64).repeat_interleave(4))
    res = slq(MatrixOperator(A), steps=6, probes=3, generator=torch.Generator().manual_seed(0))
    assert (res.steps_done == 3).all() and res.breakdown.all()
    assert np.isnan(res.ritz_values[:, 3:]).all() and (res.weights[:, 3:] == 0).all()
    assert len(res.seeds) == 3 and len(res.runs) == 3
    grid = np.linspace(0, 4, 9)
    assert np.isfinite(smooth_density(res.ritz_values, res.weights, grid, 0.1)).all()


def test_smooth_density_is_the_gaussian_mixture_and_integrates_to_one():
    nodes = np.array([[-1.0, 0.5, 2.0], [0.0, 1.0, np.nan]])
    weights = np.array([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    grid = np.linspace(-6, 8, 20001)
    width = 0.3
    rho = smooth_density(nodes, weights, grid, width)
    assert abs(np.trapezoid(rho, grid) - 1) <= 1e-9
    x = 0.7
    expected = (
        sum(
            w * np.exp(-0.5 * ((x - t) / width) ** 2) / (width * np.sqrt(2 * np.pi))
            for row_t, row_w in zip(nodes, weights, strict=True)
            for t, w in zip(row_t, row_w, strict=True)
            if w > 0
        )
        / 2
    )
    assert abs(smooth_density(nodes, weights, np.array([x]), width)[0] - expected) <= 1e-15
    with pytest.raises(ValueError, match="width"):
        smooth_density(nodes, weights, grid, 0.0)


def test_gauss_quadrature_of_a_single_step():
    nodes, weights, last = gauss_quadrature(np.array([2.5]), np.array([]))
    assert nodes.tolist() == [2.5] and weights.tolist() == [1.0] and last.tolist() == [1.0]


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [(0, "steps must be >= 1"), (-2, ">= 1"), (2.0, "integer"), (11, "exceeds")],
)
def test_bad_steps(steps, message):
    op = MatrixOperator(random_symmetric(10, 0))
    with pytest.raises(ValueError, match=message):
        lanczos(op, steps, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=message):
        slq(op, steps, probes=2, generator=torch.Generator().manual_seed(0))


def test_bad_start_and_randomness():
    op = MatrixOperator(random_symmetric(10, 0))
    with pytest.raises(ValueError, match="generator="):
        lanczos(op, 3)
    with pytest.raises(ValueError, match="nonzero"):
        lanczos(op, 3, v0=torch.zeros(10))
    with pytest.raises(ValueError, match="length 10"):
        lanczos(op, 3, v0=torch.ones(9))
    with pytest.raises(TypeError, match="torch.Generator"):
        lanczos(op, 3, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="probes"):
        slq(op, 3, probes=0, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="distribution"):
        slq(op, 3, probes=2, generator=torch.Generator().manual_seed(0), distribution="uniform")


def test_a_cancelling_gram_schmidt_pass_is_repeated():
    """A product with a component along an old basis vector 1e12 times the new direction (what a
    wrong or rounding-dominated product gives) cancels in the first Gram-Schmidt pass, which
    leaves the new vector ~1e-5 out of orthogonality (measured); the second pass, taken by the norm
    criterion (``REORTH_KEEP``), brings it back to working precision."""
    P = 40
    A = random_symmetric(P, 12)
    run = LanczosRun(MatrixOperator(A), 4, breakdown_rtol=0.0)
    run.start(random_unit_vector(P, generator=torch.Generator().manual_seed(12)))
    run.step()
    run.step()  # basis q_0, q_1, q_2
    r = torch.randn(P, generator=torch.Generator().manual_seed(13), dtype=F64)
    run.step(1e6 * run.Q[0] + 1e-6 * r)
    Qb = run.Q[: run.rows]
    gram = Qb @ Qb.T - torch.eye(run.rows, dtype=F64)
    assert float(gram.abs().max()) <= LANCZOS_RESIDUAL_ATOL * EPS64
