"""``python -m validation synthetic``: Monte-Carlo check of Theorem 2, Weyl and free convolution.

Stages (each a pure function of the config and a seed):

1. grid: for every (P, t, spikes), ``rmt.spiked_extremes`` -> ``extremes_table`` (Theorem 2,
   overlaps, fluctuation laws) and ``weyl_table`` (both Weyl bounds, per draw);
2. BBP sweep: one spike from 0 to 3 sqrt(t) at the largest P of the grid, top eigenvalue against
   Theorem 2 across the transition;
3. spectra: one dense draw of the first spike set (histogram against the semicircle and the BBP
   outliers), and one draw of a matrix with a bulk (two atoms at +-1.5 sqrt(t), not low rank)
   against ``rmt.free_convolution_density``, scored by the Wasserstein-1 distance between the
   empirical spectral measure and the prediction, with the distance between two independent draws
   as the Monte-Carlo reference.

The stages measure; ``validation.checks.synthetic`` turns their raw tables into tidy rows with
verdicts, which the run stores in ``summary.csv`` beside the raw tables.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reports.schema import VERDICTS, verdict_word
from rmt import theory
from rmt.band import band_draw_cost
from rmt.experiments import extremes_table, spiked_extremes, weyl_table
from rmt.samplers import dense_draw_cost, sample_goe, sample_spiked
from rmt.spectra import wasserstein1_to_density
from validation.checks.synthetic import synthetic_rows
from validation.errors import UsageError
from validation.options import (
    EXACT_INT_MAX,
    SEED_MAX,
    Progress,
    check_machine,
    integer,
    number,
    require_integer,
    require_number,
    spike_set,
)

DENSE_MAX_P = 4_000  # dense eigendecomposition: about 10 s per draw at this size on 2 cores
BULK_ATOMS = (-1.5, 1.5)  # in units of sqrt(t): a bulk that splits into two bands at small t
# Largest noise scale t and spike |theta| (t has units eigenvalue^2): t, theta^2, t / theta and
# the plotted eigenvalue ranges stay far from float64's 1.8e308 (t = 1e300 overflowed in the
# figures' tick computation after the whole run).
# Smallest t: t = 0 is no noise (standard errors and z-scores 0/0), and a spike more than
# SPIKE_RATIO_MAX noise edges sqrt(t) out leaves the noise below float64 rounding of the spike
# (the band solver divided 0 by 0 at |spike| / sqrt(t) = 3e15, the dense path overflowed at 3e75).
T_MIN, T_MAX = 1e-100, 1e100
SPIKE_MAX = 1e50
SPIKE_RATIO_MAX = 1e12
T_WHY = "the noise scale P s^2; 0 has no noise to test, the extremes overflow derived quantities"
SPIKE_WHY = "eigenvalues of the low-rank part; spike^2 must stay below 1e100"
# Memory held per draw until a configuration's tables are built: an ExtremeSample, its
# SeedSequence child and its Weyl row (measured 1.84 KB at n = 3, k = 4 with tracemalloc).
DRAW_RECORD_BYTES = 2_048
WEYL_ROW_BYTES = 256  # one row of weyl.csv in memory (about ten numbers and a label)


@dataclass(frozen=True)
class SyntheticConfig:
    """The grid of a synthetic run. Defaults finish in about a minute on 2 cores."""

    P: tuple[int, ...] = (1_000, 1_000_000)
    t: tuple[float, ...] = (1.0,)
    spikes: tuple[tuple[float, ...], ...] = ((3.0, 0.5, -2.0, -0.4),)
    trials: int = 300
    method: str = "band"
    seed: int = 0
    sweep_points: int = 13  # spike sizes from 0 to 3 sqrt(t); 0 skips the sweep
    histogram_P: int = 1_000  # dimension of the dense draws behind the histograms
    n_extreme: int = 3  # eigenvalues kept at each end of the spectrum
    z_crit: float = 4.0  # |z| above this is "disagrees" (two-sided Gaussian tail 6e-5)
    # The paper's parametrisation instead of t: (sigma^2, N, B, factor) gives t = P f(N, B) sigma^2
    # for each P (``rmt.theory.noise_scale``); then ``t`` is ignored.
    population: tuple[float, int, int, str] | None = None

    def noise_scales(self, P: int) -> tuple[float, ...]:
        """The noise scales t used at dimension P."""
        if self.population is None:
            return self.t
        sigma2, N, B, factor = self.population
        return (float(theory.noise_scale(sigma2, P, N, B, factor=factor)),)

    def __post_init__(self):
        validate(self)


def validate(config: SyntheticConfig) -> None:
    """Raise ``UsageError`` with one line naming what is wrong and what is accepted: the grid
    (:func:`check_grid`), the counts (:func:`check_counts`), then the estimated memory and work
    of the whole run against the machine (:func:`check_cost`)."""
    check_grid(config)
    check_counts(config)
    check_cost(config)


def check_grid(config: SyntheticConfig) -> None:
    """P, t (or the paper's sigma^2, N, B), the spike sets and the method.

    Ranges: P in [1, 2^53] (P enters float64 formulas; a band model's memory is checked first, so
    an absurd P is refused with its estimate); t in [:data:`T_MIN`, :data:`T_MAX`], |spike| <=
    :data:`SPIKE_MAX` and |spike| / sqrt(t) <= :data:`SPIKE_RATIO_MAX`, so that t, spike^2, the
    BBP positions theta + t / theta, the plotted ranges and the solvers stay finite."""
    if not config.P:
        raise UsageError("--P needs at least one dimension")
    if config.method not in ("dense", "band"):
        raise UsageError(f"unknown method {config.method!r}; accepted: dense, band")
    for P in config.P:
        if P >= 1 and config.method == "band":  # an absurd P: refused with its estimate
            k = min(max(len(spikes) for spikes in config.spikes), P)
            memory, _ = band_draw_cost(P, k, n_extreme=min(max(config.n_extreme, 1), P))
            check_machine(f"one --method band draw at --P {_show_count(P)}", memory=memory)
        if not 1 <= P <= EXACT_INT_MAX:
            raise UsageError(
                f"--P: P must be an integer >= 1 and <= {EXACT_INT_MAX:,} (2^53: exact in "
                f"float64), got {_show_count(P)}"
            )
    if config.method == "dense" and max(config.P) > DENSE_MAX_P:
        raise UsageError(
            f"--method dense supports P <= {DENSE_MAX_P:,}, got {max(config.P):,}; "
            "use --method band for larger P"
        )
    for spikes in config.spikes:
        for s in spikes:
            require_number("--spikes", s, -SPIKE_MAX, SPIKE_MAX, why=SPIKE_WHY)
        if len(spikes) > min(config.P):
            raise UsageError(f"rank {len(spikes)} exceeds the smallest P = {min(config.P)}")
    if config.population is None:
        for t in config.t:
            require_number("--t", t, T_MIN, T_MAX, why=T_WHY)
    else:
        check_population(config)
    for P in _dimensions(config):
        _check_spike_ratio(config, min(config.noise_scales(P)))


def _dimensions(config: SyntheticConfig) -> tuple[int, ...]:
    """The P of the grid and, when in its range, the histogram's (each has its own t)."""
    histogram = (config.histogram_P,) if 10 <= config.histogram_P <= DENSE_MAX_P else ()
    return (*config.P, *histogram)


def _check_spike_ratio(config: SyntheticConfig, t: float) -> None:
    """|spike| / sqrt(t) <= SPIKE_RATIO_MAX for every spike (see the constant)."""
    largest = max((abs(s) for spikes in config.spikes for s in spikes), default=0.0)
    if largest > SPIKE_RATIO_MAX * math.sqrt(t):
        raise UsageError(
            f"--spikes {largest:g} is {largest / math.sqrt(t):.3g} noise edges sqrt(t) out at "
            f"t = {t:g}; |spike| / sqrt(t) must be <= {SPIKE_RATIO_MAX:g} (beyond, the noise is "
            "below the rounding of the spike)"
        )


def check_population(config: SyntheticConfig) -> None:
    """The paper's parametrisation: sigma^2 >= 0, N in [2, 2^53], B in [1, N], a known factor,
    and the noise scale t = P f(N, B) sigma^2 it gives at every P in [T_MIN, T_MAX]."""
    sigma2, N, B, factor = config.population
    if not (math.isfinite(sigma2) and sigma2 >= 0):  # 0: refused below with its t = 0
        raise UsageError(f"--sigma2 must be a finite number >= 0 (a variance), got {sigma2}")
    require_integer("--N", N, 2, EXACT_INT_MAX, "training-set size; 2^53: exact in float64")
    if B <= 0 or B > N:
        raise UsageError(f"--B must be between 1 and N = {N} (without replacement), got {B}")
    if factor not in theory.FACTORS:
        raise UsageError(f"unknown factor {factor!r}; accepted: {', '.join(theory.FACTORS)}")
    for P in _dimensions(config):
        with np.errstate(all="ignore"):
            t = float(theory.noise_scale(sigma2, P, N, B, factor=factor))
        if not T_MIN <= t <= T_MAX:
            raise UsageError(
                f"--sigma2 {sigma2:g} gives a noise scale t = {t:g} at P = {P:,} (N = {N:,}, "
                f"B = {B:,}); t = P f(N, B) sigma^2 must lie in [{T_MIN:g}, {T_MAX:g}] ({T_WHY})"
            )


def check_counts(config: SyntheticConfig) -> None:
    """Trials, seed, sweep points, histogram dimension, extremes and the z threshold."""
    if config.trials < 2:
        raise UsageError(f"--trials must be >= 2 (a standard error needs two), got {config.trials}")
    require_integer("--seed", config.seed, 0, SEED_MAX, "the root of every random stream")
    if config.n_extreme < 1 or config.n_extreme > min(config.P):
        raise UsageError(f"--n-extreme must be between 1 and min(P) = {min(config.P)}")
    if config.sweep_points < 0:
        raise UsageError(f"--sweep-points must be >= 0, got {config.sweep_points}")
    if not 10 <= config.histogram_P <= DENSE_MAX_P:
        raise UsageError(f"--histogram-P must be between 10 and {DENSE_MAX_P:,}")
    if not np.isfinite(config.z_crit) or config.z_crit <= 0:
        raise UsageError(f"--z-crit must be a positive number, got {config.z_crit}")


def draw_cost(method: str, P: int, k: int, n_extreme: int) -> tuple[float, float]:
    """Estimated peak bytes and flops of one draw (``rmt.samplers.dense_draw_cost``,
    ``rmt.band.band_draw_cost``)."""
    if method == "dense":
        return dense_draw_cost(P)
    return band_draw_cost(P, k, n_extreme=n_extreme)


def check_cost(config: SyntheticConfig) -> None:
    """The run's memory and work against the machine (``validation.options.check_machine``).

    Memory: the largest single draw (grid, BBP sweep at max P with one spike, dense histogram
    draws), plus :data:`DRAW_RECORD_BYTES` per draw of the configuration being measured and
    :data:`WEYL_ROW_BYTES` per draw of every configuration (its Weyl rows are kept). Work: trials
    x (grid configurations + sweep points) draws at their estimated flops, plus two histogram
    draws."""
    c = config
    scales = 1 if c.population is not None else len(c.t)
    grid = [(P, len(spikes)) for P in c.P for spikes in c.spikes]
    costs = [draw_cost(c.method, P, k, c.n_extreme) for P, k in grid]
    for (P, _), (memory, _) in zip(grid, costs, strict=True):
        check_machine(f"one --method {c.method} draw at --P {_show_count(P)}", memory=memory)
    sweep = draw_cost(c.method, max(c.P), 1, 1) if c.sweep_points else (0.0, 0.0)
    histogram = dense_draw_cost(c.histogram_P)
    configs, trials = len(grid) * scales, float(c.trials)
    memory = max(max(m for m, _ in costs), sweep[0], histogram[0])
    memory += trials * (DRAW_RECORD_BYTES + WEYL_ROW_BYTES * configs) + 64.0 * c.sweep_points
    flops = trials * (scales * sum(f for _, f in costs) + c.sweep_points * sweep[1])
    what = (
        f"--trials {_show_count(c.trials)} x ({configs:,} configurations + --sweep-points "
        f"{_show_count(c.sweep_points)}) = {trials * (configs + c.sweep_points):.3g} draws"
    )
    check_machine(what, memory=memory, flops=flops + 2.0 * histogram[1])


def _show_count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"{n:.3g}"


@dataclass(frozen=True)
class SpectrumDraw:
    """Eigenvalues of one dense draw with the predicted density on a grid."""

    eigenvalues: np.ndarray  # (P,)
    grid: np.ndarray  # (G,)
    density: np.ndarray  # (G,) predicted density
    outliers: np.ndarray  # (m,) predicted outlier positions
    label: str  # what the prediction is


@dataclass(frozen=True)
class SyntheticResult:
    config: SyntheticConfig
    extremes: pd.DataFrame  # one row per compared eigenvalue and configuration
    weyl: pd.DataFrame  # one row per draw and configuration
    sweep: pd.DataFrame  # top-eigenvalue rows across the BBP transition
    free_convolution: pd.DataFrame  # W1 distances of the bulk draw
    spiked_spectrum: SpectrumDraw
    bulk_spectrum: SpectrumDraw | None  # None when t = 0 (no noise, nothing to convolve)
    timings: dict  # seconds per stage


def run_synthetic(config: SyntheticConfig, *, progress=None) -> SyntheticResult:
    """Run every stage of ``config``; ``progress(stage, done, total)`` reports as work proceeds."""
    progress = progress or (lambda *a: None)
    grid = [
        (P, t, spikes) for P in config.P for t in config.noise_scales(P) for spikes in config.spikes
    ]
    streams = np.random.SeedSequence(config.seed).spawn(len(grid) + 3)
    timings = {}

    start = time.perf_counter()
    extremes, weyl = [], []
    for n, ((P, t, spikes), stream) in enumerate(zip(grid, streams, strict=False)):
        label = f"grid {n + 1}/{len(grid)}: P={P:,} t={t:g} spikes=({_fmt(spikes)})"
        result = spiked_extremes(
            spikes,
            t,
            P,
            trials=config.trials,
            method=config.method,
            rng=np.random.default_rng(stream),
            n_extreme=config.n_extreme,
            progress=lambda done, label=label: progress(label, done, config.trials),
        )
        extremes.append(extremes_table(result))
        weyl.append(weyl_table(result))
    timings["grid"] = time.perf_counter() - start

    start = time.perf_counter()
    sweep = bbp_sweep(config, rng=np.random.default_rng(streams[len(grid)]), progress=progress)
    timings["sweep"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("spectra", 0, 2)
    spiked = spiked_spectrum(config, rng=np.random.default_rng(streams[len(grid) + 1]))
    progress("spectra", 1, 2)
    bulk, free = bulk_spectrum(config, rng=np.random.default_rng(streams[len(grid) + 2]))
    progress("spectra", 2, 2)
    timings["spectra"] = time.perf_counter() - start

    return SyntheticResult(
        config=config,
        extremes=pd.concat(extremes, ignore_index=True),
        weyl=pd.concat(weyl, ignore_index=True),
        sweep=sweep,
        free_convolution=free,
        spiked_spectrum=spiked,
        bulk_spectrum=bulk,
        timings=timings,
    )


def bbp_sweep(config: SyntheticConfig, *, rng, progress) -> pd.DataFrame:
    """Top eigenvalue for one spike theta in [0, 3 sqrt(t)] at the largest P (Theorem 2 curve)."""
    if config.sweep_points == 0:
        return pd.DataFrame()
    P = max(config.P)
    t = config.noise_scales(P)[0]
    thetas = np.linspace(0.0, 3.0, config.sweep_points) * np.sqrt(t)
    rows = []
    for i, theta in enumerate(thetas):
        result = spiked_extremes(
            [theta],
            t,
            P,
            trials=config.trials,
            method=config.method,
            rng=rng,
            n_extreme=1,
            noise_norm=False,
        )
        table = extremes_table(result)
        rows.append(table[(table.side == "top") & (table["index"] == 1)])
        progress("BBP sweep", i + 1, len(thetas))
    sweep = pd.concat(rows, ignore_index=True)
    sweep["spike"] = thetas
    return sweep


def spiked_spectrum(config: SyntheticConfig, *, rng) -> SpectrumDraw:
    """One dense draw of the first spike set: all eigenvalues, semicircle, BBP outliers."""
    P, spikes = config.histogram_P, np.asarray(config.spikes[0], dtype=float)
    t = config.noise_scales(P)[0]
    M, _, _ = sample_spiked(spikes, t, P, rng=rng)
    eigenvalues = np.linalg.eigvalsh(M)
    edge = float(theory.semicircle_edge(t))
    outliers = theory.bbp_outlier(spikes[np.abs(spikes) > np.sqrt(t)], t)
    lo = min(-edge, float(eigenvalues.min())) * 1.05
    hi = max(edge, float(eigenvalues.max())) * 1.05
    grid = np.linspace(lo, hi, 600)
    return SpectrumDraw(
        eigenvalues=eigenvalues,
        grid=grid,
        density=theory.semicircle_density(grid, t) if t > 0 else np.zeros_like(grid),
        outliers=np.asarray(outliers),
        label=f"semicircle, t = {t:g}",
    )


def bulk_spectrum(config: SyntheticConfig, *, rng) -> tuple[SpectrumDraw, pd.DataFrame]:
    """A + W with A's spectrum two equal atoms at +-1.5 sqrt(t): free convolution vs two draws.

    The row of the returned table holds the W1 distance of the first draw to the prediction
    (``predicted`` 0, ``measured``) and the W1 distance between the two draws (``uncertainty``),
    the Monte-Carlo scale the check compares with."""
    P = config.histogram_P
    from rmt.freeconv import free_convolution_density, free_convolution_support

    t = config.noise_scales(P)[0]
    if t == 0:
        return None, pd.DataFrame()
    atoms = np.asarray(BULK_ATOMS) * np.sqrt(t)
    weights = np.full(atoms.size, 1.0 / atoms.size)
    diagonal = np.repeat(atoms, P // atoms.size + 1)[:P]
    draws = []
    for stream in np.random.SeedSequence(int(rng.integers(2**63))).spawn(2):
        W = sample_goe(P, t=t, rng=np.random.default_rng(stream))
        draws.append(np.linalg.eigvalsh(np.diag(diagonal) + W))
    support = free_convolution_support(atoms, weights, t)
    # the grid covers the support and every sampled eigenvalue (at small P some lie outside)
    lo = min(support[0][0], min(d[0] for d in draws))
    hi = max(support[-1][1], max(d[-1] for d in draws))
    pad = 0.05 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, 2001)
    density = free_convolution_density(atoms, weights, t, grid)
    measured = wasserstein1_to_density(draws[0], grid, density)
    reference = float(np.mean(np.abs(np.sort(draws[0]) - np.sort(draws[1]))))
    free = pd.DataFrame(
        [
            {
                "P": P,
                "t": t,
                "atoms": _fmt(atoms),
                "quantity": "W1(empirical spectrum, free convolution)",
                "predicted": 0.0,
                "measured": measured,
                "uncertainty": reference,
                "support": "; ".join(f"[{a:.4f}, {b:.4f}]" for a, b in support),
            }
        ]
    )
    draw = SpectrumDraw(
        eigenvalues=draws[0],
        grid=grid,
        density=density,
        outliers=np.empty(0),
        label=f"free convolution, atoms ({_fmt(atoms)}), t = {t:g}",
    )
    return draw, free


def _fmt(values) -> str:
    return " ".join(f"{v:g}" for v in np.asarray(values, dtype=float))


def summary_rows(result: SyntheticResult) -> pd.DataFrame:
    """The tidy rows of ``result`` with their verdicts (``validation.checks.synthetic``)."""
    return synthetic_rows(
        result.extremes,
        result.sweep,
        result.weyl,
        result.free_convolution,
        z_crit=result.config.z_crit,
    )


def theorem2_counts(summary: pd.DataFrame) -> dict:
    """Rows of check ``theorem2`` per verdict word."""
    words = summary.loc[summary["check"] == "theorem2", "verdict"].map(verdict_word)
    counts = words.value_counts().to_dict()
    return {v: int(counts[v]) for v in VERDICTS if v in counts}


def write_synthetic(result: SyntheticResult, out, *, started, wall_seconds: float) -> pd.DataFrame:
    """Write tables, the tidy rows (``summary.csv``), figures and ``results.json`` (with
    provenance) into ``out``, atomically; return the tidy rows."""
    from reports import figures
    from validation.store import provenance, result_folder

    config = result.config
    summary = summary_rows(result)
    with result_folder(out) as w:
        w.csv("extremes.csv", result.extremes)
        w.csv("weyl.csv", result.weyl)
        w.csv("summary.csv", summary)
        if not result.sweep.empty:
            w.csv("bbp_sweep.csv", result.sweep)
            fig, (ax,) = figures.new_figure()
            P = max(config.P)
            figures.bbp_transition(ax, result.sweep, t=config.noise_scales(P)[0], P=P)
            w.figure("bbp_transition.png", fig)
        if not result.free_convolution.empty:
            w.csv("free_convolution.csv", result.free_convolution)

        draws = [d for d in (result.spiked_spectrum, result.bulk_spectrum) if d is not None]
        fig, axes = figures.new_figure(len(draws))
        for ax, draw in zip(axes, draws, strict=True):
            figures.spectrum_histogram(
                ax,
                draw.eigenvalues,
                draw.grid,
                draw.density,
                label=draw.label,
                outliers=draw.outliers,
            )
        w.figure("spectrum_histogram.png", fig)

        fig, (ax,) = figures.new_figure()
        figures.weyl_slack(ax, result.weyl)
        w.figure("weyl_slack.png", fig)

        weyl = result.weyl.groupby(["P", "t", "spikes"], sort=False).agg(
            draws=("trial", "size"),
            exact_holds=("exact_holds", "mean"),
            paper_holds=("paper_holds", "mean"),
            min_exact_slack=("exact_slack", "min"),
            median_paper_slack=("paper_slack", "median"),
        )
        w.json(
            "results.json",
            {
                "kind": "synthetic",
                "provenance": provenance(config, started=started, wall_seconds=wall_seconds),
                "timings_seconds": {k: round(v, 3) for k, v in result.timings.items()},
                "verdicts": theorem2_counts(summary),
                "weyl": weyl.reset_index().to_dict(orient="records"),
                "free_convolution": result.free_convolution.to_dict(orient="records"),
                "files": w.manifest(),
            },
        )
    return summary


# ---------------------------------------------------------------------------------------------
# command line


def add_parser(sub) -> None:
    d = SyntheticConfig()
    syn = sub.add_parser(
        "synthetic",
        help="Monte-Carlo check of Theorem 2, Weyl bounds, overlaps and free convolution",
        description="Draw low rank + GOE matrices over a grid and compare with theory.",
    )
    syn.add_argument("--P", type=integer, nargs="+", default=list(d.P), help="dimensions")
    syn.add_argument("--t", type=number, nargs="+", default=list(d.t), help="noise scales P s^2")
    syn.add_argument(
        "--sigma2",
        type=number,
        help="paper's parametrisation instead of --t: t = P f(N, B) sigma^2 (needs --N and --B)",
    )
    syn.add_argument("--N", type=integer, help="training-set size (with --sigma2)")
    syn.add_argument("--B", type=integer, help="batch size, drawn without replacement")
    syn.add_argument(
        "--factor", default="paper", help="finite-population factor: paper (N-B)/(BN) or exact"
    )
    syn.add_argument(
        "--spikes",
        type=spike_set,
        nargs="+",
        default=list(d.spikes),
        help="spike sets, each comma-separated, e.g. --spikes 3,0.5,-2 1.5 (none: pure GOE)",
    )
    syn.add_argument("--trials", type=integer, default=d.trials, help="draws per configuration")
    syn.add_argument("--method", default=d.method, help="dense (P <= 4,000) or band (any P)")
    syn.add_argument("--seed", type=integer, default=d.seed, help="root of all random streams")
    syn.add_argument(
        "--sweep-points", type=integer, default=d.sweep_points, help="BBP sweep size (0: none)"
    )
    syn.add_argument(
        "--histogram-P", type=integer, default=d.histogram_P, help="P of the histogram draws"
    )
    syn.add_argument("--n-extreme", type=integer, default=d.n_extreme, help="eigenvalues per end")
    syn.add_argument("--z-crit", type=number, default=d.z_crit, help="|z| above it: disagrees")
    syn.add_argument("--out", type=Path, default=Path("results/synthetic"), help="result folder")
    syn.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args) -> SyntheticConfig:
    """The frozen config of parsed arguments; ``UsageError`` (one line) when they are bad."""
    given = [name for name in ("sigma2", "N", "B") if getattr(args, name) is not None]
    if given and len(given) < 3:
        missing = sorted({"sigma2", "N", "B"} - set(given))
        raise UsageError(f"--sigma2, --N and --B go together; missing --{', --'.join(missing)}")
    population = (args.sigma2, args.N, args.B, args.factor) if given else None
    return SyntheticConfig(
        population=population,
        P=tuple(args.P),
        t=tuple(args.t),
        spikes=tuple(args.spikes),
        trials=args.trials,
        method=args.method,
        seed=args.seed,
        sweep_points=args.sweep_points,
        histogram_P=args.histogram_P,
        n_extreme=args.n_extreme,
        z_crit=args.z_crit,
    )


def result_identity(args) -> tuple[str, SyntheticConfig]:
    """Kind and configuration of the folder this command writes (``validation.store.check_out``)."""
    return "synthetic", config_from_args(args)


def command(args, started) -> int:
    """Run the configuration of ``args`` and write it to ``args.out``."""
    config = config_from_args(args)
    clock = time.perf_counter()
    with Progress(enabled=not args.quiet) as progress:
        result = run_synthetic(config, progress=progress)
    summary = write_synthetic(
        result, args.out, started=started, wall_seconds=time.perf_counter() - clock
    )
    counts = theorem2_counts(summary)
    text = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    print(f"synthetic: {text}; results in {args.out}")
    return 0
