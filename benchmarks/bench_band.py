"""Benchmark of the exact band model (``rmt.band``) at the paper's VGG16 size.

    python benchmarks/bench_band.py                  # rank 1 and rank 8 at P = 15,291,300
    python benchmarks/bench_band.py --repeats 10 --json out.json --dsbevx

Each row draws ``--repeats`` independent samples with ``band_extremes`` (top 3 and bottom 3
eigenvalues with squared overlaps; with and without ``||W||_2``) and reports the median and the
worst seconds per sample (target: <= 1 s on the 2-core dev machine), the truncated rows L, the
band's own storage and the tracemalloc peak of one draw (Python/numpy allocations: memory grows
like k^2 P^(1/3) -- the P^(1/3) of L -- not like P; rows at P = 1e6 and 1e9 show it). ``--dsbevx``
adds the rejected alternative: LAPACK's band reduction (``scipy.linalg.eig_banded(select='i')``,
eigenvalues only) on the same rank-8 band, O(L^2 k).

Timings depend on the BLAS thread count and on machine load (OpenBLAS threads contend on a busy
2-core machine; ``OPENBLAS_NUM_THREADS=1`` is often faster there). Needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmt.band import band_extremes, band_matrix, truncation_rows  # noqa: E402

P_PAPER = 15_291_300  # VGG16 parameters (paper, section 4)
CASES = [
    # (label, spikes, P)
    ("rank 1, outlier", [3.0], P_PAPER),
    ("rank 1, edge only", [0.0], P_PAPER),
    ("rank 8, outliers", list(np.linspace(-4.0, 4.0, 8)), P_PAPER),
    ("rank 8, edge only", [0.0] * 8, P_PAPER),
    ("rank 8, edge only", [0.0] * 8, 10**6),
    ("rank 1, edge only", [0.0], 10**9),
]


def _time_case(spikes, P, repeats, noise_norm):
    seeds = np.random.SeedSequence(20240101).spawn(repeats + 1)
    band_extremes(spikes, 1.0, P, noise_norm=noise_norm, rng=np.random.default_rng(seeds[0]))
    times = []
    for child in seeds[1:]:
        t0 = time.perf_counter()
        band_extremes(spikes, 1.0, P, noise_norm=noise_norm, rng=np.random.default_rng(child))
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    band_extremes(spikes, 1.0, P, noise_norm=noise_norm, rng=np.random.default_rng(seeds[0]))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), max(times), peak


def _dsbevx_seconds(spikes, P):
    L = truncation_rows(P, len(spikes))
    ab = band_matrix(spikes, 1.0, P, rows=L, rng=0)
    t0 = time.perf_counter()
    scipy.linalg.eig_banded(
        ab, lower=True, eigvals_only=True, select="i", select_range=(L - 3, L - 1)
    )
    return time.perf_counter() - t0, L


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="samples per row (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--dsbevx", action="store_true", help="also time LAPACK dsbevx on the rank-8 band (~10 s)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    print(
        f"# rmt.band benchmark: numpy {np.__version__}, scipy {scipy.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    header = (
        f"{'case':<20} {'P':>13} {'L':>7} {'||W||':>5} {'median s':>9} {'max s':>7} "
        f"{'band MB':>8} {'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for label, spikes, P in CASES:
        L = truncation_rows(P, len(spikes))
        band_mb = (max(len(spikes), 1) + 1) * L * 8 / 2**20
        for noise_norm in (False, True):
            med, worst, peak = _time_case(spikes, P, args.repeats, noise_norm)
            rows.append(
                dict(
                    case=label,
                    rank=len(spikes),
                    P=P,
                    rows=L,
                    noise_norm=noise_norm,
                    median_s=med,
                    max_s=worst,
                    band_mb=band_mb,
                    tracemalloc_peak_mb=peak / 2**20,
                )
            )
            print(
                f"{label:<20} {P:>13,} {L:>7} {'yes' if noise_norm else 'no':>5} {med:>9.3f} "
                f"{worst:>7.3f} {band_mb:>8.2f} {peak / 2**20:>8.1f}"
            )
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss_mb:.0f} MB")
    if args.dsbevx:
        seconds, L = _dsbevx_seconds(CASES[2][1], P_PAPER)
        print(f"LAPACK dsbevx, rank 8, L = {L}, top-3 eigenvalues only: {seconds:.1f} s")
        rows.append(dict(case="dsbevx rank 8 top-3 values", rows=L, seconds=seconds))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
