r"""``python -m validation network``: full-data vs mini-batch Hessian spectra of a network.

The measurement side of the paper (sections 3-4), on a real network at fixed weights w:

1. data: ``--data digits`` (scikit-learn's 8x8 digits, bundled, offline; the default) or
   ``--data cifar100`` (the CIFAR-100 training split read from ``--data-dir`` by
   :func:`nnhessian.cifar.load_cifar100`: normalised, file order, never augmented; fetched only
   with ``--download``); ``--samples n`` keeps the first n samples (N = n; for CIFAR-100 only those
   images are read into memory). The class count comes from the data (10 / 100);
2. weights: a checkpoint written by ``python -m validation train`` (read by
   :func:`validation.train.load_checkpoint`: architecture, options and epoch from the file), a
   plain ``torch.save`` file (a state_dict, or a dict holding one under ``state_dict`` /
   ``model_state_dict`` / ``model``, with an optional ``epoch``) for a model built from
   ``--model`` / ``--width``, or a short deterministic SGD run from a seeded initialisation
   (:func:`train_briefly`), so that the weights are not at initialisation;
3. operators (:mod:`nnhessian.operators`): ``H_emp`` over all N samples, and for each batch size B
   one fixed batch drawn without replacement, ``H_B`` and the noise ``N_B = H_B - H_emp`` at the
   same weights; with ``--batch-draws K`` (default 1) K independent batches per B (draw d from
   the stream keyed by (B, d); draw 0 is the batch of K = 1), each drawn without replacement;
4. spectra: stochastic Lanczos quadrature (SLQ; ``steps`` = m = 100 as in the paper, section 4,
   ``probes`` independent starts) of ``H_emp``, every ``H_B`` and every ``N_B`` of draw 0; raw
   Ritz values and Gauss weights are kept (``ritz.csv``). Draws 1..K-1 get only the extremes of
   their ``H_B``: one Lanczos run of ``steps`` steps from one probe each. ``batch_draws.csv``
   holds the extremes of every draw (draw 0: the best over its probes). The noise matrix,
   assumption 3, the densities and the dense exact check use draw 0 only;
5. sigma^2 (paper eq. 9, 1/N convention, :mod:`nnhessian.sigma2`): the per-sample estimator
   (drives every prediction), the cheap partition estimator and the two-disjoint-batch estimator,
   each with a t confidence interval over its probes, at the smallest B with ``2 B <= N``;
6. theory per B, with ``t = P f(N, B) sigma^2`` (``rmt.theory.noise_scale``; ``f`` the exact
   finite-population factor (N - B)/(B(N - 1)) by default, ``--factor paper`` for (N - B)/(BN)):

   * Theorem 2 (``rmt.theory.theorem2``, regime-aware) for lambda_max and lambda_min of H_B from
     the Lanczos extremes of H_emp, against the measured value: the extreme of draw 0 (K = 1),
     else the mean over the K draws;
   * the free-probability refinement: the extreme eigenvalue of H_B as an outlier
     ``theta + t G_mu(theta)`` of the rest ``mu`` of the full-data SLQ measure, or the edge of the
     support of ``mu boxplus semicircle(t)`` when absorbed (``rmt.freeconv``);
   * the batch density: ``(full-data SLQ measure) boxplus semicircle(t)`` against the measured
     batch SLQ measure, by the Wasserstein-1 distance (exact for the piecewise-linear CDF of the
     tabulated density, :func:`wasserstein1_measure_to_density`);
   * the noise matrix against the paper's assumption 3 (GOE): its Lanczos edges against
     ``+-2 sqrt(t)``, the asymmetry ``(lambda_max + lambda_min) / (lambda_max - lambda_min)``
     (GOE: 0), and the standardised third and fourth central moments of its SLQ measure
     (semicircle: 0 and 2);
   * the identity behind t, whatever the noise law: ``E tr(N_B^2)/P = t`` over batches (with
     the exact factor); with K > 1 the mean of tr(N_B^2)/P over the draws against t
     (:func:`noise_checks`);
   * with ``--batch-draws K > 1``, the spread of the extreme eigenvalues over the K batches
     against the theory's sd of one draw (chi-square test, :func:`spread_row`);
   * the batch-size sweep: lambda_max(B) (the mean over draws when K > 1, ``sweep.csv`` then
     also holding ``measured_*_draw_se``, the standard error over draws, and ``batch_draws``)
     against the edge law ``c sqrt(f)`` (~ B^(-1/2)) and the outlier law ``theta + c f``
     (saturates at theta as B grows), least squares over B;

7. exact check (small models, ``P <= EXACT_MAX_P``): dense Hessians of the full data and of each
   batch from ``torch.func.jacrev(jacrev(loss))`` -- a code path independent of the HVP engine --
   and their eigenvalues (``torch.linalg.eigvalsh``); the Lanczos extremes and the SLQ measures
   of H_emp, H_B and N_B are compared with them.

Uncertainties (one standard error, combined in quadrature): the sigma^2 standard error
propagated to t (t is linear in sigma^2) and through each prediction's derivative; the spread of
the extreme Ritz values across SLQ probes (standard error) or the Lanczos residual, whichever is
larger (K > 1: the mean of that over the draws, a one-probe draw counting its residual); and the
batch-draw fluctuation: with K = 1 the theory's own fluctuation of one batch draw (Gaussian
outlier, ``rmt.theory.outlier_sd``; Tracy-Widom edge, ``TW1_SD sqrt(t) P^(-2/3)``), with K > 1
the larger of that divided by sqrt(K) (the fluctuation of a K-draw mean) and the measured
standard error of lambda over the K draws (two estimates of one spread: the larger, not their
sum). In ``sweep.csv`` ``measured_*_se`` is the measurement's term, with K > 1 combined with the
standard error over draws. Density comparisons
use the SLQ resolution of a measure (:func:`slq_resolution`, split-half W1 of the probes) as
their reference scale. A row "agrees" when ``|measured - predicted| <= z_crit * uncertainty``.

Running the paper's experiment (section 4):

* epochs (the paper's Figures 3-4): ``--checkpoints DIR`` takes the output folder of
  ``python -m validation train`` and measures every saved epoch (``--epochs`` chooses some) into
  ``<out>/epoch_EEEE/`` (each a complete result folder of this command, written atomically; a
  folder already holding the same configuration is reused, so an interrupted sweep resumes),
  then ``<out>/epochs.csv`` (one row per epoch and B: sigma^2 of every estimator with its
  interval, lambda_max / lambda_min of H_emp, and of H_B measured and predicted) and
  ``<out>/epochs.png`` (sigma^2 and the extreme eigenvalues against the epoch);
* resumable runs: ``--state-dir DIR`` gives every stage its own state directory
  (``sigma2-per-sample``, ``sigma2-partition``, ``sigma2-two-batch``, ``slq-full``,
  ``slq-batch-B``, ``slq-noise-B``, with K > 1 ``slq-batch-B-draw-D`` for D = 1..K-1; weights
  trained on the spot in ``trained-weights.pt``; one ``epoch_EEEE/`` level more in a sweep)
  where :func:`nnhessian.slq` and the sigma^2 estimators save their progress every
  ``--save-every`` Lanczos steps / every probe (:mod:`nnhessian.checkpoint`). The same command
  started again after a kill resumes, with Ritz values bit-identical to an uninterrupted run on
  the CPU; a state of another configuration or an unreadable one is refused (one line);
* torch.distributed: launched by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set), every process
  loads the same data and weights, the full-data Hessian-vector products (and the per-sample and
  partition sigma^2 passes) are sharded over the processes (:func:`nnhessian.distributed.
  sharded_full_operator`; gloo on the CPU, NCCL on GPUs, one GPU per process), the Lanczos vectors
  are identical on every rank (every rank draws the same K batches per B from the same seeded
  streams), and only rank 0 writes state and results and prints. The results
  equal a single-process run's up to the order of the final summation (float64 round-off). The
  dense exact check runs on rank 0 alone (it holds no collective operation); weights trained on
  the spot are broadcast from rank 0.

The top level imports neither torch nor matplotlib (``python -m validation --help`` stays fast).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from reports.schema import tidy_frame, verdict_from_z
from rmt import theory
from validation.errors import UsageError

EXACT_MAX_P = 4_000  # dense P x P eigendecomposition: ~1 s at P = 2,410 on one core
DTYPES = ("float64", "float32")
POLICIES = ("eval", "batch-stats")
EXACT_CHOICES = ("auto", "yes", "no")
SIGMA2_ESTIMATORS = ("per-sample", "partition", "two-batch")
OPERATORS = ("full", "batch", "noise")  # values of ritz.csv's "operator" column
DENSITY_CURVES = (  # values of density.csv's "curve" column
    "full",
    "batch measured",
    "batch predicted",
    "noise measured",
    "noise semicircle",
)
DENSITY_POINTS = 2001  # grid points of density.csv and of the W1 integrals (per B)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# Lanczos steps between state saves with --state-dir (nnhessian.checkpoint.DEFAULT_SAVE_EVERY: at
# m = 100 a kill loses at most 10 products); sigma^2 estimators save after every probe.
DEFAULT_SAVE_EVERY = 10
TRAINED_WEIGHTS = "trained-weights.pt"  # weights trained on the spot, in --state-dir
TRAINED_FORMAT = "minibatch-rmt/network-trained-weights-1"
EPOCH_FOLDER = "epoch_{:04d}"  # per-epoch result and state folders of a --checkpoints sweep

# Independent random streams: SeedSequence(seed, spawn_key=(index of the stream, *key)).
STREAMS = (
    "init",
    "train",
    "sigma2 per-sample",
    "sigma2 partition",
    "sigma2 two-batch",
    "slq full",
    "batch draw",
    "slq batch",
    "slq noise",
    "noise m2",  # appended: earlier streams keep their index, so their draws are unchanged
)


# ---------------------------------------------------------------------------------------------
# data sets: the hook for more (cifar100 reads --data-dir)
# ---------------------------------------------------------------------------------------------


def _load_digits(*, data_dir, dtype, download=False, limit=None):
    """scikit-learn's digits (ships inside the package, offline): (1797, 1, 8, 8), 10 classes."""
    from nnhessian import load_digits

    return load_digits(images=True, dtype=dtype)


def _load_cifar100(*, data_dir, dtype, download=False, limit=None):
    """The CIFAR-100 training split from ``data_dir`` (:func:`nnhessian.cifar.load_cifar100`):
    (50,000, 3, 32, 32) normalised with the training-set statistics, file order, no augmentation,
    the first ``limit`` images; 100 classes. Missing or corrupt files: one-line ``UsageError``."""
    from nnhessian.cifar import CifarDataError, load_cifar100

    try:
        return load_cifar100(data_dir, split="train", download=download, limit=limit, dtype=dtype)
    except CifarDataError as err:
        raise UsageError(_flat(err)) from None


# name -> loader(*, data_dir, dtype, download, limit) -> nnhessian.InMemoryDataset with
# ``num_classes`` set; ``limit`` (the first n samples) may be ignored (load_data cuts). Images keep
# their natural shape (N, C, H, W); the MLP flattens its input.
DATA_LOADERS = {"digits": _load_digits, "cifar100": _load_cifar100}
# --data-dir when none is given (as ``python -m validation train``); digits needs none.
DEFAULT_DATA_DIR = {"cifar100": "data"}


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkConfig:
    """A network run. Defaults finish in about a minute on 2 CPU cores (MLP on digits)."""

    model: str = "mlp"  # nnhessian.models.build name
    data: str = "digits"  # a key of DATA_LOADERS
    data_dir: str | None = None  # passed to the data loader (digits ignores it)
    samples: int | None = None  # N: the first n samples of the data set (None: all)
    width: int | None = None  # MLP hidden width / CNN channels (None: the model's default)
    checkpoint: str | None = None  # torch.save file with the weights; None: train briefly
    train_epochs: int = 5  # SGD epochs when no checkpoint is given (0: weights at init)
    train_batch: int = 64
    train_lr: float = 0.05
    train_momentum: float = 0.9
    batch_sizes: tuple[int, ...] = (32, 64, 128, 256)
    # K independent batches per B: the spread of lambda_max(B) over batches (variance ~ 1/K of
    # the mean); 1 keeps the single batch of earlier versions (draw 0 of every K)
    batch_draws: int = 1
    steps: int = 100  # Lanczos steps m, as in the paper, section 4 (capped at P)
    probes: int = 5  # SLQ probes per operator (variance of densities and moments ~ 1/probes)
    sigma2_probes: int = 5  # Hutchinson probes per sigma^2 estimator (>= 2 for an interval)
    seed: int = 0  # root of every random stream (STREAMS)
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    dtype: str = "float64"  # float64 for validation; float32 for speed
    policy: str = "eval"  # BatchNorm/dropout policy (nnhessian.operators)
    factor: str = "exact"  # finite-population factor of t: exact (N-B)/(B(N-1)) or paper
    z_crit: float = 4.0  # |z| above this is "disagrees" (two-sided Gaussian tail 6e-5)
    exact: str = "auto"  # dense exact check: auto (P <= EXACT_MAX_P), yes, no
    hvp_batch: int = 2048  # samples per chunk of a full-data pass (memory; not the Hessian)
    # GiB for gradient graphs kept across HVPs (nnhessian.operators, "Graph cache"; 0: none):
    # speed only, the products are bit-identical at any budget
    graph_cache_gb: float = 2.0
    # CPU intra-op threads set by the command line (0: torch's default). The default model's
    # products are too small to gain from threads, and on a shared 2-core machine spin-waiting
    # OpenMP threads made the default run 5x slower (5.4 min with 2 threads, 1 min with 1).
    threads: int = 1

    def __post_init__(self):
        validate(self)


def validate(config: NetworkConfig) -> None:
    """Raise ``UsageError`` with one line naming what is wrong and what is accepted."""
    c = config
    if c.data not in DATA_LOADERS:
        raise UsageError(f"unknown data set {c.data!r}; accepted: {', '.join(DATA_LOADERS)}")
    if c.data in DEFAULT_DATA_DIR and c.data_dir is None:
        raise UsageError(
            f"--data {c.data} is read from --data-dir DIR (the folder holding "
            "cifar-100-python/); add --download to fetch it there"
        )
    if not c.batch_sizes:
        raise UsageError("--batch-sizes needs at least one batch size")
    for B in c.batch_sizes:
        if B <= 0:
            raise UsageError(f"--batch-sizes: B must be >= 1 (a batch holds samples), got {B}")
    repeated = sorted({B for B in c.batch_sizes if c.batch_sizes.count(B) > 1})
    if repeated:
        raise UsageError(
            f"--batch-sizes: {', '.join(map(str, repeated))} given more than once; each B is one "
            "point of the sweep (--batch-draws K gives K batches per B)"
        )
    if c.batch_draws < 1:
        raise UsageError(
            f"--batch-draws must be >= 1 (independent batches per B), got {c.batch_draws}"
        )
    if c.steps < 1:
        raise UsageError(f"--steps must be >= 1 (Lanczos steps), got {c.steps}")
    if c.probes < 1:
        raise UsageError(f"--probes must be >= 1 (SLQ starting vectors), got {c.probes}")
    if c.sigma2_probes < 2:
        raise UsageError(
            f"--sigma2-probes must be >= 2 (a confidence interval needs two), got {c.sigma2_probes}"
        )
    if c.train_epochs < 0:
        raise UsageError(f"--train-epochs must be >= 0, got {c.train_epochs}")
    if c.train_batch < 1 or not (math.isfinite(c.train_lr) and c.train_lr > 0):
        raise UsageError("training needs a batch size >= 1 and a positive learning rate")
    if c.samples is not None and c.samples < 2:
        raise UsageError(f"--samples must be >= 2, got {c.samples}")
    if c.width is not None and c.width < 1:
        raise UsageError(f"--width must be >= 1, got {c.width}")
    if c.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0: torch's default), got {c.threads}")
    if c.hvp_batch < 1:
        raise UsageError(f"--hvp-batch must be >= 1, got {c.hvp_batch}")
    if not (math.isfinite(c.graph_cache_gb) and c.graph_cache_gb >= 0):
        raise UsageError(
            f"--graph-cache-gb must be a number >= 0 (GiB; 0 keeps no graphs), got "
            f"{c.graph_cache_gb}"
        )
    if not _DEVICE.match(c.device):
        raise UsageError(f"unknown device {c.device!r}; accepted: auto, cpu, cuda, cuda:N")
    if c.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {c.dtype!r}; accepted: {', '.join(DTYPES)}")
    if c.policy not in POLICIES:
        raise UsageError(f"unknown policy {c.policy!r}; accepted: {', '.join(POLICIES)}")
    if c.factor not in theory.FACTORS:
        raise UsageError(f"unknown factor {c.factor!r}; accepted: {', '.join(theory.FACTORS)}")
    if c.exact not in EXACT_CHOICES:
        raise UsageError(f"unknown --exact {c.exact!r}; accepted: {', '.join(EXACT_CHOICES)}")
    if not (math.isfinite(c.z_crit) and c.z_crit > 0):
        raise UsageError(f"--z-crit must be a positive number, got {c.z_crit}")
    if c.checkpoint is not None and not Path(c.checkpoint).is_file():
        raise UsageError(f"checkpoint {c.checkpoint} not found (expected a file from torch.save)")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spectrum:
    """SLQ of one operator, and its exact eigenvalues when the dense check ran."""

    operator: str  # "full", "batch" or "noise"
    B: int | None  # batch size (None for full)
    nodes: np.ndarray  # (probes, steps) Ritz values, ascending, NaN-padded after a breakdown
    weights: np.ndarray  # (probes, steps) Gauss weights (squared first components), 0-padded
    residuals: np.ndarray  # (probes, steps) Lanczos residual estimates, NaN-padded
    exact: np.ndarray | None  # (P,) eigenvalues of the dense matrix, ascending

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """The SLQ measure: all probes' nodes with weights / probes (total mass 1)."""
        keep = self.weights > 0
        return self.nodes[keep], self.weights[keep] / self.nodes.shape[0]

    def extreme(self, side: str) -> tuple[float, float, float]:
        """(best estimate over probes, standard error across probes, its residual).

        The best estimate of lambda_max is the largest top Ritz value (each is a lower bound by
        Cauchy interlacing); of lambda_min the smallest bottom one.
        """
        per_probe, resid = [], []
        for nodes, res in zip(self.nodes, self.residuals, strict=True):
            k = np.flatnonzero(np.isfinite(nodes))  # NaN pads a run that broke down early
            j = k[-1] if side == "max" else k[0]
            per_probe.append(nodes[j])
            resid.append(res[j])
        per_probe, resid = np.array(per_probe), np.array(resid)
        i = int(np.argmax(per_probe) if side == "max" else np.argmin(per_probe))
        n = per_probe.size
        se = float(per_probe.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return float(per_probe[i]), se, float(resid[i])


@dataclass(frozen=True)
class NetworkResult:
    config: NetworkConfig
    P: int
    N: int
    steps: int  # Lanczos steps used (config.steps capped at P)
    epoch: int | None  # from the checkpoint, else None
    training: dict | None  # the on-the-spot training run (None with a checkpoint)
    device: str
    hvp_method: str  # HVP implementation the operators resolved to
    graph_cache: dict  # nnhessian.GraphCacheInfo of the operators at the end, as a dict
    sigma2: dict  # estimator name -> nnhessian.Sigma2Estimate
    sigma2_batch: int | None  # B used by the partition and two-batch estimators
    full: Spectrum
    batches: dict  # B -> Spectrum of H_B
    noises: dict  # B -> Spectrum of N_B
    batch_indices: dict  # B -> (B,) sample indices of the fixed batch (draw 0)
    notes: tuple[str, ...]
    timings: dict  # seconds per stage
    weights: dict = field(default_factory=dict)  # where the weights came from (kind, path, ...)
    data_identity: dict = field(default_factory=dict)  # N, input shape, classes, SHA-256 of X, y
    world_size: int = 1  # torch.distributed processes that shared the full-data passes
    backend: str | None = None  # their backend (gloo, nccl), None for one process
    state_dir: str | None = None  # --state-dir of a resumable run
    # --batch-draws K > 1: B -> the extra draws 1..K-1, each a Spectrum of its H_B (one probe)
    extra_batches: dict = field(default_factory=dict)
    extra_indices: dict = field(default_factory=dict)  # B -> [(B,) indices of draws 1..K-1]
    # B -> draws 1..K-1, each a (probes,) array of ||N_B q||^2 (lanczos.second_moments)
    extra_noise_m2: dict = field(default_factory=dict)

    def draw_extremes(self, B: int, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(K,) Lanczos extremes of H_B over the K draws (draw 0: the best over its SLQ probes)
        and (K,) their measurement uncertainties (draw 0: probe standard error or residual,
        the larger; the extra draws: their residual)."""
        value, se, res = self.batches[B].extreme(side)
        values, errors = [value], [max(v for v in (se, res, 0.0) if np.isfinite(v))]
        for spec in self.extra_batches.get(B, ()):
            value, _, res = spec.extreme(side)
            values.append(value)
            errors.append(max(v for v in (res, 0.0) if np.isfinite(v)))
        return np.array(values), np.array(errors)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def _generator(seed: int, stream: str, *key: int):
    """A torch.Generator for one named stream (and key, e.g. the batch size)."""
    import torch

    ss = np.random.SeedSequence(seed, spawn_key=(STREAMS.index(stream), *key))
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))


def _one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flat(err: BaseException) -> str:
    """The whole message of ``err`` on one line."""
    return " ".join(str(err).split()) or type(err).__name__


def resolve_device(name: str):
    """``auto`` -> CUDA when available else CPU; bad or absent devices are a ``UsageError``."""
    from nnhessian import resolve_device as _resolve

    try:
        return _resolve(None if name == "auto" else name)
    except ValueError as err:
        raise UsageError(f"--device {name}: {_one_line(err)}") from None


def load_data(config: NetworkConfig, *, download: bool = False):
    """The data set of ``config`` (first ``samples`` samples), in float64 on the CPU."""
    import torch

    data = DATA_LOADERS[config.data](
        data_dir=config.data_dir, dtype=torch.float64, download=download, limit=config.samples
    )
    if config.samples is not None:
        if config.samples > len(data):
            raise UsageError(
                f"--samples {config.samples} exceeds the {len(data):,} samples of {config.data}"
            )
        data = data.subset(torch.arange(config.samples))
    N = len(data)
    for B in config.batch_sizes:
        if B > N:
            raise UsageError(
                f"--batch-sizes: B = {B} exceeds the data set size N = {N:,} "
                "(a batch is drawn without replacement, so 1 <= B <= N)"
            )
    if data.num_classes is None:
        data = type(data)(data.X, data.y, int(data.y.max()) + 1)
    return data


def data_identity(data, name: str) -> dict:
    """What identifies the measured data: name, N, input shape, classes, and the SHA-256 of the
    float64 features and labels (``nnhessian.checkpoint.tensor_sha256``), for provenance."""
    from nnhessian.checkpoint import tensor_sha256

    digest = hashlib.sha256((tensor_sha256(data.X) + tensor_sha256(data.y)).encode())
    return {
        "name": name,
        "N": len(data),
        "input_shape": [int(s) for s in data.X.shape[1:]],
        "num_classes": int(data.num_classes),
        "sha256": digest.hexdigest(),
    }


def build_model(config: NetworkConfig, data):
    """``nnhessian.models.build`` with the input geometry of ``data`` and a seeded init."""
    from nnhessian import models

    X = data.X
    shape = tuple(int(s) for s in X.shape[1:])
    need = models.INPUT_SHAPES.get(config.model)
    if need is not None and shape != need:
        raise UsageError(
            f"model {config.model!r} does not fit data {config.data!r}: it needs "
            f"{'x'.join(map(str, need))} images (--data cifar100), the data are "
            f"{'x'.join(map(str, shape))}; use mlp, cnn or cnn_bn for them"
        )
    if need is not None and config.width is not None:
        raise UsageError(
            f"--width applies to mlp, cnn and cnn_bn; {config.model} has the paper's fixed widths"
        )
    options = {}
    if config.model == "mlp":
        options["in_features"] = int(X[0].numel())
        if config.width is not None:
            options["hidden"] = (config.width,)
    elif config.model in ("cnn", "cnn_bn") and X.ndim == 4:
        options.update(in_channels=int(X.shape[1]), image_size=int(X.shape[-1]))
        if config.width is not None:
            options["width"] = config.width
    elif config.width is not None:
        options["width"] = config.width
    try:
        return models.build(
            config.model,
            data.num_classes,
            generator=_generator(config.seed, "init"),
            **options,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(f"--model {config.model}: {_one_line(err)}") from None


def _read_torch_file(path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same usage error
        raise UsageError(
            f"checkpoint {path} is not a readable torch.save file ({type(err).__name__}: "
            f"{_one_line(err, 120)})"
        ) from None


def peek_training_checkpoint(path) -> dict | None:
    """The payload of a ``python -m validation train`` checkpoint, memory-mapped (tensors are
    read only when touched), or None when ``path`` is something else or unreadable (the full
    read then says why)."""
    import torch

    from validation.train import CHECKPOINT_FORMAT

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a (zip-format) torch file: not ours to judge here
        return None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    return None


def load_checkpoint(model, path, obj=None) -> int | None:
    """Load a plain ``torch.save`` file (a state_dict, or a dict holding one) into ``model``;
    return its epoch (None when not recorded). ``obj``: the file's content when already read."""
    import torch

    if obj is None:
        obj = _read_torch_file(path)
    epoch = None
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                epoch = obj.get("epoch")
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(
            f"checkpoint {path} holds no state_dict (expected a dict of tensors, or a dict with "
            "one under 'state_dict', 'model_state_dict' or 'model')"
        )
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise UsageError(
            f"checkpoint {path} does not fit model {type(model).__name__}: {_one_line(err)}"
        ) from None
    if isinstance(epoch, torch.Tensor):
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, int | float) and math.isfinite(epoch) else None


def load_weights(config: NetworkConfig, data):
    """The model of ``config`` at its weights: ``(model, epoch, weights)`` on the CPU.

    * a training checkpoint (``python -m validation train``): architecture, constructor options
      and epoch from the file via :func:`validation.train.load_checkpoint`, which refuses another
      architecture than ``--model`` and another class count than the data's (one line);
    * any other ``torch.save`` file: a state_dict for the model built from ``--model`` /
      ``--width`` (:func:`load_checkpoint`);
    * no checkpoint: the seeded initialisation (trained later by :func:`train_briefly`).

    ``weights`` describes the source for ``results.json``.
    """
    if config.checkpoint is None:
        model = build_model(config, data)
        return model, None, {"kind": "trained on the spot", "init_seed": config.seed}
    if peek_training_checkpoint(config.checkpoint) is not None:
        from validation import train

        if config.width is not None:
            raise UsageError(
                f"--width does not apply to checkpoint {config.checkpoint}: a training "
                "checkpoint fixes the architecture; leave --width out"
            )
        model, epoch, meta = train.load_checkpoint(
            config.checkpoint, config.model, data.num_classes, device="cpu"
        )
        return (
            model,
            epoch,
            {
                "kind": "training checkpoint",
                "path": str(config.checkpoint),
                "model_options": meta["model_options"],
                "trained_on": meta["data"],
                "train_seed": meta["seed"],
                "train_config": meta["config"],
            },
        )
    obj = _read_torch_file(config.checkpoint)
    model = build_model(config, data)
    epoch = load_checkpoint(model, config.checkpoint, obj)
    return model, epoch, {"kind": "state_dict", "path": str(config.checkpoint)}


def check_finite_weights(model) -> None:
    import torch

    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UsageError(
                f"the weights contain NaN or inf (in {name}); the Hessian is undefined there"
            )


def check_model_fits_data(model, data, config: NetworkConfig) -> None:
    """One forward pass on two samples: the model must accept the inputs and give the classes."""
    import torch

    X = data.X[:2]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(X)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise UsageError(
            f"model {config.model!r} does not fit data {config.data!r} (inputs of shape "
            f"{tuple(data.X.shape[1:])}, {data.num_classes} classes): {_one_line(err, 160)}"
        ) from None
    finally:
        for m, flag in flags:
            m.training = flag
    if tuple(out.shape) != (2, data.num_classes):
        raise UsageError(
            f"model {config.model!r} does not fit data {config.data!r}: it outputs shape "
            f"{tuple(out.shape[1:])} per sample, the data has {data.num_classes} classes"
        )


def mean_loss(model, data, *, chunk: int) -> float:
    """Cross-entropy over all samples in eval mode (the loss whose Hessian is measured)."""
    import torch
    import torch.nn.functional as F

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, len(data), chunk):
                X, y = data.X[s : s + chunk], data.y[s : s + chunk]
                total += float(F.cross_entropy(model(X), y, reduction="sum"))
    finally:
        for m, flag in flags:
            m.training = flag
    return total / len(data)


def train_briefly(model, data, config: NetworkConfig) -> dict:
    """Deterministic SGD with momentum: ``train_epochs`` passes over seeded permutations.

    A short schedule that moves the weights off their initialisation (the paper trains for
    hundreds of epochs; here the point is a realistic non-random point in weight space). The
    model is trained in its train mode (BatchNorm on batch statistics) and left in eval mode.
    """
    import torch
    import torch.nn.functional as F

    g = _generator(config.seed, "train")
    N = len(data)
    before = mean_loss(model, data, chunk=config.hvp_batch)
    opt = torch.optim.SGD(model.parameters(), lr=config.train_lr, momentum=config.train_momentum)
    model.train()
    steps = 0
    for _ in range(config.train_epochs):
        perm = torch.randperm(N, generator=g).to(data.X.device)
        for s in range(0, N, config.train_batch):
            idx = perm[s : s + config.train_batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.X[idx]), data.y[idx]).backward()
            opt.step()
            steps += 1
    model.eval()
    chunk = config.hvp_batch
    after = mean_loss(model, data, chunk=chunk)
    with torch.no_grad():
        correct = sum(
            int((model(data.X[s : s + chunk]).argmax(1) == data.y[s : s + chunk]).sum())
            for s in range(0, N, chunk)
        )
    return {
        "epochs": config.train_epochs,
        "sgd_steps": steps,
        "batch_size": config.train_batch,
        "lr": config.train_lr,
        "momentum": config.train_momentum,
        "loss_at_init": before,
        "loss_after": after,
        "train_accuracy_after": correct / N,
    }


def _agree(sharding, message: str | None) -> None:
    """Raise ``UsageError(message)`` -- rank 0's message, on every rank -- when rank 0 found a
    problem only it can see (its files); one broadcast, so every rank must call this."""
    if sharding is not None:
        message = sharding.broadcast_object(message)
    if message:
        raise UsageError(message)


def _is_main(sharding) -> bool:
    return sharding is None or sharding.rank == 0


def prepare_state_dir(state_dir, sharding=None) -> None:
    """Create ``state_dir`` (rank 0); a path that cannot be a folder is a ``UsageError``."""
    message = None
    if state_dir is not None and _is_main(sharding):
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            message = f"--state-dir {state_dir} exists and is not a folder"
        except OSError as err:
            message = f"--state-dir {state_dir}: cannot create the folder ({err.strerror or err})"
    _agree(sharding, message)


def _model_digest(model) -> str:
    from nnhessian.checkpoint import tensor_sha256

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_sha256(t).encode())
    return h.hexdigest()


def weights_on_the_spot(model, data, config: NetworkConfig, *, state_dir, sharding, data_sha256):
    """:func:`train_briefly` -- or, with ``state_dir``, the weights an earlier run of the same
    configuration trained and saved there (``trained-weights.pt``) -- the same on every rank.

    Saving them makes a killed run resumable where training is not bitwise reproducible (GPU
    kernels): the saved Lanczos and sigma^2 states are only valid for the same weights. The file
    is keyed by the initial weights, the data and the training settings; another key is a
    ``UsageError``. With several processes rank 0 reads / writes the file and broadcasts the
    trained weights (parameters and buffers) and the training record. Returns the record.
    """
    import torch

    from nnhessian.checkpoint import atomic_save

    main = _is_main(sharding)
    key = {
        "initial_weights_sha256": _model_digest(model),
        "data_sha256": data_sha256,
        "train_epochs": config.train_epochs,
        "train_batch": config.train_batch,
        "train_lr": config.train_lr,
        "train_momentum": config.train_momentum,
        "seed": config.seed,
        "dtype": config.dtype,
    }
    path = Path(state_dir) / TRAINED_WEIGHTS if state_dir is not None else None
    message, saved = None, None
    if main and path is not None and path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file
            message = (
                f"--state-dir: {path} cannot be read ({type(err).__name__}); delete {state_dir} "
                "to start afresh"
            )
        else:
            if not (isinstance(saved, dict) and saved.get("format") == TRAINED_FORMAT):
                message = (
                    f"--state-dir: {path} is not a file of trained weights of this command; "
                    f"delete {state_dir} to start afresh"
                )
            elif saved["key"] != key:
                differ = sorted(k for k in key if saved["key"].get(k) != key[k])
                message = (
                    f"--state-dir: the weights trained in {state_dir} belong to another run "
                    f"configuration ({', '.join(differ)} differ): use another state directory, "
                    "or delete this one to start afresh"
                )
    _agree(sharding, message)
    found = saved is not None
    if sharding is not None:
        found = sharding.broadcast_object(found)
    training = None
    if found:
        if main:
            model.load_state_dict(saved["state"], strict=True)
            training = dict(saved["training"], resumed_from=str(path))
        model.eval()
    else:
        training = train_briefly(model, data, config)
        if main and path is not None:
            state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
            atomic_save(
                {"format": TRAINED_FORMAT, "key": key, "state": state, "training": training}, path
            )
    if sharding is not None:  # rank 0's weights everywhere (GPU training may differ by rank)
        with torch.no_grad():
            for t in model.state_dict().values():
                sharding.broadcast_(t)
        training = sharding.broadcast_object(training)
    return training


def dense_hessian(model, data, indices=None, *, chunk: int = 256, vectors: int = 64):
    """Dense Hessian of the mean cross-entropy over ``data`` (or the samples ``indices``).

    ``torch.func.jacrev(jacrev(loss))`` of the loss as a function of the flat trainable
    parameters (``named_parameters`` order, as the HVP operators), evaluated in eval mode in the
    model's dtype and device, summed over chunks of ``chunk`` samples with weight n_chunk / n, the
    Jacobian vmapped over ``vectors`` basis vectors at a time. Independent of nnhessian's HVPs.
    """
    import torch
    import torch.nn.functional as F

    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    names = [k for k, _ in named]
    shapes = [p.shape for _, p in named]
    numels = [p.numel() for _, p in named]
    consts = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    consts.update({k: b.detach() for k, b in model.named_buffers()})
    w = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(flat, X, y):
        parts = torch.split(flat, numels)
        params = {k: t.view(s) for k, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, (params, consts), (X,)), y)

    hess = torch.func.jacrev(torch.func.jacrev(loss), chunk_size=vectors)
    X, y = data.X, data.y
    if indices is not None:
        idx = torch.as_tensor(indices, device=X.device)
        X, y = X[idx], y[idx]
    n = X.shape[0]
    H = torch.zeros(w.numel(), w.numel(), dtype=w.dtype, device=w.device)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for s in range(0, n, chunk):
            Xc, yc = X[s : s + chunk], y[s : s + chunk]
            H += hess(w, Xc, yc) * (Xc.shape[0] / n)
    finally:
        for m, flag in flags:
            m.training = flag
    return 0.5 * (H + H.T)


def _eigvalsh(H) -> np.ndarray:
    import torch

    return torch.linalg.eigvalsh(H).cpu().numpy().astype(np.float64)


def _spectrum(operator, B, result, exact=None) -> Spectrum:
    return Spectrum(
        operator=operator,
        B=B,
        nodes=result.ritz_values,
        weights=result.weights,
        residuals=result.residuals,
        exact=exact,
    )


def run_network(
    config: NetworkConfig,
    *,
    progress=None,
    context=None,
    state_dir=None,
    save_every: int = DEFAULT_SAVE_EVERY,
    download: bool = False,
) -> NetworkResult:
    """Every stage of the module docstring; ``progress(stage, done, total)`` as work proceeds.

    ``context``: a :class:`nnhessian.distributed.DistContext` (None or one process: the plain
    operators). With several processes every rank calls this with the same arguments and makes
    the same collective calls in the same order (weights broadcast after on-the-spot training,
    the sharded operator's checks and products, Lanczos broadcasts, state loading); the dense
    exact check, which holds none, runs on rank 0 only, whose result is the one to write.
    ``state_dir``: resumable stages (module docstring), ``save_every`` Lanczos steps between
    saves. ``download``: let the CIFAR-100 loader fetch missing files.

    Raises ``UsageError`` (before any output exists) for bad input found on the way: an absent
    CUDA device, B > N, more processes than samples, a checkpoint that is unreadable or does not
    fit the model or the data, NaN/inf in the weights or the loss, a model that does not fit the
    data, a state directory of another configuration or an unreadable one.
    """
    import torch

    from nnhessian import HessianOperator, draw_batch_indices, second_moments, slq
    from nnhessian.checkpoint import StateCorruptError, StateMismatchError
    from nnhessian.operators import has_batchnorm
    from nnhessian.sigma2 import sigma2_partition, sigma2_per_sample, sigma2_two_batch

    progress = progress or (lambda *a: None)
    timings, notes = {}, []
    clock = time.perf_counter()
    world = context.world_size if context is not None else 1
    sharding = None
    if world > 1:
        from nnhessian.distributed import Sharding

        sharding = Sharding(context.rank, world)
        device = context.device
    else:
        device = resolve_device(config.device)
    main = _is_main(sharding)
    dtype = getattr(torch, config.dtype)
    data = load_data(config, download=download)
    N = len(data)
    sizes = sorted(set(config.batch_sizes))
    sigma2_batch = sizes[0] if N // sizes[0] >= 2 else None
    if world > N:
        raise UsageError(
            f"world size {world} exceeds the data set size N = {N:,}: every process needs at "
            f"least one sample; launch at most {N:,} processes"
        )
    if world > 1 and sigma2_batch is not None:
        parts = -(-N // sigma2_batch)  # the partition estimator's K batches and the left-over
        if world > parts:
            raise UsageError(
                f"world size {world} exceeds the {parts} batches the partition sigma^2 estimator "
                f"splits over the processes (N = {N:,}, B = {sigma2_batch}): launch at most "
                f"{parts} processes"
            )
    identity = data_identity(data, config.data)
    model, epoch, weights = load_weights(config, data)
    trained_on = weights.get("trained_on")
    if trained_on is not None and trained_on != config.data:
        notes.append(f"the checkpoint was trained on {trained_on}, measured here on {config.data}")
    if config.policy == "batch-stats" and has_batchnorm(model):
        raise UsageError(
            "--policy batch-stats with a BatchNorm model: the batch loss is not a mean of "
            "per-sample losses, so sigma^2 (paper eq. 9) is undefined; use --policy eval"
        )
    check_finite_weights(model)
    model = model.to(device=device, dtype=dtype)
    data = data.to(device, dtype)
    check_model_fits_data(model, data, config)
    prepare_state_dir(state_dir, sharding)
    training = None
    if config.checkpoint is None:
        training = weights_on_the_spot(
            model,
            data,
            config,
            state_dir=state_dir,
            sharding=sharding,
            data_sha256=identity["sha256"],
        )
        if config.train_epochs == 0:
            notes.append("--train-epochs 0: the Hessian is measured at the initial weights")
        check_finite_weights(model)
    loss = mean_loss(model, data, chunk=config.hvp_batch)
    if not math.isfinite(loss):
        raise UsageError(
            f"the loss at these weights is not finite ({loss}); the Hessian is undefined there"
        )
    timings["setup"] = time.perf_counter() - clock

    options = dict(
        batch_size=min(config.hvp_batch, N),
        policy=config.policy,
        dtype=dtype,
        device=device,
        graph_cache_bytes=int(config.graph_cache_gb * 2**30),
        progress=False,
    )
    if sharding is None:
        full_op = HessianOperator.full(model, data, **options)
    else:
        from nnhessian.distributed import sharded_full_operator

        try:
            full_op = sharded_full_operator(model, data, context=context, **options)
        except ValueError as err:
            raise UsageError(f"torch.distributed: {_flat(err)}") from None
    P = full_op.dim
    steps = min(config.steps, P)
    if steps < config.steps:
        notes.append(f"--steps {config.steps} capped at P = {P}: a Krylov space has <= P vectors")
    exact = config.exact == "yes" or (config.exact == "auto" and P <= EXACT_MAX_P)
    if config.exact == "yes" and P > EXACT_MAX_P:
        raise UsageError(f"--exact yes needs P <= {EXACT_MAX_P:,} (dense P x P), got P = {P:,}")
    if not exact:
        notes.append(f"no exact check (P = {P:,}; dense matrices only up to P = {EXACT_MAX_P:,})")
    dense = exact and main  # no collective inside: the other ranks skip it
    totals = {
        "sigma^2": len(SIGMA2_ESTIMATORS) if sigma2_batch is not None else 1,
        "SLQ": 1 + (1 + config.batch_draws) * len(sizes),
        "exact": (1 + len(sizes)) if dense else 0,
    }
    done = dict.fromkeys(totals, 0)

    def step(kind):
        done[kind] += 1
        progress(f"network {kind}", done[kind], totals[kind])

    def stage(name):
        """The state directory of one stage (None: not resumable)."""
        return None if state_dir is None else str(Path(state_dir) / name)

    def run_slq(op, stream, key, state, probes=config.probes):
        """SLQ of ``op``: `steps` steps from `probes` probes of the named stream, resumable."""
        return slq(
            op,
            steps,
            probes,
            generator=_generator(config.seed, stream, *key),
            progress=False,
            state_dir=stage(state),
            save_every=save_every,
        )

    try:
        clock = time.perf_counter()
        estimators = {"per-sample": (sigma2_per_sample, {})}
        if sigma2_batch is None:
            notes.append(f"partition and two-batch sigma^2 need 2 B <= N; smallest B = {sizes[0]}")
        else:
            batch = {"batch_size": sigma2_batch}
            estimators.update(
                {"partition": (sigma2_partition, batch), "two-batch": (sigma2_two_batch, batch)}
            )
        sigma2 = {}
        for name, (estimator, options) in estimators.items():
            sigma2[name] = estimator(
                full_op,
                **options,
                probes=config.sigma2_probes,
                generator=_generator(config.seed, f"sigma2 {name}"),
                progress=False,
                state_dir=stage(f"sigma2-{name}"),
            )
            step("sigma^2")
        timings["sigma2"] = time.perf_counter() - clock

        clock = time.perf_counter()
        full_slq = run_slq(full_op, "slq full", (), "slq-full")
        timings["slq"] = time.perf_counter() - clock
        step("SLQ")
        clock = time.perf_counter()
        H_full = dense_hessian(model, data) if dense else None
        full = _spectrum("full", None, full_slq, _eigvalsh(H_full) if dense else None)
        timings["exact"] = time.perf_counter() - clock
        if dense:
            step("exact")

        batches, noises, indices, extra_batches, extra_indices = {}, {}, {}, {}, {}
        extra_noise_m2 = {}
        for B in sizes:
            idx = draw_batch_indices(N, B, generator=_generator(config.seed, "batch draw", B))
            indices[B] = idx.numpy()
            clock = time.perf_counter()
            batch_slq = run_slq(full_op.batch_operator(idx), "slq batch", (B,), f"slq-batch-{B}")
            step("SLQ")
            noise_slq = run_slq(full_op.noise_operator(idx), "slq noise", (B,), f"slq-noise-{B}")
            timings["slq"] += time.perf_counter() - clock
            step("SLQ")
            clock = time.perf_counter()
            exact_batch = exact_noise = None
            if dense:
                H_batch = dense_hessian(model, data, idx)
                exact_batch = _eigvalsh(H_batch)
                exact_noise = _eigvalsh(H_batch - H_full)
                del H_batch
            batches[B] = _spectrum("batch", B, batch_slq, exact_batch)
            noises[B] = _spectrum("noise", B, noise_slq, exact_noise)
            timings["exact"] += time.perf_counter() - clock
            if dense:
                step("exact")
            if B == N:
                notes.append(f"B = N = {N}: the batch is the whole data set, the noise is zero")
            # draws 1..K-1: another batch each (streams keyed by (B, draw); draw 0 is the one
            # above), only the extremes of H_B (one Lanczos run of `steps` on one probe) and
            # tr(N_B^2)/P (`probes` products of N_B, the probes SLQ would start from)
            extra_batches[B], extra_indices[B], extra_noise_m2[B] = [], [], []
            for draw in range(1, config.batch_draws):
                generator = _generator(config.seed, "batch draw", B, draw)
                idx = draw_batch_indices(N, B, generator=generator)
                clock = time.perf_counter()
                draw_slq = run_slq(
                    full_op.batch_operator(idx),
                    "slq batch",
                    (B, draw),
                    f"slq-batch-{B}-draw-{draw}",
                    probes=1,
                )
                timings["slq"] += time.perf_counter() - clock
                step("SLQ")
                extra_batches[B].append(_spectrum("batch", B, draw_slq))
                extra_indices[B].append(idx.numpy())
                clock = time.perf_counter()
                extra_noise_m2[B].append(
                    second_moments(
                        full_op.noise_operator(idx, verify=False),
                        config.probes,
                        generator=_generator(config.seed, "noise m2", B, draw),
                    )
                )
                timings["noise_m2"] = timings.get("noise_m2", 0.0) + time.perf_counter() - clock
    except (StateMismatchError, StateCorruptError) as err:
        raise UsageError(f"--state-dir: {_flat(err)}") from None

    return NetworkResult(
        config=config,
        P=P,
        N=N,
        steps=steps,
        epoch=epoch,
        training=training,
        device=str(device),
        hvp_method=full_op.method,
        graph_cache=asdict(full_op.graph_cache),
        sigma2=sigma2,
        sigma2_batch=sigma2_batch,
        full=full,
        batches=batches,
        noises=noises,
        batch_indices=indices,
        notes=tuple(notes),
        timings=timings,
        weights=weights,
        data_identity=identity,
        world_size=world,
        backend=context.backend if world > 1 else None,
        state_dir=str(state_dir) if state_dir is not None else None,
        extra_batches={B: tuple(v) for B, v in extra_batches.items() if v},
        extra_indices={B: v for B, v in extra_indices.items() if v},
        extra_noise_m2={B: tuple(v) for B, v in extra_noise_m2.items() if v},
    )


# ---------------------------------------------------------------------------------------------
# comparisons: pure functions of the raw spectra and sigma^2
# ---------------------------------------------------------------------------------------------


def wasserstein1_measure_to_density(nodes, weights, grid, density) -> float:
    """W1 = int |F_mu - F| dx between a weighted discrete measure and a tabulated density.

    As :func:`validation.synthetic.wasserstein1_to_density` (which it reproduces for equal
    weights): F is the cumulative trapezoid rule of ``density`` (normalised), linear between grid
    points; the nodes are merged into the grid, F_mu is constant between merged points and
    ``|c - F|`` is integrated exactly on each piece, also where it changes sign.
    """
    order = np.argsort(nodes, kind="stable")
    x_mu = np.asarray(nodes, dtype=float)[order]
    w_mu = np.asarray(weights, dtype=float)[order]
    if x_mu[0] < grid[0] or x_mu[-1] > grid[-1]:
        raise ValueError("the grid must cover every node")
    cum = np.concatenate([[0.0], np.cumsum(w_mu) / w_mu.sum()])
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    x = np.union1d(grid, x_mu)
    F = np.interp(x, grid, cdf)
    level = cum[np.searchsorted(x_mu, x[:-1], side="right")]
    g0, g1 = level - F[:-1], level - F[1:]
    same_sign = g0 * g1 >= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = (g0**2 + g1**2) / (2.0 * (np.abs(g0) + np.abs(g1)))
    pieces = np.where(same_sign, 0.5 * (np.abs(g0) + np.abs(g1)), crossing)
    return float(np.sum(np.diff(x) * pieces))


def wasserstein1_discrete(x1, w1, x2, w2) -> float:
    """W1 = int |F_1 - F_2| dx between two weighted discrete measures (exact)."""
    x1, w1, x2, w2 = (np.asarray(a, dtype=float) for a in (x1, w1, x2, w2))
    x = np.union1d(x1, x2)

    def cdf(xs, ws):
        order = np.argsort(xs, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(ws[order]) / ws.sum()])
        return cum[np.searchsorted(xs[order], x[:-1], side="right")]

    return float(np.sum(np.abs(cdf(x1, w1) - cdf(x2, w2)) * np.diff(x)))


def slq_resolution(nodes, weights) -> float:
    """The W1 scale at which an SLQ measure resolves its operator's spectrum (NaN for 1 probe).

    Split the n probes into halves A (a = n // 2 probes) and B (the other b); each half's pooled
    measure deviates from the spectral measure by a probe average, whose size scales as
    1 / sqrt(probes), so ``W1(A, B) ~ e sqrt(n (1/a + 1/b))`` with ``e`` the deviation of the
    pooled n-probe measure. Returns the mean over all splits (at most 35) of
    ``W1(A, B) / sqrt(n (1/a + 1/b))``: Monte-Carlo and quadrature resolution together.
    """
    n = nodes.shape[0]
    if n < 2:
        return float("nan")
    a = n // 2
    scale = math.sqrt(n * (1.0 / a + 1.0 / (n - a)))
    values = []
    for half in itertools.islice(itertools.combinations(range(n), a), 35):
        rest = [p for p in range(n) if p not in half]
        parts = []
        for rows in (list(half), rest):
            keep = weights[rows] > 0
            parts += [nodes[rows][keep], weights[rows][keep]]
        values.append(wasserstein1_discrete(*parts) / scale)
    return float(np.mean(values))


def smoothing_width(spectra, steps: int) -> float:
    """Gaussian kernel width for densities: (spectral range) / steps.

    An m-node Gauss rule resolves features of width ~ range / m (Chebyshev-Markov-Stieltjes);
    smoothing at that width removes the spikes of single nodes without blurring beyond the
    quadrature's own resolution.
    """
    lo = min(np.nanmin(s.nodes) for s in spectra)
    hi = max(np.nanmax(s.nodes) for s in spectra)
    span = hi - lo
    return float(span / steps) if span > 0 else 1.0


def raw_moments(nodes, weights) -> np.ndarray:
    """(probes, 4): per-probe Gauss-quadrature estimates of tr(A^k) / P for k = 1..4 (exact for
    k <= 2m - 1; unbiased over probes)."""
    from nnhessian.lanczos import quadrature_moments

    return quadrature_moments(nodes, weights, [1, 2, 3, 4])


def shape_statistics(m: np.ndarray) -> tuple[float, float]:
    """(skewness, kurtosis) of the measure with raw moments ``m = (m1, m2, m3, m4)``."""
    m1, m2, m3, m4 = m
    k2 = m2 - m1**2
    k3 = m3 - 3 * m1 * m2 + 2 * m1**3
    k4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
    if k2 <= 0:
        return float("nan"), float("nan")
    return float(k3 / k2**1.5), float(k4 / k2**2)


def jackknife(per_probe: np.ndarray, statistic) -> tuple[float, float]:
    """``statistic`` of the probe mean and its jackknife standard error over probes."""
    n = per_probe.shape[0]
    value = np.asarray(statistic(per_probe.mean(axis=0)), dtype=float)
    if n < 2:
        return value, np.full(value.shape, np.nan)
    loo = np.array(
        [statistic(np.delete(per_probe, i, axis=0).mean(axis=0)) for i in range(n)], dtype=float
    )
    se = np.sqrt((n - 1) / n * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))
    return value, se


@dataclass(frozen=True)
class Tables:
    """The comparison tables written to the result folder."""

    summary: pd.DataFrame  # tidy rows (reports.schema.TIDY_COLUMNS), source "network"
    sweep: pd.DataFrame  # one row per B
    ritz: pd.DataFrame  # operator, B, probe, value, weight
    density: pd.DataFrame  # curve, B, x, density
    sigma2: pd.DataFrame  # estimator, value, ci_low, ci_high, probes
    assumption3: dict  # B -> verdict and its numbers
    sweep_law: dict  # which growth law lambda_max(B) follows
    batch_draws: pd.DataFrame  # B, draw, lambda_max, lambda_min: Lanczos extremes of each H_B


def _row(check, quantity, predicted, measured, uncertainty, regime, z_crit, verdict=None):
    if verdict is None:
        verdict = verdict_from_z(predicted, measured, uncertainty, z_crit)
    return {
        "source": "network",
        "check": check,
        "quantity": quantity,
        "predicted": predicted,
        "measured": measured,
        "uncertainty": uncertainty,
        "regime": regime,
        "verdict": verdict,
    }


def _eps(config: NetworkConfig) -> float:
    return float(np.finfo(np.float32 if config.dtype == "float32" else np.float64).eps)


def _quad(*values) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.sqrt(np.sum(np.square(finite)))) if finite else float("nan")


def _without_extreme(spectrum: Spectrum, side: str) -> tuple[np.ndarray, np.ndarray]:
    """The pooled SLQ measure of H_emp without each probe's extreme node on ``side``."""
    nodes, weights = [], []
    for x, w in zip(spectrum.nodes, spectrum.weights, strict=True):
        k = np.flatnonzero(np.isfinite(x))
        k = k[:-1] if side == "max" else k[1:]
        nodes.append(x[k])
        weights.append(w[k])
    nodes, weights = np.concatenate(nodes), np.concatenate(weights)
    return nodes, weights / weights.sum()


def free_convolution_extreme(bulk_nodes, bulk_weights, theta: float, t: float, side: str):
    """The extreme eigenvalue of (bulk + spike theta) + GOE(t) in the large-P limit.

    The spike gives an outlier at ``theta + t G_mu(theta)`` when ``1 - t F(theta) > 0``; otherwise
    it is absorbed and the extreme sits at the support edge of ``mu boxplus semicircle(t)``.
    Returns (value, "outlier" or "edge", squared overlap).
    """
    from rmt.freeconv import free_convolution_outliers, free_convolution_support

    out = free_convolution_outliers(bulk_nodes, bulk_weights, [theta], t)
    support = free_convolution_support(bulk_nodes, bulk_weights, t)
    edge = support[-1][1] if side == "max" else support[0][0]
    if out.is_outlier[0]:
        beyond = out.location[0] > edge if side == "max" else out.location[0] < edge
        if beyond:
            return float(out.location[0]), "outlier", float(out.overlap[0])
    return float(edge), "edge", 0.0


def sigma2_rows(result: NetworkResult) -> list[dict]:
    """The cheap sigma^2 estimators against the per-sample one (paper eq. 9)."""
    ref = result.sigma2["per-sample"]
    return [
        _row(
            "sigma2",
            f"sigma^2 {name} (B={result.sigma2_batch}) vs per-sample",
            ref.estimate,
            e.estimate,
            _quad(ref.standard_error, e.standard_error),
            "-",
            result.config.z_crit,
        )
        for name, e in result.sigma2.items()
        if name != "per-sample"
    ]


def exact_rows(spec: Spectrum, label: str, *, eps: float, z: float) -> list[dict]:
    """Lanczos extremes and the SLQ measure against the dense eigenvalues (none without them).

    Uncertainty of an extreme: its Lanczos residual (some eigenvalue lies within it) and the
    rounding allowance 10 P eps ||H|| of the dense eigensolver and of the HVPs
    (tests/tolerances.py); of the measure: its SLQ resolution (:func:`slq_resolution`).
    """
    if spec.exact is None:
        return []
    P = spec.exact.size
    rounding = 10.0 * P * eps * float(np.max(np.abs(spec.exact)))
    rows = []
    for side in ("max", "min"):
        value, _, resid = spec.extreme(side)
        truth = spec.exact[-1] if side == "max" else spec.exact[0]
        unc = _quad(resid, rounding)
        rows.append(_row("lanczos-exact", f"lambda_{side} {label}", truth, value, unc, "-", z))
    w1 = wasserstein1_discrete(*spec.pooled(), spec.exact, np.full(P, 1.0 / P))
    resolution = slq_resolution(spec.nodes, spec.weights)
    quantity = f"W1(SLQ measure, exact eigenvalues) {label}"
    rows.append(_row("slq-exact", quantity, 0.0, w1, resolution, "bulk", z))
    return rows


def extreme_rows(result: NetworkResult, B: int, t: float, t_se: float):
    """Theorem 2 and its free-convolution refinement for lambda_max and lambda_min of H_B.

    Returns (rows, sweep columns). The predictions start from the Lanczos extremes theta of
    H_emp; the uncertainty combines the prediction's standard error (sigma^2 through t, and
    theta's residual), the batch-draw fluctuation and the measurement's (probe standard error or
    Lanczos residual, the larger). With one draw (K = 1) the batch-draw term is the theory's
    fluctuation of one draw (Gaussian outlier of sd ``sqrt(2 s^2 overlap)``, Tracy-Widom edge of
    sd ``TW1_SD sqrt(t) P^(-2/3)``); with K > 1 the measured value is the mean over the draws
    and the term is the larger of the theory's fluctuation of a K-draw mean (that sd /
    sqrt(K)) and the standard error over the draws (both estimate the same spread, so they are
    not added; the larger guards a small K whose sample spread came out small), and the
    measurement term is the mean of the draws' (Lanczos errors are one-sided, so they do not
    average out).
    """
    c, P, N, z = result.config, result.P, result.N, result.config.z_crit
    K = c.batch_draws
    sigma2 = result.sigma2["per-sample"].estimate
    batch = result.batches[B]
    # rounding floor: HVPs of the batch and of the full data sum in different orders
    scale = max(abs(result.full.extreme("max")[0]), abs(result.full.extreme("min")[0]))
    rounding = 10.0 * P * _eps(c) * scale
    rows, columns = [], {}
    for side in ("max", "min"):
        lam, _, lam_res = result.full.extreme(side)
        pred = theory.theorem2(lam, sigma2, P, N, B, factor=c.factor)
        predicted, regime = float(pred.predicted), str(pred.regime)
        if regime == "outlier":  # theta + t / theta
            d_dt, d_dlam = 1.0 / lam, 1.0 - t / lam**2
            fluct = float(theory.outlier_sd(lam, t, P))
        else:  # sign(theta) 2 sqrt(t)
            d_dt, d_dlam = (np.sign(lam) / math.sqrt(t) if t > 0 else 0.0), 0.0
            fluct = float(theory.edge_scale(t, P)) * theory.TW1_SD
        pred_se = _quad(abs(d_dt) * t_se, abs(d_dlam) * lam_res)
        if K == 1:
            measured, meas_se, meas_res = batch.extreme(side)
            meas_unc = _quad(max(v for v in (meas_se, meas_res, 0.0) if np.isfinite(v)), rounding)
            draw_se = float("nan")
        else:
            values, errors = result.draw_extremes(B, side)
            measured = float(values.mean())
            draw_se = float(values.std(ddof=1) / math.sqrt(K))
            meas_unc = _quad(float(errors.mean()), rounding)

        def draw_term(sd, draw_se=draw_se):
            """The batch-draw fluctuation of the measured value, from the theory's sd of one
            draw: that sd (K = 1), else the larger of sd / sqrt(K) and the SE over draws."""
            return sd if K == 1 else max(sd / math.sqrt(K), draw_se)

        quantity = f"lambda_{side} batch B={B}"
        unc = _quad(pred_se, draw_term(fluct), meas_unc)
        rows.append(_row("theorem2", quantity, predicted, measured, unc, regime, z))
        if K > 1:
            rows.append(spread_row(values, fluct, f"sd over batches of {quantity}", regime, z))
        fc, fc_regime = float("nan"), "-"
        if t > 0 and result.steps < 2:  # one Ritz value per probe: no rest of the measure
            rows.append(
                _row(
                    "free-convolution-outlier",
                    f"{quantity} (needs --steps >= 2)",
                    fc,
                    measured,
                    math.nan,
                    fc_regime,
                    z,
                    verdict="not applicable",
                )
            )
        elif t > 0:  # the spike theta on the rest of the full-data SLQ measure
            bulk = _without_extreme(result.full, side)
            fc, fc_regime, overlap = free_convolution_extreme(*bulk, lam, t, side)
            lo, hi = max(t - t_se, t * 1e-3), t + t_se
            fc_lo = free_convolution_extreme(*bulk, lam, lo, side)[0]
            fc_hi = free_convolution_extreme(*bulk, lam, hi, side)[0]
            fc_se = abs(fc_hi - fc_lo) / (hi - lo) * t_se
            fc_fluct = (
                math.sqrt(2.0 * t / P * overlap)
                if fc_regime == "outlier"
                else float(theory.edge_scale(t, P)) * theory.TW1_SD
            )
            unc = _quad(fc_se, draw_term(fc_fluct), meas_unc)
            rows.append(_row("free-convolution-outlier", quantity, fc, measured, unc, fc_regime, z))
        exact = float("nan")
        if batch.exact is not None:
            exact = float(batch.exact[-1] if side == "max" else batch.exact[0])
        columns.update(
            {
                f"lambda_full_{side}": lam,
                f"regime_{side}": regime,
                f"predicted_{side}": predicted,
                f"predicted_{side}_se": pred_se,
                f"fc_predicted_{side}": fc,
                f"fc_regime_{side}": fc_regime,
                f"measured_{side}": measured,
                f"measured_{side}_se": meas_unc,
                f"exact_{side}": exact,
            }
        )
        if K > 1:  # measured_* is the mean over draws, its se the draw SE with the Lanczos error
            columns[f"measured_{side}_se"] = _quad(draw_se, meas_unc)
            columns[f"measured_{side}_draw_se"] = draw_se
    if K > 1:
        columns["batch_draws"] = K
    return rows, columns


def spread_row(values, sd: float, quantity: str, regime: str, z_crit: float) -> dict:
    """The batch-to-batch spread of an extreme eigenvalue against the theory's sd of one draw.

    Under the theory the K draws are independent with sd ``sd``, so ``(K - 1) s^2 / sd^2`` is
    chi-square with K - 1 degrees of freedom (s the sample sd). "agrees" when it lies within the
    central interval whose two tails together have the probability of ``|Z| > z_crit``, the
    same false-alarm rate as the z-verdicts. The uncertainty is the large-K standard error of s,
    ``s / sqrt(2 (K - 1))``.
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    K = values.size
    s = float(values.std(ddof=1))
    uncertainty = s / math.sqrt(2.0 * (K - 1))
    if not (np.isfinite(sd) and sd > 0):
        return _row("batch-spread", quantity, sd, s, uncertainty, regime, z_crit, "not applicable")
    alpha = 2.0 * stats.norm.sf(z_crit)
    statistic = (K - 1) * s**2 / sd**2
    lo, hi = stats.chi2.ppf(alpha / 2, K - 1), stats.chi2.isf(alpha / 2, K - 1)
    verdict = "agrees" if lo <= statistic <= hi else "disagrees"
    return _row("batch-spread", quantity, sd, s, uncertainty, regime, z_crit, verdict)


def density_rows(result: NetworkResult, B: int, t: float, width: float):
    """Batch density against (full-data SLQ measure) boxplus semicircle(t), and the noise
    density against the semicircle, on shared grids of ``DENSITY_POINTS`` points.

    Returns (rows, curves as long frames, sweep columns). The W1 distances are between the raw
    SLQ measures and the predicted densities; their reference scale is the SLQ resolution of
    the measured measure (and of the full-data one, which the prediction inherits: free
    convolution with a fixed measure does not increase W1).
    """
    from nnhessian import smooth_density
    from rmt.freeconv import free_convolution_density, free_convolution_support

    z = result.config.z_crit
    full, batch, noise = result.full, result.batches[B], result.noises[B]
    full_nodes, full_weights = full.pooled()
    batch_nodes, batch_weights = batch.pooled()
    lo = min(full_nodes.min(), batch_nodes.min())
    hi = max(full_nodes.max(), batch_nodes.max())
    if t > 0:
        support = free_convolution_support(full_nodes, full_weights, t)
        lo, hi = min(lo, support[0][0]), max(hi, support[-1][1])
    grid = np.linspace(lo - 5 * width, hi + 5 * width, DENSITY_POINTS)
    curves = {"batch measured": smooth_density(batch.nodes, batch.weights, grid, width)}
    rows, columns = [], {}
    if t > 0:
        curves["batch predicted"] = free_convolution_density(full_nodes, full_weights, t, grid)
        w1 = wasserstein1_measure_to_density(
            batch_nodes, batch_weights, grid, curves["batch predicted"]
        )
        reference = _quad(
            slq_resolution(batch.nodes, batch.weights), slq_resolution(full.nodes, full.weights)
        )
        quantity = f"W1(batch SLQ measure, full boxplus semicircle) B={B}"
        rows.append(_row("free-convolution", quantity, 0.0, w1, reference, "bulk", z))
        columns.update(density_w1=w1, density_w1_reference=reference)
    frames = [
        pd.DataFrame({"curve": k, "B": B, "x": grid, "density": v}) for k, v in curves.items()
    ]

    edge = 2.0 * math.sqrt(t)
    nodes = noise.nodes[noise.weights > 0]
    n_width = smoothing_width([noise], result.steps)
    lo, hi = min(float(nodes.min()), -edge), max(float(nodes.max()), edge)
    grid = np.linspace(lo - 5 * n_width, hi + 5 * n_width, DENSITY_POINTS)
    curves = {"noise measured": smooth_density(noise.nodes, noise.weights, grid, n_width)}
    if t > 0:
        curves["noise semicircle"] = theory.semicircle_density(grid, t)
        w1 = wasserstein1_measure_to_density(*noise.pooled(), grid, curves["noise semicircle"])
        reference = slq_resolution(noise.nodes, noise.weights)
        quantity = f"W1(noise SLQ measure, semicircle(t)) B={B}"
        rows.append(_row("noise-semicircle", quantity, 0.0, w1, reference, "bulk", z))
    frames += [
        pd.DataFrame({"curve": k, "B": B, "x": grid, "density": v}) for k, v in curves.items()
    ]
    return rows, frames, columns


def compare(result: NetworkResult) -> Tables:
    """All comparisons of theory with measurement (pure: no Hessian-vector products)."""
    from nnhessian import smooth_density

    c, P, N, z = result.config, result.P, result.N, result.config.z_crit
    eps = _eps(c)
    s2 = result.sigma2["per-sample"]
    rows = sigma2_rows(result) + exact_rows(result.full, "full", eps=eps, z=z)
    sizes = sorted(result.batches)
    width = smoothing_width([result.full, *result.batches.values()], result.steps)
    sweep, frames, assumption3 = [], [], {}
    for B in sizes:
        rows += exact_rows(result.batches[B], f"batch B={B}", eps=eps, z=z)
        rows += exact_rows(result.noises[B], f"noise B={B}", eps=eps, z=z)
        f = float(theory.FACTORS[c.factor](N, B))
        t = float(theory.noise_scale(s2.estimate, P, N, B, factor=c.factor))
        t_se = P * f * s2.standard_error  # t is linear in sigma^2
        entry = {"B": B, "f": f, "t": t, "t_se": t_se, "threshold": math.sqrt(t)}
        new_rows, columns = extreme_rows(result, B, t, t_se)
        rows += new_rows
        entry.update(columns)
        new_rows, columns, assumption3[B] = noise_checks(
            result.noises[B],
            t,
            t_se,
            P,
            B,
            N,
            z,
            extra_m2=result.extra_noise_m2.get(B, ()),
            exact_factor=float(theory.FACTORS["exact"](N, B)) / f if f > 0 else 1.0,
        )
        rows += new_rows
        entry.update(columns)
        new_rows, curves, columns = density_rows(result, B, t, width)
        rows += new_rows
        frames += curves
        entry.update(columns)
        sweep.append(entry)

    sweep = pd.DataFrame(sweep)
    sweep_law = growth_law(sweep, s2.estimate, P)
    if "edge_law_max" in sweep_law:
        sweep["edge_law_max"] = sweep_law.pop("edge_law_max")
        sweep["outlier_law_max"] = sweep_law.pop("outlier_law_max")
    nodes = result.full.nodes[result.full.weights > 0]
    grid = np.linspace(nodes.min() - 5 * width, nodes.max() + 5 * width, DENSITY_POINTS)
    full_curve = smooth_density(result.full.nodes, result.full.weights, grid, width)
    frames.insert(0, pd.DataFrame({"curve": "full", "B": pd.NA, "x": grid, "density": full_curve}))
    density = pd.concat(frames, ignore_index=True)
    density["B"] = density["B"].astype("Int64")
    return Tables(
        summary=tidy_frame(rows),
        sweep=sweep,
        ritz=ritz_table(result),
        density=density,
        sigma2=sigma2_table(result.sigma2),
        assumption3=assumption3,
        sweep_law=sweep_law,
        batch_draws=batch_draws_table(result),
    )


def batch_draws_table(result: NetworkResult) -> pd.DataFrame:
    """``batch_draws.csv``: the Lanczos extremes of H_B for every B and draw (draw 0: the batch
    of ritz.csv, best over its probes; draws 1..K-1: one probe each)."""
    rows = []
    for B in sorted(result.batches):
        top, _ = result.draw_extremes(B, "max")
        bottom, _ = result.draw_extremes(B, "min")
        for draw, (hi, lo) in enumerate(zip(top, bottom, strict=True)):
            rows.append({"B": B, "draw": draw, "lambda_max": float(hi), "lambda_min": float(lo)})
    return pd.DataFrame(rows, columns=["B", "draw", "lambda_max", "lambda_min"])


def noise_checks(
    noise: Spectrum,
    t: float,
    t_se: float,
    P: int,
    B: int,
    N: int,
    z: float,
    *,
    extra_m2=(),
    exact_factor: float = 1.0,
):
    """Rows testing the paper's assumption 3 (N_B is GOE of noise scale t) on the noise spectrum.

    Returns (rows, sweep columns, verdict): the verdict is "holds" when the edges, the asymmetry,
    the skewness and the kurtosis all agree with GOE, else "violated" with the numbers.

    Also the law-free identity behind t: over batches drawn without replacement,
    ``E tr(N_B^2) / P = f(N, B) (1/N) sum_i ||H_i - H_emp||_F^2 / P = P f sigma^2 = t`` (exact
    finite-population factor; sigma^2 as paper eq. 9). Its row compares the mean of
    tr(N_B^2)/P over the K batch draws (draw 0: SLQ's quadrature; ``extra_m2``: draws 1..K-1,
    the same probes' ``||N_B q||^2``) with t times ``exact_factor`` (the exact factor over the
    one t was computed with; 1 for ``--factor exact``); the standard error is the spread over
    draws (batch and probe variation) / sqrt(K), with t's own in quadrature. One draw: no verdict.
    """
    label = f"noise B={B}"
    nmax, nmax_se, nmax_res = noise.extreme("max")
    nmin, nmin_se, nmin_res = noise.extreme("min")
    edge = 2.0 * math.sqrt(t)
    columns = {"noise_max": nmax, "noise_min": nmin, "goe_edge": edge}
    if B == N or t == 0:  # no noise at all: nothing to compare
        return [], columns, {}
    tw = float(theory.edge_scale(t, P)) * theory.TW1_SD
    edge_se = t_se / math.sqrt(t)
    rows = []
    for side, value, se, res, target in (
        ("max", nmax, nmax_se, nmax_res, edge),
        ("min", nmin, nmin_se, nmin_res, -edge),
    ):
        unc = _quad(edge_se, tw, max(v for v in (se, res, 0.0) if np.isfinite(v)))
        rows.append(_row("noise-edge", f"lambda_{side} {label}", target, value, unc, "edge", z))
    width = nmax - nmin
    asym = (nmax + nmin) / width
    # GOE: each edge fluctuates by tw independently, so (d_max + d_min) / width has sd
    # sqrt(2) tw / width; the probes' spread of the extremes adds in quadrature.
    spread = _quad(nmax_se, nmin_se, nmax_res, nmin_res) / width
    rows.append(
        _row(
            "noise-asymmetry",
            f"(lambda_max + lambda_min) / (lambda_max - lambda_min) {label}",
            0.0,
            asym,
            _quad(math.sqrt(2.0) * tw / width, spread),
            "-",
            z,
        )
    )
    per_probe = raw_moments(noise.nodes, noise.weights)
    (skew, kurt), (skew_se, kurt_se) = jackknife(per_probe, shape_statistics)
    rows.append(
        _row("noise-skewness", f"third standardised moment {label}", 0.0, skew, skew_se, "-", z)
    )
    rows.append(
        _row("noise-kurtosis", f"fourth standardised moment {label}", 2.0, kurt, kurt_se, "-", z)
    )
    failed = sorted({r["check"] for r in rows if r["verdict"].startswith("disagrees")})
    m2 = float(per_probe[:, 1].mean())
    draws = np.array([m2, *(float(np.mean(x)) for x in extra_m2)])
    K = draws.size
    quantity = f"tr(N^2)/P, mean of {K} batch draw{'s' if K > 1 else ''} {label}"
    t_var, t_var_se = t * exact_factor, t_se * exact_factor
    if K > 1:
        se = _quad(float(draws.std(ddof=1) / math.sqrt(K)), t_var_se)
        rows.append(_row("noise-variance", quantity, t_var, float(draws.mean()), se, "-", z))
    else:  # one batch: its deviation from the mean over batches is not estimated
        rows.append(
            _row("noise-variance", quantity, t_var, m2, math.nan, "-", z, verdict="not applicable")
        )
    ratio_max, ratio_min = nmax / edge, -nmin / edge
    verdict = "violated" if failed else "holds"
    numbers = (
        f"edges {ratio_max:.3g}x / {ratio_min:.3g}x the GOE edge 2 sqrt(t), asymmetry "
        f"{asym:+.3g}, skewness {skew:+.3g}, kurtosis {kurt:.3g} (GOE: 1x, 0, 0, 2)"
    )
    columns.update(
        noise_asymmetry=asym,
        noise_skewness=float(skew),
        noise_kurtosis=float(kurt),
        noise_m2=m2,
        noise_m2_mean=float(draws.mean()),
    )
    return (
        rows,
        columns,
        {
            "verdict": verdict,
            "failed_checks": failed,
            "edge_ratio_max": ratio_max,
            "edge_ratio_min": ratio_min,
            # the edges in units of the batch's own semicircle edge 2 sqrt(tr(N^2)/P): shape only
            "edge_ratio_max_own_scale": nmax / (2.0 * math.sqrt(m2)),
            "edge_ratio_min_own_scale": -nmin / (2.0 * math.sqrt(m2)),
            "asymmetry": asym,
            "skewness": float(skew),
            "kurtosis": float(kurt),
            "second_moment_over_t": m2 / t,
            "summary": f"assumption 3 {verdict} at B={B}: {numbers}",
        },
    )


def growth_law(sweep: pd.DataFrame, sigma2: float, P: int) -> dict:
    """Which law lambda_max(B) follows across the batch sizes, by least squares.

    Edge law: ``lambda_max = c_e sqrt(f)`` (Theorem 2 below the threshold, c_e = 2 sqrt(P
    sigma^2); ~ B^(-1/2) for B << N). Outlier law: ``lambda_max = theta + c_o f`` (above it,
    c_o = P sigma^2 / theta; saturates at theta as B grows). Each has one free constant; the law
    with the smaller residual sum of squares is named. Also the log-log slope of lambda_max
    against f (edge: 1/2, saturating: -> 0) over the batch sizes with B < N and lambda_max > 0
    (NaN with fewer than two). Needs two batch sizes.
    """
    if len(sweep) < 2:
        return {"law": "not applicable (one batch size)"}
    f = sweep["f"].to_numpy()
    lam = sweep["measured_max"].to_numpy()
    theta = float(sweep["lambda_full_max"].iloc[0])
    root = np.sqrt(f)
    c_edge = float(root @ lam / (root @ root))
    c_out = float(f @ (lam - theta) / (f @ f))
    edge_fit, out_fit = c_edge * root, theta + c_out * f
    rss_edge = float(np.sum((lam - edge_fit) ** 2))
    rss_out = float(np.sum((lam - out_fit) ** 2))
    logs = (f > 0) & (lam > 0)  # B = N has f = 0: no noise, no point on the log-log line
    fit = logs.sum() >= 2
    slope = float(np.polyfit(np.log(f[logs]), np.log(lam[logs]), 1)[0]) if fit else math.nan
    law = "edge law (~ B^-1/2)" if rss_edge < rss_out else "saturates toward the outlier"
    return {
        "law": law,
        "rss_edge": rss_edge,
        "rss_outlier": rss_out,
        "edge_constant_fitted": c_edge,
        "edge_constant_predicted": 2.0 * math.sqrt(P * sigma2),
        "outlier_constant_fitted": c_out,
        "outlier_constant_predicted": P * sigma2 / theta if theta != 0 else float("nan"),
        "loglog_slope_vs_f": slope,
        "edge_law_max": edge_fit,
        "outlier_law_max": out_fit,
    }


def ritz_table(result: NetworkResult) -> pd.DataFrame:
    """Raw Ritz values and Gauss weights: operator, B (empty for full), probe, value, weight."""
    frames = []
    for spec in [result.full, *result.batches.values(), *result.noises.values()]:
        probes, steps = spec.nodes.shape
        keep = np.isfinite(spec.nodes)  # every Ritz value; NaN pads runs that broke down early
        probe = np.repeat(np.arange(probes), steps).reshape(probes, steps)
        frames.append(
            pd.DataFrame(
                {
                    "operator": spec.operator,
                    "B": spec.B if spec.B is not None else pd.NA,
                    "probe": probe[keep],
                    "value": spec.nodes[keep],
                    "weight": spec.weights[keep],
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    table["B"] = table["B"].astype("Int64")
    return table


def sigma2_table(estimates: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "estimator": name,
                "value": e.estimate,
                "ci_low": e.ci_low,
                "ci_high": e.ci_high,
                "probes": e.probes,
            }
            for name, e in estimates.items()
        ],
        columns=["estimator", "value", "ci_low", "ci_high", "probes"],
    )


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def write_network(result: NetworkResult, tables: Tables, out, *, started, wall_seconds) -> None:
    """Write tables, figures and ``results.json`` (with provenance) into ``out``, atomically."""
    from reports import figures
    from validation.store import provenance, result_folder

    config = result.config
    sizes = sorted(result.batches)
    with result_folder(out) as w:
        w.csv("summary.csv", tables.summary)
        w.csv("ritz.csv", tables.ritz)
        w.csv("density.csv", tables.density)
        w.csv("sigma2.csv", tables.sigma2)
        w.csv("sweep.csv", tables.sweep)
        w.csv("batch_draws.csv", tables.batch_draws)

        fig, axes = figures.new_figure(len(sizes), width=4.5)
        for ax, B in zip(axes, sizes, strict=True):
            figures.ritz_full_vs_batch(ax, tables.ritz, B=B)
        w.figure("ritz_full_vs_batch.png", fig)

        fig, axes = figures.new_figure(len(sizes), width=4.5)
        for ax, B in zip(axes, sizes, strict=True):
            figures.batch_density(ax, tables.density, B=B)
        w.figure("density.png", fig)

        fig, axes = figures.new_figure(len(sizes), width=4.5)
        for ax, B in zip(axes, sizes, strict=True):
            t = float(tables.sweep.loc[tables.sweep.B == B, "t"].iloc[0])
            figures.noise_spectrum(ax, tables.density, B=B, t=t)
        w.figure("noise_spectrum.png", fig)

        fig, (ax,) = figures.new_figure()
        figures.batch_sweep(ax, tables.sweep)
        w.figure("batch_sweep.png", fig)

        w.json(
            "results.json",
            {
                "kind": "network",
                "provenance": provenance(
                    config, started=started, wall_seconds=wall_seconds, device=result.device
                ),
                "model": config.model,
                "data": config.data,
                "P": result.P,
                "N": result.N,
                "epoch": result.epoch,
                "weights": result.weights,
                "data_identity": result.data_identity,
                "distributed": {"world_size": result.world_size, "backend": result.backend},
                "state_dir": result.state_dir,
                "batch_sizes": sizes,
                "sigma2": {
                    name: {
                        "value": e.estimate,
                        "ci_low": e.ci_low,
                        "ci_high": e.ci_high,
                        "probes": e.probes,
                    }
                    for name, e in result.sigma2.items()
                },
                "sigma2_details": {
                    name: {
                        "standard_error": e.standard_error,
                        "confidence": e.confidence,
                        "batch_size": e.B,
                        "factor": e.factor,
                        "convention": e.convention,
                    }
                    for name, e in result.sigma2.items()
                },
                "batch_indices": {str(B): idx for B, idx in result.batch_indices.items()},
                "batch_draws": config.batch_draws,
                # draws 1..K-1: per probe ||N_B q||^2, q as SLQ's probes (tr(N^2)/P estimates)
                "noise_second_moment_draws": {
                    str(B): [m.tolist() for m in draws]
                    for B, draws in result.extra_noise_m2.items()
                },
                "batch_draw_indices": {  # every draw, draw 0 first (= batch_indices)
                    str(B): [idx, *result.extra_indices.get(B, [])]
                    for B, idx in result.batch_indices.items()
                },
                "steps": result.steps,
                "probes": config.probes,
                "hvp_method": result.hvp_method,
                "graph_cache": result.graph_cache,
                "exact_check": result.full.exact is not None,
                "training": result.training,
                "verdicts": tables.summary["verdict"].value_counts().to_dict(),
                "assumption3": {str(B): v for B, v in tables.assumption3.items()},
                "sweep_law": tables.sweep_law,
                "notes": list(result.notes),
                "timings_seconds": {k: round(v, 3) for k, v in result.timings.items()},
                "files": sorted(w.files + ["results.json"]),
            },
        )


def console_report(result: NetworkResult, tables: Tables) -> list[str]:
    """A short table of predicted vs measured extreme eigenvalues with verdicts."""
    lines = []
    c = result.config
    weights = (
        f"checkpoint {c.checkpoint}"
        + (f" (epoch {result.epoch})" if result.epoch is not None else "")
        if c.checkpoint
        else f"trained {c.train_epochs} epochs from seed {c.seed}"
    )
    processes = (
        f" x {result.world_size} processes ({result.backend})" if result.world_size > 1 else ""
    )
    lines.append(
        f"network: {c.model} on {c.data}, P = {result.P:,}, N = {result.N:,}, {weights}; "
        f"{c.dtype} on {result.device}{processes}, {result.steps} Lanczos steps x {c.probes} "
        "probes"
    )
    for note in result.notes:
        lines.append(f"note: {note}")
    s2 = "; ".join(
        f"{name} {e.estimate:.4g} [{e.ci_low:.4g}, {e.ci_high:.4g}]"
        for name, e in result.sigma2.items()
    )
    level = next(iter(result.sigma2.values())).confidence
    lines.append(f"sigma^2 ({100 * level:g}% CI): {s2}")
    header = (
        f"{'B':>5} {'t':>9} {'side':>4} {'regime':>7} {'full':>9} {'Thm 2':>9} {'+-':>7}"
        f" {'free conv':>9} {'Lanczos':>9} {'exact':>9}  verdict (Thm 2)"
    )
    lines.append(header)
    summary = tables.summary
    for row in tables.sweep.itertuples():
        for side in ("max", "min"):
            verdict = summary.loc[
                (summary.check == "theorem2")
                & (summary.quantity == f"lambda_{side} batch B={row.B}"),
                "verdict",
            ].iloc[0]
            get = lambda k, side=side, row=row: getattr(row, f"{k}_{side}")  # noqa: E731
            lines.append(
                f"{row.B:>5} {row.t:>9.4g} {side:>4} {get('regime'):>7} "
                f"{get('lambda_full'):>9.4g} {get('predicted'):>9.4g} "
                f"{getattr(row, f'predicted_{side}_se'):>7.2g} {get('fc_predicted'):>9.4g} "
                f"{get('measured'):>9.4g} {get('exact'):>9.4g}  {verdict}"
            )
    if c.batch_draws > 1:
        lines.append(
            f"batch draws: {c.batch_draws} batches per B; 'Lanczos' is their mean, 'exact' "
            "draw 0's; lambda_max mean +- SE over draws: "
            + ", ".join(
                f"B={row.B} {row.measured_max:.4g} +- {row.measured_max_draw_se:.2g}"
                for row in tables.sweep.itertuples()
            )
        )
    for B in sorted(tables.assumption3):
        a3 = tables.assumption3[B]
        if a3:
            lines.append(a3["summary"])
    law = tables.sweep_law
    if "rss_edge" in law:
        n = len(tables.sweep)
        key = "edge" if law["law"].startswith("edge") else "outlier"
        lines.append(
            f"batch sweep: lambda_max(B) {law['law']}: rms residual "
            f"{math.sqrt(law['rss_edge'] / n):.3g} (edge law c sqrt(f)) vs "
            f"{math.sqrt(law['rss_outlier'] / n):.3g} (outlier law theta + c f), fitted c = "
            f"{law[f'{key}_constant_fitted'] / law[f'{key}_constant_predicted']:.3g}x Theorem 2's; "
            f"log-log slope vs f {law['loglog_slope_vs_f']:.3g} (edge 0.5, saturation 0)"
        )
    counts = summary["verdict"].value_counts().to_dict()
    lines.append(
        "all checks: " + ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    )
    return lines


# ---------------------------------------------------------------------------------------------
# epoch sweeps (--checkpoints): sigma^2 and the extreme eigenvalues over training (Figures 3-4)
# ---------------------------------------------------------------------------------------------

# epochs.csv: one row per (epoch, B); the sigma^2 columns repeat over the B of an epoch.
EPOCH_SIDE_COLUMNS = (
    "lambda_full_{}",  # extreme Lanczos eigenvalue of H_emp
    "measured_{}",  # of H_B (Lanczos)
    "measured_{}_se",
    "predicted_{}",  # Theorem 2 from lambda_full and sigma^2 (per-sample)
    "predicted_{}_se",
    "regime_{}",
    "fc_predicted_{}",  # free-convolution refinement
    "exact_{}",  # dense check (NaN without it)
)
EPOCH_COLUMNS = (
    "epoch",
    *(
        f"sigma2_{name.replace('-', '_')}{part}"
        for name in SIGMA2_ESTIMATORS
        for part in ("", "_ci_low", "_ci_high")
    ),
    "B",
    "t",
    *(c.format(side) for side in ("max", "min") for c in EPOCH_SIDE_COLUMNS),
    "noise_max",
    "noise_min",
    "goe_edge",
)
_PER_B_COLUMNS = EPOCH_COLUMNS[EPOCH_COLUMNS.index("B") :]  # taken from each sweep.csv row


def _epoch_ranges(epochs) -> str:
    """``1-5, 10, 20-22``: sorted epochs with consecutive runs collapsed."""
    epochs = sorted(epochs)
    parts, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(str(start) if start == e else f"{start}-{e}")
            start = None
    return ", ".join(parts)


def select_checkpoints(folder, epochs, model: str) -> dict[int, Path]:
    """``{epoch: path}`` of the training checkpoints to measure in ``folder`` (the ``--out`` of
    ``python -m validation train``): every saved epoch, or ``epochs``.

    All of them are checked before anything runs (memory-mapped, so only their small fields are
    read): each must be a training checkpoint of the architecture ``model`` and of one class
    count. A ``UsageError`` (one line) otherwise, or when the folder holds no checkpoints or
    lacks an epoch asked for.
    """
    from validation.train import list_checkpoints

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"--checkpoints {folder} is not a folder (expected the --out folder of "
            "python -m validation train)"
        )
    saved = list_checkpoints(folder)
    if not saved:
        raise UsageError(
            f"--checkpoints {folder}: no checkpoints in {folder / 'checkpoints'} (expected "
            f"epoch_EEEE.pt files written by python -m validation train --out {folder})"
        )
    if epochs:
        missing = sorted(set(epochs) - set(saved))
        if missing:
            raise UsageError(
                f"--epochs {' '.join(map(str, missing))} not saved in {folder / 'checkpoints'}; "
                f"saved epochs: {_epoch_ranges(saved)}"
            )
        saved = {e: saved[e] for e in sorted(set(epochs))}
    classes = None
    for path in saved.values():
        payload = peek_training_checkpoint(path)
        if payload is None:
            raise UsageError(
                f"checkpoint {path} is not a readable training checkpoint of this suite "
                "(written by python -m validation train); delete it or choose --epochs without it"
            )
        if payload["model_name"] != model:
            raise UsageError(
                f"checkpoint {path} holds a {payload['model_name']} model, not {model}; pass "
                f"--model {payload['model_name']} or a folder of {model} checkpoints"
            )
        if classes is not None and int(payload["num_classes"]) != classes:
            raise UsageError(
                f"checkpoint {path} has {payload['num_classes']} classes, the others {classes}"
            )
        classes = int(payload["num_classes"])
    return saved


def epoch_summary(result: NetworkResult, tables: Tables) -> str:
    """One console line per measured epoch."""
    s2 = result.sigma2["per-sample"]
    lam = result.full.extreme("max")[0]
    parts = [
        f"epoch {result.epoch}: sigma^2 {s2.estimate:.4g} [{s2.ci_low:.4g}, {s2.ci_high:.4g}]",
        f"lambda_max full {lam:.4g}",
    ]
    for row in tables.sweep.itertuples():
        parts.append(
            f"B={row.B} measured {row.measured_max:.4g} vs Theorem 2 {row.predicted_max:.4g}"
        )
    return "; ".join(parts)


def epoch_table(folders: dict) -> pd.DataFrame:
    """``epochs.csv`` from the stored epoch folders (``results.json`` and ``sweep.csv``), so a
    reused folder and a fresh one enter alike. Columns :data:`EPOCH_COLUMNS`."""
    from validation.store import read_results

    rows = []
    for key in sorted(folders):
        folder = Path(folders[key])
        stored = read_results(folder)
        sweep = pd.read_csv(folder / "sweep.csv")
        epoch = stored.get("epoch")
        base = {"epoch": key if epoch is None else int(epoch)}
        for name in SIGMA2_ESTIMATORS:
            entry = stored["sigma2"].get(name, {})
            slug = name.replace("-", "_")
            for part, field_name in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                value = entry.get(field_name)
                base[f"sigma2_{slug}{part}"] = float("nan") if value is None else value
        for row in sweep.to_dict(orient="records"):
            rows.append({**base, **{c: row.get(c, float("nan")) for c in _PER_B_COLUMNS}})
    table = pd.DataFrame(rows, columns=list(EPOCH_COLUMNS))
    return table.sort_values(["epoch", "B"], kind="stable").reset_index(drop=True)


def sigma2_long(table: pd.DataFrame) -> pd.DataFrame:
    """The sigma^2 columns of an epoch table as ``reports.figures.sigma2_over_epochs`` reads
    them: series (estimator), epoch, value, ci_low, ci_high; one row per epoch and estimator."""
    first = table.drop_duplicates("epoch")
    frames = []
    for name in SIGMA2_ESTIMATORS:
        slug = f"sigma2_{name.replace('-', '_')}"
        if first[slug].notna().any():
            frames.append(
                pd.DataFrame(
                    {
                        "series": name,
                        "epoch": first["epoch"],
                        "value": first[slug],
                        "ci_low": first[f"{slug}_ci_low"],
                        "ci_high": first[f"{slug}_ci_high"],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def write_epochs(table, out, *, config: dict, folders: dict, started, wall_seconds) -> None:
    """``epochs.csv``, ``epochs.png`` (sigma^2, lambda_max and lambda_min against the epoch)
    and ``results.json`` (kind ``network-epochs``) into ``out``, atomically."""
    from reports import figures
    from validation.store import provenance, result_folder

    with result_folder(out) as w:
        w.csv("epochs.csv", table)
        fig, (ax_s2, ax_max, ax_min) = figures.new_figure(3, width=5.0)
        figures.sigma2_over_epochs(ax_s2, sigma2_long(table))
        figures.extremes_over_epochs(ax_max, table, side="max")
        figures.extremes_over_epochs(ax_min, table, side="min")
        w.figure("epochs.png", fig)
        w.json(
            "results.json",
            {
                "kind": "network-epochs",
                "provenance": provenance(config, started=started, wall_seconds=wall_seconds),
                "epochs": sorted(int(e) for e in folders),
                "folders": {str(e): Path(f).name for e, f in sorted(folders.items())},
                "files": sorted(w.files + ["results.json"]),
            },
        )


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def add_parser(sub) -> None:
    from validation.options import integer, number

    d = NetworkConfig()
    p = sub.add_parser(
        "network",
        help="full vs batch spectra of a network at given weights",
        description=(
            "Full-data and mini-batch Hessian spectra (SLQ) of a network at the same weights, "
            "sigma^2 (paper eq. 9), Theorem 2 and free-convolution predictions, the noise "
            "matrix against GOE, and an exact dense check for small models. Launched by "
            "torchrun, the full-data passes are sharded over the processes."
        ),
    )
    p.add_argument(
        "--model",
        help="mlp, cnn, cnn_bn, vgg16, vgg16bn, preresnet110 (nnhessian.models; default: the "
        "training checkpoint's architecture, else mlp)",
    )
    p.add_argument("--data", default=d.data, help=f"data set: {', '.join(DATA_LOADERS)}")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding cifar-100-python/ (--data cifar100; default ./data)",
    )
    p.add_argument(
        "--download", action="store_true", help="fetch CIFAR-100 into --data-dir if missing"
    )
    p.add_argument(
        "--samples",
        type=integer,
        help="N: use the first n samples of the data set (default: all; CIFAR-100 50,000)",
    )
    p.add_argument("--width", type=integer, help="MLP hidden width / CNN channels")
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="weights: a checkpoint of 'validation train', or a torch.save state_dict",
    )
    p.add_argument(
        "--checkpoints",
        type=Path,
        help="the --out folder of 'validation train': measure every saved epoch into "
        "<out>/epoch_EEEE/, then epochs.csv and epochs.png",
    )
    p.add_argument(
        "--epochs",
        type=integer,
        nargs="+",
        help="with --checkpoints: only these saved epochs (e.g. --epochs 10 50 200)",
    )
    p.add_argument(
        "--train-epochs",
        type=integer,
        default=d.train_epochs,
        help="without --checkpoint: SGD epochs from a seeded init",
    )
    p.add_argument(
        "--batch-sizes", type=integer, nargs="+", default=list(d.batch_sizes), help="values of B"
    )
    p.add_argument(
        "--batch-draws",
        type=integer,
        default=d.batch_draws,
        help="K independent batches per B: lambda_max/min of H_B as mean +- SE over the draws "
        "(draw 0 gets the full analysis, the others one Lanczos run each)",
    )
    p.add_argument("--steps", type=integer, default=d.steps, help="Lanczos steps m (paper: 100)")
    p.add_argument("--probes", type=integer, default=d.probes, help="SLQ probes per operator")
    p.add_argument(
        "--sigma2-probes",
        type=integer,
        default=d.sigma2_probes,
        help="probes per sigma^2 estimator",
    )
    p.add_argument("--seed", type=integer, default=d.seed, help="root of all random streams")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=d.dtype, help="float64 (validation) or float32")
    p.add_argument("--policy", default=d.policy, help="BatchNorm/dropout: eval or batch-stats")
    p.add_argument("--factor", default=d.factor, help="finite-population factor: exact or paper")
    p.add_argument("--z-crit", type=number, default=d.z_crit, help="|z| above it: disagrees")
    p.add_argument(
        "--exact", default=d.exact, help=f"dense exact check: auto (P <= {EXACT_MAX_P:,}), yes, no"
    )
    p.add_argument(
        "--hvp-batch", type=integer, default=d.hvp_batch, help="samples per full-data chunk"
    )
    p.add_argument(
        "--graph-cache-gb",
        type=number,
        default=d.graph_cache_gb,
        help="GiB for gradient graphs reused across HVPs (speed only; 0: none)",
    )
    p.add_argument(
        "--threads", type=integer, default=d.threads, help="CPU threads (0: torch's default)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="save Lanczos / sigma^2 progress here; the same command again resumes a killed run",
    )
    p.add_argument(
        "--save-every",
        type=integer,
        default=DEFAULT_SAVE_EVERY,
        help="with --state-dir: Lanczos steps between saves",
    )
    p.add_argument("--out", type=Path, default=Path("results/network"), help="result folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _default_model(args) -> str:
    """--model when given; else the architecture of the training checkpoint(s), else mlp."""
    if args.model is not None:
        return args.model
    source = getattr(args, "checkpoint", None)
    folder = getattr(args, "checkpoints", None)
    if source is None and folder is not None:
        from validation.train import list_checkpoints

        saved = list_checkpoints(folder) if Path(folder).is_dir() else {}
        source = next(iter(saved.values()), None)
    if source is not None and Path(source).is_file():
        payload = peek_training_checkpoint(source)
        if payload is not None:
            return str(payload["model_name"])
    return NetworkConfig.model


def config_from_args(args) -> NetworkConfig:
    data_dir = args.data_dir if args.data_dir is not None else DEFAULT_DATA_DIR.get(args.data)
    return NetworkConfig(
        model=_default_model(args),
        data=args.data,
        data_dir=str(data_dir) if data_dir is not None else None,
        samples=args.samples,
        width=args.width,
        checkpoint=str(args.checkpoint) if args.checkpoint is not None else None,
        train_epochs=args.train_epochs,
        batch_sizes=tuple(args.batch_sizes),
        batch_draws=args.batch_draws,
        steps=args.steps,
        probes=args.probes,
        sigma2_probes=args.sigma2_probes,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        policy=args.policy,
        factor=args.factor,
        z_crit=args.z_crit,
        exact=args.exact,
        hvp_batch=args.hvp_batch,
        graph_cache_gb=args.graph_cache_gb,
        threads=args.threads,
    )


def _check_run_options(args) -> None:
    """The options that say how to run, not what to measure."""
    if args.checkpoint is not None and args.checkpoints is not None:
        raise UsageError(
            "--checkpoint (one set of weights) and --checkpoints (a training folder) exclude "
            "each other"
        )
    if args.epochs is not None and args.checkpoints is None:
        raise UsageError("--epochs chooses saved epochs of --checkpoints DIR; give that too")
    if args.epochs is not None and any(e < 0 for e in args.epochs):
        raise UsageError(f"--epochs must be >= 0, got {' '.join(map(str, args.epochs))}")
    if args.save_every < 1:
        raise UsageError(f"--save-every must be >= 1 (Lanczos steps), got {args.save_every}")
    if args.state_dir is not None and args.state_dir.exists() and not args.state_dir.is_dir():
        raise UsageError(f"--state-dir {args.state_dir} exists and is not a folder")


def _env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_context(config: NetworkConfig):
    """The torch.distributed context under torchrun (``RANK`` and ``WORLD_SIZE`` set), else
    None (one process). Bad launch settings are a ``UsageError`` printed by every rank (they
    may differ by rank)."""
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        return None
    from nnhessian.distributed import init_from_env

    try:
        return init_from_env(device=None if config.device == "auto" else config.device)
    except ValueError as err:
        error = UsageError(f"torch.distributed (rank {_env_rank()}): {_flat(err)}")
        error.every_rank = True
        raise error from None


def command(args, started) -> int:
    """Run, and under torchrun let rank 0 alone report bad input (the same line on each rank;
    the other ranks exit with status 2 quietly) unless the problem may differ by rank."""
    try:
        return _command(args, started)
    except UsageError as err:
        if _env_rank() != 0 and not getattr(err, "every_rank", False):
            raise SystemExit(2) from None
        raise


def _command(args, started) -> int:
    import torch

    from validation.options import Progress

    _check_run_options(args)
    config = config_from_args(args)
    checkpoints = None
    if args.checkpoints is not None:
        checkpoints = select_checkpoints(args.checkpoints, args.epochs, config.model)
    run = dict(state_dir=args.state_dir, save_every=args.save_every, download=args.download)
    clock = time.perf_counter()
    threads = torch.get_num_threads()
    context = init_context(config)
    main = context is None or context.is_main
    finished = False
    try:
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        if checkpoints is not None:
            status = _sweep(args, config, checkpoints, context, run, started)
            finished = True
            return status
        with Progress(enabled=not args.quiet and main) as progress:
            result = run_network(config, progress=progress, context=context, **run)
        if main:
            tables = compare(result)
            write_network(
                result, tables, args.out, started=started, wall_seconds=time.perf_counter() - clock
            )
            for line in console_report(result, tables):
                print(line)
            print(f"network: results in {args.out}")
        finished = True
        return 0
    finally:
        torch.set_num_threads(threads)
        close_context(context, finished=finished)


def close_context(context, *, finished: bool) -> None:
    """End the process group. After a run that finished on this rank, first a barrier: every
    rank leaves together once rank 0 has written the results (a gloo rank that exited while rank 0
    was still writing was seen to abort at interpreter exit, about 1 run in 8)."""
    if context is None:
        return
    if finished and context.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    context.close()


def _sweep(args, config, checkpoints, context, run, started) -> int:
    """Measure every selected epoch into ``<out>/epoch_EEEE/`` (reusing complete folders of
    the same configuration), then the epoch table and figure. Rank 0 decides reuse and writes."""
    from datetime import UTC, datetime

    from validation.options import Progress
    from validation.store import same_config

    sharding = None
    if context is not None and context.world_size > 1:
        from nnhessian.distributed import Sharding

        sharding = Sharding(context.rank, context.world_size)
    main = _is_main(sharding)
    clock = time.perf_counter()
    folders = {}
    for epoch, path in checkpoints.items():
        name = EPOCH_FOLDER.format(epoch)
        folder = Path(args.out) / name
        cfg = replace(config, checkpoint=str(path))
        reuse = main and same_config(folder, cfg)
        if sharding is not None:
            reuse = sharding.broadcast_object(reuse)
        folders[epoch] = folder
        if reuse:
            if main:
                print(f"epoch {epoch}: reusing {folder} (same configuration)")
            continue
        epoch_started, epoch_clock = datetime.now(UTC), time.perf_counter()
        state_dir = None if run["state_dir"] is None else Path(run["state_dir"]) / name
        with Progress(enabled=not args.quiet and main) as progress:
            result = run_network(
                cfg, progress=progress, context=context, **dict(run, state_dir=state_dir)
            )
        if main:
            tables = compare(result)
            write_network(
                result,
                tables,
                folder,
                started=epoch_started,
                wall_seconds=time.perf_counter() - epoch_clock,
            )
            print(epoch_summary(result, tables))
    if not main:
        return 0
    sweep_config = {
        "network": config,
        "checkpoints": str(args.checkpoints),
        "epochs": sorted(checkpoints),
    }
    write_epochs(
        epoch_table(folders),
        args.out,
        config=sweep_config,
        folders=folders,
        started=started,
        wall_seconds=time.perf_counter() - clock,
    )
    print(f"network: {len(folders)} epochs ({_epoch_ranges(folders)}); results in {args.out}")
    return 0
