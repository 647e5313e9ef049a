"""The configuration of a network run: what to measure and how, validated on construction.

Random streams are keyed by name through :data:`STREAMS`, a fixed name -> number table: the
number enters ``SeedSequence(seed, spawn_key=(number, *key))``, so adding a stream never changes
the draws of another, and renaming one cannot silently move it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmt import theory
from validation.errors import UsageError
from validation.options import (
    EXACT_INT_MAX,
    MIN_SAMPLE_FLOP,
    SEED_MAX,
    check_machine,
    machine_memory_bytes,
    require_integer,
    require_number,
)

THREADS_MAX = 1_024  # intra-op threads: beyond any node's cores (torch takes an int32)
BUDGET_MAX_GB = 1e6  # --graph-cache-gb, --lockstep-gb: a budget beyond any device (1 PiB)
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

# Independent random streams: SeedSequence(seed, spawn_key=(STREAMS[name], *key)). The numbers
# are fixed (they were the positions in the tuple of earlier versions): never renumber one, and give
# a new stream the next free number, so that every earlier draw stays bit-identical.
STREAMS = {
    "init": 0,
    "train": 1,
    "sigma2 per-sample": 2,
    "sigma2 partition": 3,
    "sigma2 two-batch": 4,
    "slq full": 5,
    "batch draw": 6,
    "slq batch": 7,
    "slq noise": 8,
    "noise m2": 9,
    "curvature subset": 10,
    "top vector": 11,
}


def stream_generator(seed: int, stream: str, *key: int):
    """A ``torch.Generator`` for one named stream of :data:`STREAMS` (and a key, e.g. the batch
    size and the draw): ``SeedSequence(seed, spawn_key=(STREAMS[stream], *key))``."""
    import torch

    ss = np.random.SeedSequence(seed, spawn_key=(STREAMS[stream], *key))
    return torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))


@dataclass(frozen=True)
class NetworkConfig:
    """A network run. Defaults finish in about a minute on 2 CPU cores (MLP on digits)."""

    model: str = "mlp"  # nnhessian.models.build name, or package.module:callable
    data: str = "digits"  # a registered data set, or package.module:callable
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
    policy: str = "eval"  # BatchNorm/dropout policy (nnhessian.hvp)
    factor: str = "exact"  # finite-population factor of t: exact (N-B)/(B(N-1)) or paper
    z_crit: float = 4.0  # |z| above this is "disagrees" (two-sided Gaussian tail 6e-5)
    exact: str = "auto"  # dense exact check: auto (P <= EXACT_MAX_P), yes, no
    hvp_batch: int = 2048  # samples per chunk of a full-data pass (memory; not the Hessian)
    # GiB for gradient graphs kept across HVPs (nnhessian.hvp, "Graph cache"; 0: none):
    # speed only, the products are bit-identical at any budget
    graph_cache_gb: float = 2.0
    # GiB for the m x P Lanczos bases of the SLQ probes advanced together (nnhessian.lanczos
    # lockstep_probes; 0: one probe at a time): speed only, the numbers are bit-identical
    lockstep_gb: float = 8.0
    # CPU intra-op threads set by the command line (0: torch's default). The default model's
    # products are too small to gain from threads, and on a shared 2-core machine spin-waiting
    # OpenMP threads made the default run 5x slower (5.4 min with 2 threads, 1 min with 1).
    threads: int = 1
    # per-sample curvature and the exact batch GGN spectra (stage 6; validation.checks.
    # batch_models): "yes" or "no"; curvature_samples: a seeded subset of that many samples
    # (None: all N; C vector-Jacobian products per sample)
    curvature: str = "yes"
    curvature_samples: int | None = None

    def __post_init__(self):
        validate(self)


def validate(config: NetworkConfig) -> None:
    """Raise ``UsageError`` with one line naming what is wrong and what is accepted."""
    c = config
    require_integer("--seed", c.seed, 0, SEED_MAX, "the root of every random stream")
    if c.curvature not in ("yes", "no"):
        raise UsageError(f"--curvature must be yes or no, got {c.curvature!r}")
    if c.curvature_samples is not None and c.curvature_samples < 2:
        raise UsageError(
            f"--curvature-samples must be >= 2 (a tail needs samples), got {c.curvature_samples}"
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
    if not (math.isfinite(c.lockstep_gb) and c.lockstep_gb >= 0):
        raise UsageError(
            f"--lockstep-gb must be a number >= 0 (GiB; 0: one probe at a time), got "
            f"{c.lockstep_gb}"
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
    check_limits(c)
    if c.checkpoint is not None and not Path(c.checkpoint).is_file():
        raise UsageError(f"checkpoint {c.checkpoint} not found (expected a file from torch.save)")


def check_limits(config: NetworkConfig) -> None:
    """Upper limits, checked before any work (the lower ones are in :func:`validate`).

    Sizes are at most 2^53 (``validation.options``); thread counts at most
    :data:`THREADS_MAX` and memory budgets at most :data:`BUDGET_MAX_GB`. Then two estimates that
    need no model (P is known only once it is built): the Lanczos basis of m = min(steps, P)
    vectors of P >= m entries holds at least m^2 numbers, so ``--steps`` beyond the square root
    of the machine's memory is refused (steps are capped at P: a larger value can only mean P);
    and the work is at least :data:`MIN_SAMPLE_FLOP` per sample pass -- training epochs x N, SLQ
    probes x (1 + batch draws x batch sizes) x N, sigma^2 probes x N, with N = --samples or 2 --
    which refuses a count beyond the machine whatever the model."""
    c = config
    for option, value in (
        ("--samples", c.samples),
        ("--width", c.width),
        ("--curvature-samples", c.curvature_samples),
        ("--hvp-batch", c.hvp_batch),
        *(("--batch-sizes", B) for B in c.batch_sizes),
    ):
        if value is not None:
            require_integer(option, value, 1, EXACT_INT_MAX, "a size; 2^53: exact in float64")
    require_integer("--threads", c.threads, 0, THREADS_MAX, "0: torch's default")
    for option, value in (("--graph-cache-gb", c.graph_cache_gb), ("--lockstep-gb", c.lockstep_gb)):
        require_number(option, value, 0.0, BUDGET_MAX_GB, why="GiB")
    itemsize = 8 if c.dtype == "float64" else 4
    memory = machine_memory_bytes()
    steps_max = max(1, math.isqrt(memory // itemsize)) if memory else EXACT_INT_MAX
    require_integer(
        "--steps", c.steps, 1, steps_max, f"a Lanczos basis holds >= steps^2 {c.dtype} numbers"
    )
    if c.width is not None:  # >= width parameters, kept in >= min(steps, width) + 3 vectors
        memory = float(itemsize) * (min(c.steps, c.width) + 3) * c.width
        check_machine(f"--width {c.width:,} with --steps {c.steps:,}", memory=memory)
    N = float(c.samples if c.samples is not None else 2)
    epochs, probes, draws, sigma2 = (
        float(min(n, 10**300)) for n in (c.train_epochs, c.probes, c.batch_draws, c.sigma2_probes)
    )
    passes = N * (
        (epochs if c.checkpoint is None else 0.0)
        + probes * (1.0 + draws * len(c.batch_sizes))
        + sigma2 * len(SIGMA2_ESTIMATORS)
    )
    what = (
        f"--train-epochs {c.train_epochs:.3g}, --probes {c.probes:.3g}, --batch-draws "
        f"{c.batch_draws:.3g}, --sigma2-probes {c.sigma2_probes:.3g} at N = {N:.3g}"
    )
    check_machine(what, flops=MIN_SAMPLE_FLOP * passes)
