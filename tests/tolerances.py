"""Every numerical tolerance used by the tests, each with its derivation.

Keyed by what is compared (dtype, method). A tolerance that is not derived here is a defect:
a loose bound that cannot fail is as bad as no test.
"""

import numpy as np

EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16
EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7

# Statistical assertions: |estimate - expectation| <= Z_STAT * standard error.
# Two-sided Gaussian tail at 4 sd is 6.3e-5 per assertion; with fixed seeds the tests are
# deterministic, and the threshold keeps a wrong formula (bias of several se) detectable.
Z_STAT = 4.0

# KS tests between two samplers of the same law: reject below this p-value. With fixed seeds
# the outcome is deterministic; 1e-3 keeps the false-alarm rate of a correct sampler small
# while a shifted or rescaled law (shift of 0.3 sd at n = 400 per side) gives p < 1e-4.
KS_PVALUE = 1e-3

# Dense symmetric eigensolvers (LAPACK syevd/syevr) are backward stable: computed eigenvalues
# are exact for M + E with ||E||_2 <= c * n * eps * ||M||_2.  We use c * n = 50 * sqrt(n) style
# bounds below via this helper.


def eig_atol(norm: float, n: int, eps: float = EPS64) -> float:
    """Absolute eigenvalue error bound of a backward-stable symmetric eigensolver.

    Weyl: |lambda_i(M + E) - lambda_i(M)| <= ||E||_2 <= 10 * n * eps * ||M||_2 (a generous
    constant over LAPACK's O(n eps ||M||) backward error; still 1e8 times tighter than any
    effect the tests look for).
    """
    return 10.0 * n * eps * norm


# ---- rmt.theory -----------------------------------------------------------------------------
# Closed-form formulas evaluated in float64: a handful of flops, relative error <= 8 eps.
THEORY_RTOL = 8 * EPS64

# ---- rmt.samplers / rmt.bounds / rmt.experiments ---------------------------------------------
# Weyl and interlacing are exact inequalities; the computed eigenvalues carry the solver's error
# eig_atol(||M||, P) on each side, so comparisons allow 2 * eig_atol.
