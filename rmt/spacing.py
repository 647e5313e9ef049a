r"""Local statistics: the mean ratio of consecutive level spacings (issue 10, item 4).

For a sorted spectrum ``x_1 <= ... <= x_n`` with spacings ``s_k = x_{k+1} - x_k``, the ratios
``r~_k = min(s_k, s_{k+1}) / max(s_k, s_{k+1})`` lie in [0, 1] and need no unfolding: the local
density cancels in a ratio of neighbouring spacings (Oganesyan & Huse 2007; Atas, Bogomolny,
Giraud & Roux, "Distribution of the ratio of consecutive level spacings in random matrix
ensembles", PRL 110, 084101, 2013). References for ``<r~>``:

* GOE, large n: 0.5307 (Atas et al., Table 1, numerics); the 3 x 3 surmise ``4 - 2 sqrt(3) =
  0.5359`` is exact for 3 x 3 GOE matrices;
* Poisson (independent levels): ``2 ln 2 - 1 = 0.3863``, exact at every n for i.i.d. uniform points
  (two consecutive uniform spacings are exchangeable and ``s_k / (s_k + s_{k+1})`` is uniform).

Bulk restriction: ``bulk_fraction = f`` drops ``floor(f n)`` eigenvalues at each end before the
spacings are formed (the edges follow Tracy-Widom, not bulk statistics, and outliers are not part of
the bulk). Pairs with ``max(s_k, s_{k+1}) = 0`` (exactly degenerate levels, e.g. the null space of
a low-rank matrix) are undefined and dropped; restrict the spectrum away from such clusters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "R_GOE",
    "R_GOE_SURMISE",
    "R_POISSON",
    "SpacingRatio",
    "mean_spacing_ratio",
    "spacing_ratios",
]

R_GOE = 0.5307  # Atas et al. 2013, Table 1: large-n GOE numerics
R_GOE_SURMISE = 4.0 - 2.0 * math.sqrt(3.0)  # exact for 3 x 3 GOE
R_POISSON = 2.0 * math.log(2.0) - 1.0  # i.i.d. levels


def spacing_ratios(eigenvalues, *, bulk_fraction=0.0) -> np.ndarray:
    """``r~_k = min(s_k, s_{k+1}) / max(s_k, s_{k+1})`` of one spectrum (module docstring)."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    if not np.all(np.isfinite(x)):
        raise ValueError("eigenvalues must be finite")
    if not 0.0 <= bulk_fraction < 0.5:
        raise ValueError(f"bulk_fraction must lie in [0, 0.5), got {bulk_fraction!r}")
    cut = int(math.floor(bulk_fraction * x.size))
    x = x[cut : x.size - cut]
    s = np.diff(x)
    lo = np.minimum(s[:-1], s[1:])
    hi = np.maximum(s[:-1], s[1:])
    keep = hi > 0
    return lo[keep] / hi[keep]


@dataclass(frozen=True)
class SpacingRatio:
    """``<r~>`` over several spectra with its standard error over spectra."""

    mean: float  # mean over spectra of each spectrum's mean ratio
    se: float  # sd of the per-spectrum means / sqrt(K); NaN for K = 1
    per_spectrum: np.ndarray  # (K,) mean ratio of each spectrum
    counts: np.ndarray  # (K,) ratios used per spectrum
    bulk_fraction: float


def mean_spacing_ratio(spectra, *, bulk_fraction=0.0) -> SpacingRatio:
    """``<r~>`` of each spectrum (e.g. one per batch), their mean and its standard error.

    The per-spectrum means are independent across independent spectra (batches), so the standard
    error is their sd / sqrt(K); within one spectrum the ratios are correlated and no error is
    claimed (se = NaN for K = 1).
    """
    per, counts = [], []
    for spectrum in spectra:
        r = spacing_ratios(spectrum, bulk_fraction=bulk_fraction)
        if r.size == 0:
            raise ValueError("a spectrum has fewer than two nonzero consecutive spacings")
        per.append(r.mean())
        counts.append(r.size)
    per = np.asarray(per)
    if per.size == 0:
        raise ValueError("no spectra given")
    se = float(per.std(ddof=1) / math.sqrt(per.size)) if per.size > 1 else float("nan")
    return SpacingRatio(
        mean=float(per.mean()),
        se=se,
        per_spectrum=per,
        counts=np.asarray(counts),
        bulk_fraction=float(bulk_fraction),
    )
