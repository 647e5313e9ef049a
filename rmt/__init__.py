"""Low-rank plus GOE random matrices: theory (paper Theorem 2, BBP), samplers, bounds, checks.

numpy/scipy only. Stages:

* :mod:`rmt.theory` -- closed forms: noise scale t (paper eq. 10), BBP outliers, Theorem 2;
* :mod:`rmt.samplers` -- dense GOE, low-rank and spiked matrices (exact, any dtype);
* :mod:`rmt.band` -- the exact band model that reaches P = 15,291,300;
* :mod:`rmt.bounds` -- Weyl's inequalities checked on samples;
* :mod:`rmt.freeconv` -- free additive convolution with the semicircle (Biane);
* :mod:`rmt.experiments` -- Monte-Carlo comparisons of samples against theory;
* :mod:`rmt.spectra` -- spectral measures after the fact: quadrature moments, shape statistics,
  jackknife, kernel smoothing, Wasserstein-1 distances, SLQ resolution;
* :mod:`rmt.extreme_model` -- M2: full-data spike plus the hardest sample in the batch, its exact
  law over batches drawn without replacement (order statistics);
* :mod:`rmt.subordination` -- free additive convolution of two discrete measures (or one and an
  R-transform) by subordination: density, exact right edge, outliers, generalised BBP (M4);
* :mod:`rmt.free_poisson` -- M3: the batch GGN noise as a free compound Poisson law;
* :mod:`rmt.spacing` -- mean ratio of consecutive level spacings (Atas et al. 2013);
* :mod:`rmt.tails` -- Hill's estimate of a tail index (per-sample curvature).

:mod:`rmt.testing` (hypothesis strategies and statistical assertions for property tests) needs
hypothesis and is imported on demand: ``import rmt.testing``.
"""

from rmt.band import band_extremes, truncation_check, truncation_rows
from rmt.bounds import WeylCheck, low_rank_extremes, weyl_check
from rmt.experiments import SpikedExtremes, extremes_table, spiked_extremes, weyl_table
from rmt.extreme_model import ExtremeValueModel, batch_max_probabilities, extreme_value_model
from rmt.free_poisson import FreeCompoundPoisson, fcp_batch_spectrum, fcp_law
from rmt.freeconv import (
    FreeConvolutionOutliers,
    free_convolution_density,
    free_convolution_outliers,
    free_convolution_support,
)
from rmt.samplers import dense_extremes, haar_frame, sample_goe, sample_low_rank, sample_spiked
from rmt.spacing import SpacingRatio, mean_spacing_ratio, spacing_ratios
from rmt.spectra import (
    jackknife,
    quadrature_moments,
    raw_moments,
    shape_statistics,
    slq_resolution,
    smooth_density,
    smoothing_width,
    wasserstein1_discrete,
    wasserstein1_measure_to_density,
    wasserstein1_to_density,
)
from rmt.subordination import (
    FreeSumSpectrum,
    free_sum_spectrum,
    generalised_bbp_outlier,
    subordination_edge,
)
from rmt.theory import (
    Theorem2Prediction,
    bbp_outlier,
    bbp_overlap,
    bbp_threshold,
    edge_scale,
    noise_scale,
    outlier_sd,
    semicircle_density,
    semicircle_edge,
    theorem2,
    weyl_paper_bound,
)
from rmt.types import ExtremeSample

__all__ = [
    "ExtremeSample",
    "ExtremeValueModel",
    "FreeCompoundPoisson",
    "FreeConvolutionOutliers",
    "FreeSumSpectrum",
    "SpacingRatio",
    "SpikedExtremes",
    "Theorem2Prediction",
    "WeylCheck",
    "band_extremes",
    "batch_max_probabilities",
    "bbp_outlier",
    "bbp_overlap",
    "bbp_threshold",
    "dense_extremes",
    "edge_scale",
    "extreme_value_model",
    "extremes_table",
    "fcp_batch_spectrum",
    "fcp_law",
    "free_convolution_density",
    "free_convolution_outliers",
    "free_convolution_support",
    "free_sum_spectrum",
    "generalised_bbp_outlier",
    "haar_frame",
    "jackknife",
    "low_rank_extremes",
    "mean_spacing_ratio",
    "noise_scale",
    "outlier_sd",
    "quadrature_moments",
    "raw_moments",
    "sample_goe",
    "sample_low_rank",
    "sample_spiked",
    "semicircle_density",
    "semicircle_edge",
    "shape_statistics",
    "slq_resolution",
    "smooth_density",
    "smoothing_width",
    "spacing_ratios",
    "spiked_extremes",
    "subordination_edge",
    "theorem2",
    "truncation_check",
    "truncation_rows",
    "wasserstein1_discrete",
    "wasserstein1_measure_to_density",
    "wasserstein1_to_density",
    "weyl_check",
    "weyl_paper_bound",
    "weyl_table",
]
