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

# ---- rmt.freeconv ---------------------------------------------------------------------------
# Closed-form outlier formulas (theta + t G_mu, 1 - t F) for a point mass: <= 4 roundings.
FREECONV_FORMULA_RTOL = 4 * EPS64
# Support edges psi(u*) at roots u* of F = 1/t: psi'(u*) = 0, so the root error (4 eps scale)
# enters quadratically; what is left is the rounding of psi, a few eps of |edge| + sqrt(t).
FREECONV_EDGE_RTOL = 8 * EPS64


def freeconv_density_atol(x, t, density):
    """Float64 error bound of the free-convolution density at x (reference value ``density``).

    The solver finds u = psi^{-1}(x) to du <= 4 eps (|x| + sqrt t). Along S(u, w) = 1/t,
    |dw/du| = 2 |T1| / S2 <= 2 sqrt(Q / S2) <= 2 sqrt(t) (Cauchy-Schwarz, Q <= 1/t, S2 >= 1/t^2),
    so w = v^2 is off by <= 8 eps sqrt(t) (|x| + sqrt t) + 4 eps t (Newton's stopping rule);
    doubled for the reference's own rounding: dw = 16 eps sqrt(t) (|x| + sqrt t) + 8 eps t.
    Then |sqrt(w + dw) - sqrt(w)| <= min(dw / sqrt(w), sqrt(dw)), and density = v / (pi t).
    """
    x = np.asarray(x, dtype=np.float64)
    r = np.sqrt(t)
    dw = 16 * EPS64 * r * (np.abs(x) + r) + 8 * EPS64 * t
    v = np.pi * t * np.asarray(density, dtype=np.float64)
    with np.errstate(divide="ignore"):
        dv = np.minimum(dw / v, np.sqrt(dw))
    return dv / (np.pi * t)


# Quadrature of the density on its support: x = mid - half cos(theta), midpoint rule in theta
# with FREECONV_QUAD_NODES per support interval. rho(x(theta)) sin(theta) is smooth, even and
# periodic (square-root edges), so the rule converges geometrically; away from near-critical gaps
# (t min F within 25% of 1) the 512- and 1024-node results differ by <= 3e-12 over 300 random
# measures and the mass error is <= 5e-16. 1e-10 (times unit^k for a k-th moment) leaves
# margin for the density's own rounding and still rejects any wrong cumulant.
FREECONV_QUAD_NODES = 1024
FREECONV_QUAD_ATOL = 1e-10
# Kolmogorov distance between the spectrum of diag(atoms) + GOE(t) and the free convolution:
# rigidity gives O(log(P)^c / P) (Erdos, Yau & Yin 2012; Lee & Schnelli 2013). The constant K in
# K log(P) / P: observed KS is 0.3 log(P)/P at P = 1000 and 2000 (three seeds); K = 1 is a
# threefold margin, while t off by 10% gives 2.2 log(P)/P.
FREECONV_KS_RIGIDITY = 1.0
# Finite-P bias of an outlier's mean location and mean squared overlap: O(1/P) (second-order
# perturbation; for theta, t and atoms of order 1 the constant is below t (1 + |theta|) ~ 4);
# allowance C / P with C = 10.
FREECONV_OUTLIER_BIAS = 10.0

# ---- rmt.band ---------------------------------------------------------------------------------


def band_residual_atol(norm: float, rows: int, bandwidth: int) -> float:
    """Residual ||B x - theta x|| the band solver guarantees (its stopping rule, rmt.band).

    A computed eigenvector has eps-level noise in all L = rows coordinates, whose image under
    B - theta has norm ~ eps ||B|| sqrt(L); the banded product adds ~ (k + 1) eps ||B||. Measured
    floors are <= 0.6 sqrt(L) + 5 (k + 1) in units of eps ||B|| (L <= 20,000, k <= 8); factor 2.
    A residual r bounds the eigenvalue error by r (Weyl / Bauer-Fike for symmetric matrices).
    """
    return 2.0 * (bandwidth + 1 + np.sqrt(rows)) * EPS64 * norm


def overlap_atol(angle_sum: float) -> float:
    """|x_j^2 - v_j^2| for unit vectors at angle theta: |x_j - v_j| |x_j + v_j| <= 2 ||x - v||
    and ||x - v|| = 2 sin(theta / 2) <= sqrt(2) sin(theta); sin(theta1 + theta2) <=
    sin(theta1) + sin(theta2) = ``angle_sum`` (each <= residual / gap, Davis-Kahan)."""
    return 2.0 * np.sqrt(2.0) * angle_sum


# Tracy-Widom beta = 1 (Bornemann 2010, "On the numerical evaluation of distributions in random
# matrix theory", Table 6): mean, sd, and kurtosis (3 + excess 0.1652429384). The sd of a sample
# sd of n draws is sd sqrt((kurtosis - 1) / (4 n)) (delta method on Var(s^2) = sd^4 (kurt - 1) / n).
# Finite-P bias of the scaled largest eigenvalue at P = 1e6 is O(P^(-2/3)) = 1e-4, far below the
# standard error at 2000 draws (0.028 for the mean, 0.021 for the sd).
TW1_MEAN = -1.2065335745820
TW1_SD = 1.2679830
TW1_KURTOSIS = 3.1652429384

# ---- nnhessian --------------------------------------------------------------------------------
# HVP vs dense torch.func.hessian in float64, norm-wise ||Hv - H_ref v|| / ||H_ref v||: both are
# sums over N samples and layer products of O(P) rounded terms; forward error <= c (depth + log N)
# eps * (condition of the sums) ~ 1e3 eps = 2e-13 (observed 1e-15). 1e-10 as in STYLE.md leaves
# margin for harder models yet any wrong term (a weight, a missing batch, a sign) is O(1e-2).
HVP_RTOL64 = 1e-10
# Graph cache size measure vs the torch profiler's net CPU allocation of one cached product:
# both count the same saved storages; the profiler also sees a few small bookkeeping tensors
# (loss scalars, index and shape tensors) the saved-tensor hooks do not, and the hooks count a
# storage once even where the allocator rounded it. Observed 0-0.7% on the digits models; 3%
# still fails a measure that misses one activation of the smallest model (>= 10%).
GRAPH_BYTES_RTOL = 0.03
# Symmetry |<u, Hv> - <Hu, v>| / (||u|| ||H v||): two products, each with the error above.
HVP_SYMMETRY_RTOL64 = 1e3 * EPS64
# Central differences of the gradient, (g(w + hv) - g(w - hv)) / 2h = Hv + h^2/6 D^3g[v,v,v]
# + O(h^4) + O(eps |g| / h). At h = 2e-4 and 1e-4 the h^2 term dominates (rounding ~ 1e-12), so
# the error ratio is 4 (1 + O(h^2)): [3.5, 4.5] accepts that and rejects an HVP off by more than
# ~1/10 of the truncation error (the ratio tends to 1). FD_RTOL bounds the truncation error:
# h^2/6 = 1.7e-9 times a third-derivative scale relative to ||Hv|| of up to 6e4 (observed 6e3 for
# BatchNorm on batch statistics with 8 samples, where normalisation makes D^3 large).
FD_STEPS = (2e-4, 1e-4)
FD_RATIO_RANGE = (3.5, 4.5)
FD_RTOL = 1e-4
# float32 HVP vs float64, norm-wise: rounding of inputs/weights (eps32) and of the sums, amplified
# by the same ~1e2-1e3 as above: 1e3 * eps32 = 1.2e-4 (observed 3e-7).
HVP_RTOL32 = 1e3 * EPS32
# Gauss quadrature from Lanczos, |sum_j w_j theta_j^k - q^T A^k q| / ||A||^k for k <= 2m - 1:
# T_m = Q^T A Q + E with ||E|| ~ sqrt(P) eps ||A|| (full reorthogonalisation keeps Q orthonormal),
# so a k-th moment moves by ~ k ||E|| ||A||^(k-1): k <= 11, P = 80 gives ~ 1e-14 (observed 4e-16).
LANCZOS_MOMENT_RTOL64 = 1e3 * EPS64
# Residual estimate |beta_m s_mj| vs the true ||A y - theta y||, in units of P eps ||A||: the
# identity A Q = Q T + r e_m^T holds to the rounding of the recurrence, O(sqrt(P) eps ||A||) per
# step; 10 P eps ||A|| covers it (observed < 1e-15 absolute at P = 120).
LANCZOS_RESIDUAL_ATOL = 10.0
# One sigma^2 probe value vs the same formula on dense per-sample Hessians, relative: the HVPs
# carry <= 1e3 eps relative error (HVP_RTOL64's derivation), the deviations a_i = (H_i - H_emp) v
# are >= 1/100 of ||H_i v|| on these problems, and squaring doubles it: ~ 1e3 * 100 * 2 eps =
# 4e-11 (observed 3e-16); 1e-10 still rejects a wrong factor (>= 1/(N-1) = 9% relative).
SIGMA2_PROBE_RTOL64 = 1e-10

# ---- nnhessian.models zoo / nnhessian.cifar / validation.train --------------------------------
# Normalisation (x / 255 - mean) / std in float32 against float64: pixel/255 <= 1 and the mean
# each carry <= eps32/2 (mean and std rounded to float32 too), the division by std >= 0.256
# multiplies the absolute error by <= 3.9 and adds eps32/2 of |z| <= 3.9: in all
# <= (0.5 + 0.5 + 0.5) * 3.9 eps32 + 0.5 * 3.9 eps32 + 3.9 * 0.5 eps32 (std rounding) ~ 10 eps32.
CIFAR_NORMALIZE_ATOL32 = 16 * EPS32
# He initialisation: the sample standard deviation of n i.i.d. N(0, s^2) draws has standard
# error s / sqrt(2 n); the test asserts |std_hat / s - 1| <= Z_STAT / sqrt(2 n) (and the same for
# the uniform bound of linear layers via the variance bound^2 / 3, se of the variance
# estimate sqrt(4/5 / n) relative for a uniform law).
# Resumed training: bit-identical on the CPU (same operations in the same order on the same
# threads): equality with tolerance 0, torch.equal on every tensor.
TRAIN_RESUME_ATOL = 0.0

# ---- nnhessian.checkpoint / nnhessian.distributed -------------------------------------------
# Resumed Lanczos, SLQ and sigma^2 runs: bit-identical on the CPU (every operation after a resume
# sees the same inputs in the same order on the same threads as in the uninterrupted run; the
# state stores float64/float32 tensors and Python floats losslessly): np.array_equal, tolerance 0.
RESUME_ATOL = 0.0


def reassociation_atol(abs_term_sum, num_terms: int, count: int, result):
    """Elementwise bound between two summation orders of the same terms t_b, then / count.

    Sharded passes sum the same per-batch terms t_b = n_b H_b v (bitwise the same on every
    layout) in another order: per-rank partial sums, then an all-reduce. Any order of n terms has
    error <= (n - 1) u sum_b |t_b| (Higham 2002, eq. 4.4; u = eps/2), so two orders differ by <=
    (n - 1) eps sum_b |t_b|; the division by N rounds each once more (<= eps |result|).
    """
    return (num_terms - 1) * EPS64 * abs_term_sum / count + EPS64 * abs(result)


def lanczos_reorder_atol(norm: float, P: int) -> float:
    """Ritz values of two float64 Lanczos runs whose products differ only by summation order.

    Run to breakdown/steps = dim, each run's Ritz values are eigenvalues of the operator up to the
    backward error eig_atol(||A||, P) (as in the steps = dim tests), so two runs differ by <= 2
    eig_atol (Weyl). For m < dim each T_m is the exact projection for an operator perturbed by the
    same backward error and we allow the same 2 eig_atol = 20 P eps ||A|| (observed <= 6 eps ||A||
    at P = 39, m = 20); a lost or doubled shard moves Ritz values by O(||A|| / world size).
    """
    return 2.0 * eig_atol(norm, P)


# ---- validation.network (tests/test_cli_network.py) -------------------------------------------


def network_eig_atol(norm: float, P: int) -> float:
    """|Lanczos extreme (steps = P, from the HVP operators) - eigvalsh of an independent dense
    Hessian (torch.func.hessian)|, float64. Three contributions, each a Weyl shift:
    Lanczos with full reorthogonalisation, T_P = Q^T A Q + E with ||E|| ~ sqrt(P) eps ||A||
    (LANCZOS_MOMENT_RTOL64's derivation); the two Hessians differ column by column by the HVP
    forward error <= 1e3 eps ||H|| (HVP_RTOL64's derivation), so ||dH||_2 <= ||dH||_F <=
    1e3 sqrt(P) eps ||H||; the dense eigensolver's backward error 10 P eps ||H|| (eig_atol).
    At P = 160: 1.4e4 eps ||H|| = 3e-12 ||H||; any wrong term (a missing sample, a wrong batch
    weight) moves an extreme eigenvalue by O(1/N) relative, 1e9 times more."""
    return (np.sqrt(P) + 1e3 * np.sqrt(P) + 10.0 * P) * EPS64 * norm


# Gauss weights of one Lanczos run are the squared first components of an orthogonal matrix
# (eigenvectors of T_m, computed by LAPACK to O(m eps) orthogonality): they sum to 1 within
# m eps; m <= 200 here: 1e3 eps.
NETWORK_WEIGHT_SUM_ATOL = 1e3 * EPS64

# ---- validation.checks.verdict (tests/test_checks_verdict.py) ---------------------------------

# Ends of the spread rule's chi-square(2) interval against the closed form -2 log(1 - alpha/2),
# -2 log(alpha/2) with alpha = erfc(z / sqrt 2): both sides compute alpha to a few eps relative
# and the chi-square(2) quantiles have relative condition number <= 1 in alpha there, so they agree
# to O(10 eps); 100 eps (observed 17.5 eps at z = 4). A one-sided tail moves the ends by >= 7%.
CHI2_QUANTILE_RTOL = 100 * EPS64

# ---- rmt.spectra / rmt.testing (tests/test_rmt_spectra.py, tests/test_rmt_testing.py) --------
# One spectral quantity computed two ways (closed form, scipy, the old copy of a formula): each
# side sums <= 10^3 rounded terms, error <= n eps = 2.2e-13 relative (Higham 2002, eq. 4.4);
# 1e-12 covers both, while a wrong piece (a missed sign change, unnormalised weights, a lost
# node) moves the result by >= 1e-3 relative.
SPECTRA_SUM_RTOL = 1e-12


def quadrature_moment_atol(k: int, m: int, radius: float) -> float:
    """|sum_j w_j x_j^k - exact moment| for an m-node rule with nodes |x_j| <= radius, float64.

    Each node and weight carries a few eps relative (cos/sin), x^k k eps more, the m-term sum
    m eps of sum_j w_j |x_j|^k <= radius^k: (k + m + 2) eps radius^k, times 4 for margin. The
    first moment a Gauss rule misses (k = 2m) is off by prod beta_j^2 (= t^m, the semicircle's).
    """
    return 4.0 * (k + m + 2) * EPS64 * radius**k


# ---- nnhessian.reference (tests/test_nnhessian_reference.py) ---------------------------------
# Dense reference vs the closed-form softmax-regression Hessian (diag p - p p^T) kron x x^T,
# float64, norm-wise: each entry of either side is a sum of <= N = 9 products of a softmax
# (exp, sum, division: a few eps) and two features, plus the Jacobian's own rounding, a few
# hundred flops per entry at most: 100 eps. A wrong flattening, weight or loss term is O(1).
DENSE_CLOSED_FORM_RTOL64 = 100 * EPS64
# The same dense Hessian summed over other chunks of samples (weights n_chunk / n): each entry
# is the same n rounded terms reassociated, <= (n - 1) eps sum_i |H_i| (Higham 2002, eq. 4.4);
# with cancellation across samples up to 10x and n = 23: ~ 220 eps relative, 1e3 eps allowed,
# while equal chunk weights instead of n_chunk / n move it by O(1/n) = 4%.
DENSE_REORDER_RTOL64 = 1e3 * EPS64


# ---- lockstep products (tests/test_nnhessian_lockstep.py) ------------------------------------
# k products from one vmapped reverse pass (is_grads_batched) vs k separate passes, float64: the
# same sums of <= a few hundred terms per entry (batch of 10, hidden 6, 10 classes) in another
# order, <= n eps relative each (Higham 2002, eq. 4.4): ~ 1e-13; 1e-11 allowed, while a product
# against the wrong vector or a missing batch is O(1) off.
BATCHED_REVERSE_RTOL64 = 1e-11

# ---- nnhessian.ggn / nnhessian.curvature (tests/test_nnhessian_curvature.py) -------------------
# Per-sample and batch GGN eigenvalues vs the dense float64 reference, norm-wise relative: the
# Jacobians (vmap of jacrev per sample vs jacrev of the batch) are the same derivatives summed in
# another order, ~1e2 eps relative (HVP_RTOL64's derivation); Lambda^(1/2) from eigh enters only
# through its square, Lambda + O(C eps ||Lambda||) (eigh's backward error); eigvalsh of M_i, K or
# the P x P reference adds 10 n eps of the norm (eig_atol), n <= P = 616 or B C = 500: 6e3 eps.
# In all ~1e4 eps = 2e-12 (observed <= 3e-15); 1e-10 as in STYLE.md, while a missing -p p^T in
# Lambda moves the spectrum by O(1) (GGN_WRONG_LAMBDA_MIN).
GGN_RTOL64 = 1e-10
# Least error the tests must see with the wrong Lambda = diag(p): its top eigenvalue is about
# max_c p_c ||J||^2 instead of ~ (1 - p_max) ||J||^2 -- O(p) relative even near uniform p at
# initialisation (observed >= 0.04 on mlp, cnn, cnn_bn); 1e-3 is 1e7 times the tolerance above.
GGN_WRONG_LAMBDA_MIN = 1e-3
# Residual share ||H - G|| / ||H|| for softmax regression (H_i = G_i exactly): both sides are
# products of a softmax (a few eps) and two features, a few hundred flops per entry as in
# DENSE_CLOSED_FORM_RTOL64; 1e3 eps (observed 3e-15) against a share of O(0.1-1) for the MLP.
RESIDUAL_LINEAR_ATOL64 = 1e3 * EPS64

# ---- rmt.tails (tests/test_rmt_tails.py) --------------------------------------------------------
# Hill's estimate on a hand sample: a sum of k <= 3 logarithms and one division, a few roundings.
HILL_SUM_RTOL = 8 * EPS64

# ---- tests that can fail (issue 11): network runs, GPU check, stored rows --------------------
# A mean over K <= 10 draws recomputed from the CSV against the run's stored mean (sweep.csv,
# summary.csv): the same K float64 numbers (the CSV round trip is exact: repr on writing, pandas
# >= 3 parses to the nearest double) summed on both sides, possibly in another order, and of one
# sign (extremes, second moments): <= K eps relative (Higham 2002, eq. 4.4) = 2.2e-15; 1e-13
# leaves margin, while a mean over other draws (draw 0 alone, a draw twice) moves it by the
# spread over draws, >= 1e-3 relative.
DRAW_MEAN_RTOL64 = 1e-13
# The standard error over the K draws (sample sd / sqrt K) recomputed from the CSV: the deviations
# x_i - mean carry <= 2 eps |mean| each, i.e. 2 eps |mean| / sd relative to the sd; for |mean| /
# sd <= 1e3 that is <= 4.4e-13; 1e-12. A ddof of 0 instead of 1 is off by 18% at K = 3.
DRAW_SE_RTOL64 = 1e-12
# The free-convolution density recomputed from ritz.csv: its nodes and weights went through the
# CSV (one ulp each) and are normalised by the probe count rather than by their sum (<= m probes
# eps relative, m probes <= 500 here), so the measure the solver sees moves by ~1e-13 relative;
# near a support edge the density has infinite slope, so this is an allowance on the scale of the
# largest density value on top of freeconv_density_atol: 1e-12 max density (observed: 0, the
# same bits), while a wrong t or a missing probe moves the density by >= 1e-2 of its maximum.
DENSITY_INPUT_RTOL64 = 1e-12
# Standardised moment (skewness, kurtosis) from raw moments by hand: central moments by the
# binomial formula (<= 4 terms, cancellation <= 4x), a power 3/2 and a division: <= 10 roundings
# x 4 = 40 eps; 50 eps (observed 0.9 eps). A wrong coefficient moves the skewness by O(1).
SHAPE_STATISTIC_RTOL64 = 50 * EPS64
# Least-squares slope of log lambda against log f over n <= 10 points: each log carries eps
# |log f| (|log f| <= 10), divided by the spread of log f (>= 1): ~ n eps max|log f| / spread
# = 100 eps; observed 4 eps on an exact power law. Keeping B = N (log 0) or a wrong exponent is
# off by O(1).
LOGLOG_SLOPE_RTOL64 = 100 * EPS64
# Two float32 products on a GPU whose reductions may reorder: each is within 1e3 eps32 of the
# float64 product (HVP_RTOL32's derivation), so they differ by at most that (the same bound as
# HessianOperator.check_determinism); on the CPU they are bit-identical (tolerance 0).
GPU_REORDER_RTOL32 = 1e3 * EPS32


def slq_second_moment_atol(m2, theta_max, steps: int, *, hvp_rtol: float, eps: float) -> float:
    """|sum_j w_j theta_j^2 of one SLQ probe q (a run's ritz.csv) - ||H q||^2 (an independent
    float64 autograd product)|.

    Exact for m >= 2: e_1^T T_m^2 e_1 = alpha_1^2 + beta_1^2 = ||H q||^2 (Golub & Meurant 2010,
    ch. 6: Gauss quadrature is exact up to degree 2m - 1). The run's product carries a norm-wise
    relative error ``hvp_rtol`` (HVP_RTOL64 or HVP_RTOL32 for its dtype), the reference's
    HVP_RTOL64, so ||H q||^2 moves by <= 2 (hvp_rtol + HVP_RTOL64) of itself; the quadrature from
    the eigendecomposition of T_m (backward error ~ m eps ||T_m||, ||T_m|| = max |theta|) moves
    (T^2)_11 by <= 2 m eps theta_max^2; doubled. A wrong batch weight, a missing batch or another
    probe moves ||H q||^2 by O(1/N) = O(1e-2) relative. Observed on the miniature CIFAR CNN:
    <= 1.1e-14 relative (2.6e-5 of this bound) in float64, <= 5.6e-5 (2.5e-2 of it) in float32.
    """
    return 2.0 * (hvp_rtol + HVP_RTOL64) * m2 + 4.0 * steps * eps * theta_max**2


# ---- rmt.free_poisson (tests/test_rmt_free_poisson.py) -----------------------------------------
# Mean top eigenvalue of the Monte-Carlo sum vs the model's edge, in units of the Tracy-Widom scale
# sigma = (pi s P)^(-2/3) computed from the model's own square-root edge (rho ~ s sqrt(E - x)):
# the TW1 mean is -1.21 sigma and finite-P corrections of the same order (observed -2.3 sigma at
# P = 300); 3 sigma, plus Z_STAT standard errors of the mean over draws.
FCP_EDGE_TW_UNITS = 3.0
# Moments from a contour integral of G: the trapezoid rule on a circle of radius 40 around a
# measure within |x| < 12 converges like (12/40)^M (M = 256 points: nothing left); the
# subordination residual (64 eps (|z| + |w|)) times radius^k: 1e-12 relative. A missed cumulant
# (k_2 not added, or k_1 when centred) moves the result by O(1).
FCP_CONTOUR_RTOL = 1e-12

# ---- rmt.subordination (tests/test_rmt_subordination.py) ---------------------------------------
# A semicircle replaced by its n-point Gauss rule (n >= 400): G at distance d >= 0.05 from the
# support is off by O(rho^(-2n)) (Gauss quadrature of an analytic integrand, Bernstein ellipse
# through z), below 1e-20 here; the edge K(g*) and outliers likewise (observed 4e-16 on the edge);
# what is left is the solvers' rounding, ~ 64 eps (|z| + |w|) ~ 1e-13: 1e-10 allowed. A variance
# off by 0.1 moves the edge by 0.04.
SUBORDINATION_GAUSS_ATOL = 1e-10

# ---- rmt.stability (tests/test_rmt_stability.py) ----------------------------------------------
# E_B[H_B (x) H_B] by enumeration of <= 56 batches against the closed form H (x) H + f Sigma:
# sums of O(56) products of entries <= ~10, rounding ~ 56 x 100 eps ~ 1e-12; observed 4e-15. The
# paper's factor instead of the exact one moves C by f/(N - 1) ~ 10% of f Sigma.
STABILITY_MOMENT_ATOL = 1e-11
# Thresholds from the generalised eigenvalue vs rho(T(eta)) = 1 at eta*(1 -+ 1e-6): rho moves by
# ~ eta* rho'(eta*) 1e-6 >= 1e-7, far above eigvalsh's rounding of a P^2 x P^2 map (~1e-14).
STABILITY_THRESHOLD_STEP = 1e-6
# Mean loss over R = 4000 SGD runs at T = 50: near eta* the runs' losses are heavy-tailed, and the
# bisection edge moves with the sample mean; observed 0.1-0.4% off rmt.stability.run_length_eta
# over seeds; 2% allowed. The paper's factor moves eta* by 7-11% here, with replacement by 13-23%.
STABILITY_MC_REL = 0.02
