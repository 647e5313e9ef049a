r"""Property tests of random-matrix formulas: hypothesis strategies and statistical assertions.

Public, so that a researcher can test a formula of their own the way this suite tests Theorem 2.
Needs ``hypothesis`` (the ``test`` extra); imported on demand (``import rmt.testing``), never by
``import rmt``. numpy/scipy otherwise; no torch.

Hypothesis draws parameters, generators draw matrices (STYLE.md, item 9): every case holds the
integer ``seed`` it was built from, and its matrix comes from ``np.random.default_rng(seed)``
through :mod:`rmt.samplers` or :mod:`rmt.band`, so a failing example is reproduced from the
parameters hypothesis prints.

Strategies

* :data:`seeds`, :data:`noise_scales` (t in [0.05, 20]), :data:`small_dims`, :func:`spike_sets`
  (spike eigenvalues of either sign, possibly below the BBP threshold), :data:`populations`
  (pairs N, B with 1 <= B <= N);
* :func:`spiked_goe_cases` -> :class:`SpikedGOECase`: ``A + W`` with ``A = U diag(spikes) U^T``
  (U Haar) and ``W`` GOE of noise scale t (:func:`rmt.samplers.sample_spiked`);
* :func:`band_cases` -> :class:`BandCase`: the band model of the same law
  (:func:`rmt.band.band_matrix`, lower band storage).

Assertions (each raises ``AssertionError`` naming what failed and by how much)

* :func:`assert_weyl` -- Weyl (1912): ``|lambda_i(A + W) - lambda_i(A)| <= ||W||_2`` for all i;
* :func:`assert_rank_one_interlacing` -- for ``theta > 0``, the eigenvalues of ``A + theta u
  u^T`` interlace those of A: ``lambda_i(A) <= lambda_i(A + theta u u^T) <= lambda_{i+1}(A)``
  (and the mirror image for ``A - theta u u^T``; Horn & Johnson, *Matrix Analysis*, Thm 4.3.9);
* :func:`assert_matches_law` -- one-sample Kolmogorov-Smirnov test of i.i.d. samples against a
  CDF at level ``alpha``: reject when ``D_n = sup |F_n - F| > c_n(alpha)``, ``c_n(alpha)`` the
  upper-alpha quantile of the exact null law of ``D_n`` (``scipy.stats.kstwo``; Simard &
  L'Ecuyer 2011), so a correct law is rejected with probability alpha (exactly, for a continuous
  F); :func:`kolmogorov_distance` is ``D_n`` itself, for a deterministic threshold (rigidity);
* :func:`assert_same_law` -- two-sample KS test (``scipy.stats.ks_2samp``) of two samplers, one
  statistic or several at a family-wise level.

Multiple testing. ``alpha`` is the false-alarm probability of ONE assertion on fresh randomness.
A test making m assertions (positions of a matrix, statistics, hypothesis examples with fresh
seeds) fails a correct formula with probability up to ``m alpha``; pass ``alpha / m``
(Bonferroni) to keep the family at ``alpha`` -- :func:`assert_same_law` does so for a mapping of
statistics. With fixed seeds the outcome is deterministic: a false alarm is a fixed failure, not
a flaky one, and changing seeds until a test passes voids the level. The power to see a wrong
law grows with the sample size n (a CDF error of size d is seen once ``d >~ 1.6 / sqrt(n)`` at
alpha = 1e-3), so size n for the effect the test must catch, and show that it does.

Example: property-test a formula (Weyl) and a law (the BBP outlier is Gaussian)::

    import numpy as np, scipy.stats
    from hypothesis import given
    from rmt import dense_extremes, theory
    from rmt.testing import assert_matches_law, assert_weyl, spiked_goe_cases

    @given(case=spiked_goe_cases())
    def test_weyl(case):
        tol = 1e-12 * case.P * (np.abs(case.spikes).max() + case.noise_norm)
        assert_weyl(case.eigenvalues, np.linalg.eigvalsh(case.low_rank), case.noise_norm, atol=tol)

    def test_outlier_law():
        P, rng = 200, np.random.default_rng(0)
        top = [dense_extremes([3.0], 1.0, P, rng=rng).top[0] for _ in range(200)]
        law = scipy.stats.norm(theory.bbp_outlier(3.0, 1.0), theory.outlier_sd(3.0, 1.0, P))
        assert_matches_law(top, law.cdf, alpha=1e-3)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.stats
from hypothesis import strategies as st

from rmt.band import band_matrix, band_to_dense
from rmt.samplers import sample_spiked

__all__ = [
    "BandCase",
    "SpikedGOECase",
    "assert_matches_law",
    "assert_rank_one_interlacing",
    "assert_same_law",
    "assert_weyl",
    "band_cases",
    "kolmogorov_distance",
    "noise_scales",
    "populations",
    "seeds",
    "small_dims",
    "spike_sets",
    "spiked_goe_cases",
]

DEFAULT_ALPHA = 1e-3  # one false alarm in a thousand assertions on fresh randomness

# ---- parameter strategies ----------------------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**32 - 1)
noise_scales = st.floats(min_value=0.05, max_value=20.0, allow_nan=False)
small_dims = st.integers(min_value=2, max_value=80)


def spike_sets(max_rank: int = 4, bound: float = 10.0):
    """Lists of spike eigenvalues, positive and negative, possibly sub-threshold."""
    spike = st.floats(min_value=-bound, max_value=bound, allow_nan=False, allow_subnormal=False)
    return st.lists(spike, min_size=1, max_size=max_rank)


populations = st.integers(min_value=2, max_value=10**6).flatmap(
    lambda N: st.tuples(st.just(N), st.integers(min_value=1, max_value=N))
)

# ---- seeded cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpikedGOECase:
    """One draw of ``M = A + W``: ``A = U diag(spikes) U^T``, ``W`` GOE of noise scale t.

    Built by ``rmt.samplers.sample_spiked(spikes, t, P, rng=np.random.default_rng(seed))``.
    """

    seed: int
    P: int
    spikes: np.ndarray  # (k,) eigenvalues of the low-rank part
    t: float  # noise scale: W has off-diagonal variance t / P, diagonal 2 t / P
    matrix: np.ndarray  # (P, P) M = A + W
    frame: np.ndarray  # (P, k) U, Haar-distributed orthonormal columns
    noise: np.ndarray  # (P, P) W

    @property
    def low_rank(self) -> np.ndarray:
        """(P, P) ``A = U diag(spikes) U^T``, the product :func:`rmt.samplers.sample_low_rank`
        forms (so ``matrix == low_rank + noise`` exactly)."""
        return (self.frame * self.spikes) @ self.frame.T

    @property
    def eigenvalues(self) -> np.ndarray:
        """(P,) eigenvalues of M, ascending."""
        return np.linalg.eigvalsh(self.matrix)

    @property
    def noise_norm(self) -> float:
        """``||W||_2``, the largest |eigenvalue| of the noise."""
        w = np.linalg.eigvalsh(self.noise)
        return float(max(abs(w[0]), abs(w[-1])))


@st.composite
def spiked_goe_cases(draw, *, dims=None, spikes=None, noise=None) -> SpikedGOECase:
    """Strategy of :class:`SpikedGOECase`: P from ``dims`` (default 5..60), spikes from
    ``spikes`` (default ``spike_sets()``, cut to at most P), t from ``noise`` (default
    :data:`noise_scales`), the matrices from the drawn seed."""
    seed = draw(seeds)
    P = draw(dims if dims is not None else st.integers(5, 60))
    values = np.asarray(draw(spikes if spikes is not None else spike_sets()), dtype=float)[:P]
    t = float(draw(noise if noise is not None else noise_scales))
    M, U, W = sample_spiked(values, t, P, rng=np.random.default_rng(seed))
    return SpikedGOECase(seed=seed, P=P, spikes=values, t=t, matrix=M, frame=U, noise=W)


@dataclass(frozen=True)
class BandCase:
    """The leading ``rows`` block of one draw of the band model of ``diag(spikes) + GOE(t)``.

    Built by ``rmt.band.band_matrix(spikes, t, P, rows=rows, rng=np.random.default_rng(seed))``;
    its eigenvalues have the law of :class:`SpikedGOECase`'s when ``rows == P``.
    """

    seed: int
    P: int
    spikes: np.ndarray  # (k,)
    t: float
    rows: int  # L <= P, the leading block kept
    band: np.ndarray  # (max(k, 1) + 1, rows) lower band storage, band[d, c] = B[c + d, c]

    @property
    def dense(self) -> np.ndarray:
        """(rows, rows) the symmetric matrix of the band."""
        return band_to_dense(self.band)


@st.composite
def band_cases(draw, *, dims=None, spikes=None, noise=None, rows=None) -> BandCase:
    """Strategy of :class:`BandCase`: P from ``dims`` (default 6..260), spikes from ``spikes``
    (default ``spike_sets(max_rank=5)``, cut to at most P), t from ``noise`` (default
    :data:`noise_scales`); ``rows`` a strategy of the block size given P (``P -> strategy``),
    default the whole band (rows = P)."""
    seed = draw(seeds)
    P = draw(dims if dims is not None else st.integers(6, 260))
    drawn = draw(spikes if spikes is not None else spike_sets(max_rank=5))
    values = np.asarray(drawn, dtype=float)[:P]
    t = float(draw(noise if noise is not None else noise_scales))
    L = P if rows is None else draw(rows(P))
    ab = band_matrix(values, t, P, rows=L, rng=np.random.default_rng(seed))
    return BandCase(seed=seed, P=P, spikes=values, t=t, rows=L, band=ab)


# ---- exact inequalities ------------------------------------------------------------------------


def _sorted_same_way(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"{names} must be 1-D arrays of one length, got {a.shape} and {b.shape}")
    da, db = np.diff(a), np.diff(b)
    ascending = bool(np.all(da >= 0) and np.all(db >= 0))
    descending = bool(np.all(da <= 0) and np.all(db <= 0))
    if not (ascending or descending):
        raise ValueError(f"{names} must both be sorted ascending, or both descending")


def assert_weyl(perturbed, unperturbed, norm: float, *, atol: float = 0.0) -> None:
    """Weyl's inequality ``|lambda_i(A + W) - lambda_i(A)| <= ||W||_2 + atol`` for every i.

    ``perturbed`` are eigenvalues of ``A + W``, ``unperturbed`` those of A, paired by rank: both
    ascending, or both descending (e.g. the top n of each). ``norm`` is ``||W||_2``; ``atol``
    the eigensolvers' rounding allowance. Raises AssertionError naming the worst index.
    """
    lam = np.asarray(perturbed, dtype=float)
    base = np.asarray(unperturbed, dtype=float)
    _sorted_same_way(lam, base, "perturbed and unperturbed eigenvalues")
    shift = np.abs(lam - base)
    excess = shift - (norm + atol)
    bad = np.flatnonzero(excess > 0)
    if bad.size:
        i = int(bad[np.argmax(excess[bad])])
        raise AssertionError(
            f"Weyl's inequality violated at index {i} ({bad.size} of {lam.size} indices): "
            f"|{float(lam[i])!r} - {float(base[i])!r}| = {float(shift[i])!r} > ||W||_2 + atol = "
            f"{float(norm)!r} + {float(atol)!r}, by {float(excess[i])!r}"
        )


def assert_rank_one_interlacing(base, perturbed, *, sign: int = 1, atol: float = 0.0) -> None:
    """Interlacing of the eigenvalues of A (``base``) and ``A + sign theta u u^T`` (theta > 0).

    Both ascending. ``sign = +1``: ``base[i] <= perturbed[i] <= base[i + 1]`` (the last one only
    bounded below); ``sign = -1``: ``base[i - 1] <= perturbed[i] <= base[i]``. Each comparison
    allows ``atol``. Raises AssertionError naming the first violated index and the amounts.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    lo = np.asarray(base, dtype=float)
    hi = np.asarray(perturbed, dtype=float)
    if lo.ndim != 1 or lo.shape != hi.shape:
        raise ValueError(f"base and perturbed must be 1-D of one length: {lo.shape}, {hi.shape}")
    if np.any(np.diff(lo) < 0) or np.any(np.diff(hi) < 0):
        raise ValueError("base and perturbed eigenvalues must be sorted ascending")
    kind = "positive" if sign > 0 else "negative"
    # sign +1: lo[i] <= hi[i] (i = 0..n-1) and hi[i] <= lo[i + 1]; sign -1 mirrors the pairs
    below, above = (lo, hi) if sign > 0 else (hi, lo)
    checks = [(below, above, 0), (above[:-1], below[1:], 1)]  # below-side <= above-side
    for small, large, offset in checks:
        gap = small - large
        bad = np.flatnonzero(gap > atol)
        if bad.size:
            j = int(bad[0])
            names = _interlacing_names(sign, offset, j)
            raise AssertionError(
                f"rank-one interlacing ({kind} update) violated at index {names[2]}: "
                f"{names[0]} = {float(small[j])!r} > {names[1]} = {float(large[j])!r}, "
                f"by {float(gap[j])!r} (atol {float(atol)!r}; {bad.size} such indices)"
            )


def _interlacing_names(sign: int, offset: int, j: int) -> tuple[str, str, int]:
    """Labels of the two sides of comparison ``j`` (left > right) and the perturbed index."""
    if sign > 0:
        if offset == 0:
            return f"base[{j}]", f"perturbed[{j}]", j
        return f"perturbed[{j}]", f"base[{j + 1}]", j
    if offset == 0:
        return f"perturbed[{j}]", f"base[{j}]", j
    return f"base[{j}]", f"perturbed[{j + 1}]", j + 1


# ---- statistical assertions --------------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def _as_cdf(cdf) -> Callable:
    return cdf.cdf if hasattr(cdf, "cdf") else cdf


def kolmogorov_distance(samples, cdf) -> float:
    """``D_n = sup_x |F_n(x) - F(x)|`` between the empirical CDF of ``samples`` and ``cdf``.

    ``max_i max(i / n - F(x_(i)), F(x_(i)) - (i - 1) / n)`` over the sorted samples (the
    supremum of a step function minus a non-decreasing F is reached at the jumps). ``cdf`` is a
    callable or anything with a ``.cdf`` (a frozen scipy distribution).
    """
    x = np.sort(np.asarray(samples, dtype=float).ravel())
    n = x.size
    if n == 0:
        raise ValueError("samples is empty")
    F = np.asarray(_as_cdf(cdf)(x), dtype=float)
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - F), np.max(F - (i - 1) / n)))


@functools.lru_cache(maxsize=256)
def _ks_critical_value(n: int, alpha: float) -> float:
    """Upper-alpha quantile of the exact null law of D_n (cached: the inversion takes ~10 ms)."""
    return float(scipy.stats.kstwo.isf(alpha, n))


def assert_matches_law(samples, cdf, *, alpha: float = DEFAULT_ALPHA) -> float:
    """Kolmogorov-Smirnov test of i.i.d. ``samples`` against the continuous CDF ``cdf``.

    Rejects (AssertionError) when ``D_n > c_n(alpha) = kstwo.isf(alpha, n)``, the exact critical
    value of the one-sample statistic under the null (the decision of ``scipy.stats.kstest``'s
    p-value against alpha). A correct law is rejected with probability alpha; see the module
    docstring on multiple testing. Returns the p-value ``kstwo.sf(D_n, n)``.
    """
    alpha = _check_alpha(alpha)
    n = np.asarray(samples).size
    D = kolmogorov_distance(samples, cdf)
    critical = _ks_critical_value(n, alpha)
    pvalue = float(scipy.stats.kstwo.sf(D, n))
    if D > critical:
        raise AssertionError(
            f"KS test rejects the law at alpha = {alpha:g}: D = {D:.4g} > critical value "
            f"{critical:.4g} for n = {n} samples (p = {pvalue:.3g})"
        )
    return pvalue


def assert_same_law(first, second, *, alpha: float = DEFAULT_ALPHA) -> dict:
    """Two-sample KS test (``scipy.stats.ks_2samp``) that two samplers share a law.

    ``first`` and ``second`` are two samples, or two mappings ``name -> sample`` with the same
    names (several statistics of the same draws); then each is tested at ``alpha / m``
    (Bonferroni), so the family is rejected with probability <= alpha. Rejects when a p-value is
    below its level; returns the p-values by name (the single-sample case under ``"sample"``).
    """
    alpha = _check_alpha(alpha)
    if isinstance(first, Mapping) != isinstance(second, Mapping):
        raise ValueError("pass two samples or two mappings of samples, not one of each")
    if not isinstance(first, Mapping):
        first, second = {"sample": first}, {"sample": second}
    if set(first) != set(second):
        raise ValueError(f"the statistics differ: {sorted(first)} against {sorted(second)}")
    level = alpha / len(first)
    pvalues = {
        name: float(scipy.stats.ks_2samp(np.ravel(first[name]), np.ravel(second[name])).pvalue)
        for name in first
    }
    rejected = {name: p for name, p in pvalues.items() if p < level}
    if rejected:
        listed = ", ".join(f"{name} (p = {p:.3g})" for name, p in sorted(rejected.items()))
        raise AssertionError(
            f"two-sample KS test rejects a common law at family-wise alpha = {alpha:g} "
            f"(each of {len(first)} at {level:.3g}): {listed}"
        )
    return pvalues
