"""Result types shared by the random-matrix samplers.

Every sampler of "low rank + GOE" returns an :class:`ExtremeSample` per draw, whatever the
method (dense eigendecomposition or the exact band model), so the experiments and the checks
downstream never need to know how a draw was made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExtremeSample:
    """Extreme eigenpairs of one draw of ``M = A + W``.

    ``A`` has eigenvalues ``spikes`` (the remaining ``P - k`` are zero) and ``W`` is a GOE matrix
    of noise scale ``t`` (off-diagonal variance ``t / P``, diagonal ``2 t / P``).

    Overlaps are squared: ``top_overlaps[i, j] = <v_i, u_j>^2`` where ``v_i`` is the unit
    eigenvector of the ``i``-th largest eigenvalue of ``M`` and ``u_j`` the eigenvector of ``A``
    belonging to ``spikes[j]`` (in the order the spikes were given).
    """

    spikes: np.ndarray  # (k,) eigenvalues of the low-rank part, as given
    t: float  # noise scale, t = P s^2
    P: int  # matrix dimension
    top: np.ndarray  # (n,) largest eigenvalues of M, descending
    bottom: np.ndarray  # (n,) smallest eigenvalues of M, ascending
    top_overlaps: np.ndarray  # (n, k) squared overlaps of top eigenvectors with spike directions
    bottom_overlaps: np.ndarray  # (n, k) the same for the bottom eigenvectors
    noise_norm: float  # ||W||_2 of this draw's noise matrix (nan when not computed)
    method: str  # "dense" or "band"
