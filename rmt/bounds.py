"""Weyl's inequality for the mini-batch perturbation, checked draw by draw.

Weyl (1912): for symmetric A and W, |lambda_i(A + W) - lambda_i(A)| <= ||W||_2 for every i
(eigenvalues sorted the same way). This is exact and holds for every draw. The paper's eq. 7
replaces ||W||_2 by ((N - B)/(B N)) <sigma^2>_{P^2} = s^2 = t / P (``rmt.theory.weyl_paper_bound``);
``weyl_check`` reports, per draw, whether and by how much each bound holds on the computed
extreme eigenvalues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmt.types import ExtremeSample


@dataclass(frozen=True)
class WeylCheck:
    """Weyl bounds on the extreme eigenvalue shifts of one draw."""

    shifts: np.ndarray  # (2n,) |lambda_i(A + W) - lambda_i(A)|, top n then bottom n
    exact_bound: float  # ||W||_2 of this draw
    paper_bound: float  # eq. 7 read as printed: s^2 = t / P
    exact_holds: bool  # max shift <= ||W||_2 (up to rounding of the eigensolver)
    paper_holds: bool  # max shift <= s^2
    exact_slack: float  # ||W||_2 - max shift (>= 0 when the bound holds)
    paper_slack: float  # s^2 - max shift (negative: eq. 7 is violated by that much)


def low_rank_extremes(spikes, P, n):
    """The n largest (descending) and n smallest (ascending) eigenvalues of diag(spikes, 0, ...)."""
    spikes = np.asarray(spikes, dtype=float)
    k = spikes.size
    zeros = np.zeros(min(P - k, 2 * n))
    values = np.sort(np.concatenate([spikes, zeros]))
    return values[::-1][:n], values[:n]


def weyl_check(sample: ExtremeSample, *, rounding: float | None = None) -> WeylCheck:
    """Check both Weyl bounds on the extreme eigenvalues of ``sample``.

    ``rounding`` is an absolute allowance for the eigensolvers' error; by default
    10 P eps (||M||_2 + ||W||_2), a generous multiple of a backward-stable solver's O(P eps ||M||)
    error (eigenvalues of M and of W come from separate calls). The exact bound can only fail by
    more than that if the code is wrong.
    """
    if not np.isfinite(sample.noise_norm):
        raise ValueError("this sample has no ||W||_2; draw it with noise_norm=True")
    if rounding is None:
        scale = max(abs(sample.top[0]), abs(sample.bottom[0])) + sample.noise_norm
        rounding = 10.0 * sample.P * np.finfo(np.float64).eps * scale
    n = sample.top.size
    a_top, a_bottom = low_rank_extremes(sample.spikes, sample.P, n)
    shifts = np.abs(np.concatenate([sample.top - a_top, sample.bottom - a_bottom]))
    worst = float(shifts.max())
    paper = sample.t / sample.P
    return WeylCheck(
        shifts=shifts,
        exact_bound=sample.noise_norm,
        paper_bound=paper,
        exact_holds=worst <= sample.noise_norm + rounding,
        paper_holds=worst <= paper,
        exact_slack=sample.noise_norm - worst,
        paper_slack=paper - worst,
    )
