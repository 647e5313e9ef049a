"""Closed-form random-matrix predictions for a low-rank matrix perturbed by GOE noise.

One module holds every formula, in the conventions of ``DESIGN.md``:

* P parameters, N samples, batch size B drawn without replacement.
* sigma^2 is the mean element variance of the per-sample Hessians (paper, eq. 9, 1/N convention).
* The batch noise ``N_B = H_B - H_emp`` is modelled as GOE (paper, assumption 3) with off-diagonal
  variance ``s^2 = f(N, B) sigma^2`` and diagonal variance ``2 s^2``. Two finite-population factors:

  - ``paper_factor``: ``(N - B) / (B N)``, as printed in Theorem 1 and eq. 8;
  - ``exact_factor``: ``(N - B) / (B (N - 1))``, the exact variance of a mean of B draws without
    replacement from N values whose variance is taken with the 1/N convention.

* Noise scale ``t = P s^2``: the GOE spectrum fills ``[-2 sqrt(t), 2 sqrt(t)]`` (semicircle of
  variance t).

Theorem 2 (paper, eq. 8) is the BBP transition (Baik, Ben Arous & Peche 2005; for Wigner matrices
Peche 2006, Feral & Peche 2007): an eigenvalue theta of the low-rank part with ``|theta| > sqrt(t)``
leaves the bulk as an outlier at ``theta + t / theta``; otherwise the extreme eigenvalue sticks to
the edge ``sign(theta) 2 sqrt(t)``. The squared overlap of the outlier's eigenvector with the spike
direction is ``1 - t / theta^2`` (Benaych-Georges & Nadakuditi 2011).

Fluctuations (Capitaine, Donati-Martin & Feral 2009 for outliers; Tracy & Widom 1996 at the edge):
an outlier of a simple spike is Gaussian with variance ``2 s^2 (1 - t / theta^2)``; the top edge
eigenvalue is ``2 sqrt(t) + sqrt(t) P^(-2/3) TW_1`` with TW_1 the beta = 1 Tracy-Widom law
(mean -1.2065, sd 1.2680).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tracy-Widom beta = 1 moments (Tracy & Widom 1996; Bornemann 2010, Table 6, to 4 decimals).
TW1_MEAN = -1.2065
TW1_SD = 1.2680


def paper_factor(N, B):
    """Finite-population factor as printed in the paper (Theorem 1, eq. 8): (N - B) / (B N)."""
    N, B = _check_population(N, B)
    return (N - B) / (B * N)


def exact_factor(N, B):
    """Exact factor for a batch mean without replacement: (N - B) / (B (N - 1)).

    Var(mean of B of N values) = (N - B) / (N - 1) * var / B, var = (1/N) sum (x - xbar)^2.
    """
    N, B = _check_population(N, B)
    if np.any(N < 2):
        raise ValueError("the exact finite-population factor needs N >= 2")
    return (N - B) / (B * (N - 1))


FACTORS = {"paper": paper_factor, "exact": exact_factor}


def noise_scale(sigma2, P, N, B, *, factor="paper"):
    """Noise scale t = P s^2 with s^2 = factor(N, B) sigma^2 (s^2 is the off-diagonal variance)."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; accepted: {', '.join(FACTORS)}")
    sigma2 = np.asarray(sigma2, dtype=float)
    P = np.asarray(P, dtype=float)
    if np.any(~np.isfinite(sigma2)) or np.any(sigma2 < 0):
        raise ValueError("sigma^2 must be finite and >= 0")
    if np.any(~np.isfinite(P)) or np.any(P < 1):
        raise ValueError("P must be a finite number >= 1")
    return P * FACTORS[factor](N, B) * sigma2


def bbp_threshold(t):
    """Critical spike size sqrt(t): spikes larger in magnitude separate from the bulk."""
    return np.sqrt(_check_t(t))


def semicircle_edge(t):
    """Right edge 2 sqrt(t) of the semicircle of variance t (the GOE bulk)."""
    return 2.0 * np.sqrt(_check_t(t))


def bbp_outlier(theta, t):
    """Outlier position theta + t / theta (valid for |theta| > sqrt(t))."""
    theta = np.asarray(theta, dtype=float)
    return theta + _check_t(t) / theta


def bbp_overlap(theta, t):
    """Limiting squared overlap <v, u>^2 = max(0, 1 - t / theta^2) of outlier and spike vectors."""
    theta = np.asarray(theta, dtype=float)
    t = _check_t(t)
    with np.errstate(divide="ignore"):
        return np.where(np.abs(theta) > np.sqrt(t), 1.0 - t / theta**2, 0.0)


def edge_scale(t, P):
    """Tracy-Widom scale sqrt(t) P^(-2/3) of the extreme bulk eigenvalues."""
    return np.sqrt(_check_t(t)) * np.asarray(P, dtype=float) ** (-2.0 / 3.0)


def outlier_sd(theta, t, P):
    """Outlier standard deviation sqrt(2 s^2 (1 - t / theta^2)), s^2 = t / P (simple spike)."""
    theta = np.asarray(theta, dtype=float)
    t = _check_t(t)
    return np.sqrt(2.0 * t / np.asarray(P, dtype=float) * np.clip(1.0 - t / theta**2, 0.0, None))


def semicircle_density(x, t):
    """Density sqrt(4t - x^2) / (2 pi t) of the semicircle of variance t."""
    x = np.asarray(x, dtype=float)
    t = _check_t(t)
    if t == 0:
        raise ValueError("the semicircle of variance 0 is a point mass; t must be > 0")
    return np.sqrt(np.clip(4.0 * t - x**2, 0.0, None)) / (2.0 * np.pi * t)


@dataclass(frozen=True)
class Theorem2Prediction:
    """Theorem 2 (paper, eq. 8) applied to extreme eigenvalues ``lam`` of H_emp."""

    lam: np.ndarray  # extreme eigenvalue(s) of H_emp, as given (broadcast shape)
    t: np.ndarray  # noise scale P s^2
    threshold: np.ndarray  # sqrt(t): |lam| above it gives an outlier
    predicted: np.ndarray  # predicted extreme eigenvalue(s) of H_B, same sign as lam
    regime: np.ndarray  # "outlier" or "edge" per entry
    overlap: np.ndarray  # predicted squared eigenvector overlap (0 at the edge)
    factor: str  # finite-population factor used: "paper" or "exact"


def theorem2(lam, sigma2, P, N, B, *, factor="paper"):
    """Predict the extreme eigenvalues of H_B from those of H_emp (paper, Theorem 2, eq. 8).

    ``|lam'| = |lam + t / lam|`` if ``|lam| > sqrt(t)`` (regime "outlier"), else ``2 sqrt(t)``
    (regime "edge"), with ``t = P factor(N, B) sigma^2``; the prediction carries the sign of ``lam``
    (a positive extreme stays positive, a negative one negative). Vectorised over all arguments.
    ``factor="paper"`` uses (N - B)/(B N) as printed; ``"exact"`` uses (N - B)/(B (N - 1)).
    """
    lam = np.asarray(lam, dtype=float)
    if np.any(~np.isfinite(lam)):
        raise ValueError("lambda must be finite")
    t = np.asarray(noise_scale(sigma2, P, N, B, factor=factor), dtype=float)
    lam, t = np.broadcast_arrays(lam, t)
    threshold = np.sqrt(t)
    outlier = np.abs(lam) > threshold
    sign = np.where(lam < 0, -1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        moved = lam + t / lam
        overlap = np.where(outlier, 1.0 - t / lam**2, 0.0)
    predicted = np.where(outlier, moved, sign * 2.0 * threshold)
    regime = np.where(outlier, "outlier", "edge")
    return Theorem2Prediction(
        lam=lam.copy(),
        t=t.copy(),
        threshold=threshold,
        predicted=predicted,
        regime=regime,
        overlap=overlap,
        factor=factor,
    )


def weyl_paper_bound(sigma2, N, B, *, factor="paper"):
    """The paper's eq. 7 expression for ||N_B||: ((N - B)/(B N)) <sigma^2>_{P^2} = s^2 = t / P.

    As printed, <sigma^2>_{P^2} is the arithmetic mean of the P^2 element variances, i.e. sigma^2,
    so the expression is the element variance s^2 of the noise matrix. The operator norm of a GOE
    noise matrix concentrates at 2 sqrt(t) = 2 sqrt(P) s instead, so eq. 7 understates ||N_B||_2
    whenever s^2 < 2 sqrt(P) s; ``rmt.bounds.weyl_check`` reports by how much per draw.
    """
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; accepted: {', '.join(FACTORS)}")
    sigma2 = np.asarray(sigma2, dtype=float)
    if np.any(~np.isfinite(sigma2)) or np.any(sigma2 < 0):
        raise ValueError("sigma^2 must be finite and >= 0")
    return FACTORS[factor](N, B) * sigma2


def _check_t(t):
    t = np.asarray(t, dtype=float)
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ValueError("noise scale t must be finite and >= 0")
    return t


def _check_population(N, B):
    N = np.asarray(N, dtype=float)
    B = np.asarray(B, dtype=float)
    if np.any(~np.isfinite(N)) or np.any(~np.isfinite(B)):
        raise ValueError("N and B must be finite")
    if np.any(B <= 0):
        raise ValueError("batch size B must be >= 1")
    if np.any(B > N):
        raise ValueError("batch size B must be <= N (batches are drawn without replacement)")
    return N, B
