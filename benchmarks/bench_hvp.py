"""Benchmark of the Hessian-vector products and of Lanczos overhead on the offline digits data.

    python benchmarks/bench_hvp.py                      # all small models, batch 256, float32
    python benchmarks/bench_hvp.py --models mlp --batch-size 1797 --repeats 20 --json out.json

For each model and HVP implementation ("forward-over-reverse": torch.func.jvp of torch.func.grad;
"double-backward": autograd.grad twice) it reports, on the same data and batching:

* ``grad_ms``  -- one full-data pass computing the mean gradient (autograd, no graph kept);
* ``hvp_ms``   -- one full-data Hessian-vector product; ``ratio = hvp / grad`` (target <= 2.0);
* Lanczos at m = 100 (paper, section 4) with the default method: total time, the time spent
  inside ``matvec``, and the overhead share ``(total - matvec) / total`` (target <= 10%).

``--compare-curvlinops`` also times curvlinops' ``HessianLinearOperator`` on the same data (an
optional third-party reference, never a test dependency; skipped when not installed) and reports
the relative difference of the products.

Times are medians over ``--repeats`` after one warm-up call. Uses torch's intra-op thread count
(``--threads`` overrides). Needs no GPU; ``--device cuda`` measures there when present.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnhessian.data import load_digits  # noqa: E402
from nnhessian.lanczos import lanczos  # noqa: E402
from nnhessian.models import build, num_parameters  # noqa: E402
from nnhessian.operators import AUTO_ORDER, HessianOperator, resolve_device  # noqa: E402

METHODS = ("forward-over-reverse", "double-backward")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _TimedOperator:
    """Forwards to an operator and accumulates the wall time spent in ``matvec``."""

    def __init__(self, op) -> None:
        self.op = op
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device
        self.seconds = 0.0

    def matvec(self, v):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.op.matvec(v)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        return out


def bench_curvlinops(model, data, *, batch_size, repeats, op, v):
    """Time curvlinops' Hessian product on the same batches (model in eval mode)."""
    try:
        with warnings.catch_warnings():  # its dependencies use the deprecated torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from curvlinops import HessianLinearOperator
    except ImportError:
        return None
    m = copy.deepcopy(model).to(device=op.device, dtype=op.dtype).eval()
    params = [p for p in m.parameters() if p.requires_grad]
    batches = [(X.to(op.device, op.dtype), y.to(op.device)) for X, y in data.batches(batch_size)]
    H = HessianLinearOperator(
        m, torch.nn.CrossEntropyLoss(reduction="mean"), params, batches, check_deterministic=False
    )
    t = _median_time(lambda: H @ v, repeats, op.device)
    ours = op.matvec(v)
    diff = float(torch.linalg.vector_norm(H @ v - ours) / torch.linalg.vector_norm(ours))
    return {"hvp_ms": 1e3 * t, "rel_diff": diff}


def bench_model(name, *, batch_size, repeats, dtype, device, lanczos_steps, compare=False):
    images = name != "mlp"
    data = load_digits(images=images)
    model = build(name, 10, generator=torch.Generator().manual_seed(0))
    rows = []
    for method in METHODS:
        op = HessianOperator.full(
            model,
            data,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            method=method,
            progress=False,
            verify=False,
        )
        v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        v = v.to(device=op.device, dtype=op.dtype)
        t_grad = _median_time(op.loss_and_gradient, repeats, op.device)
        t_hvp = _median_time(lambda op=op, v=v: op.matvec(v), repeats, op.device)
        rows.append(
            {
                "model": name,
                "P": num_parameters(model),
                "N": len(data),
                "batch_size": batch_size,
                "method": method,
                "grad_ms": 1e3 * t_grad,
                "hvp_ms": 1e3 * t_hvp,
                "ratio": t_hvp / t_grad,
            }
        )
    if compare:
        cl = bench_curvlinops(model, data, batch_size=batch_size, repeats=repeats, op=op, v=v)
        if cl is not None:
            rows.append(
                {
                    "model": name,
                    "P": num_parameters(model),
                    "N": len(data),
                    "batch_size": batch_size,
                    "method": "curvlinops",
                    "grad_ms": rows[-1]["grad_ms"],
                    "hvp_ms": cl["hvp_ms"],
                    "ratio": cl["hvp_ms"] / rows[-1]["grad_ms"],
                    "rel_diff_vs_ours": cl["rel_diff"],
                }
            )
    op = HessianOperator.full(
        model, data, batch_size=batch_size, dtype=dtype, device=device, progress=False, verify=False
    )
    timed = _TimedOperator(op)
    _sync(op.device)
    t0 = time.perf_counter()
    res = lanczos(timed, lanczos_steps, generator=torch.Generator().manual_seed(2), progress=False)
    _sync(op.device)
    total = time.perf_counter() - t0
    lz = {
        "model": name,
        "method": op.method,
        "steps": res.steps,
        "total_s": total,
        "matvec_s": timed.seconds,
        "overhead_share": (total - timed.seconds) / total,
        "breakdown": res.breakdown,
    }
    return rows, lz


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "cnn_bn"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lanczos-steps", type=int, default=100)
    parser.add_argument("--compare-curvlinops", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}, {args.dtype}, "
        f"batch {args.batch_size}, median of {args.repeats}; auto order {AUTO_ORDER}"
    )
    all_rows, all_lz = [], []
    print(f"{'model':8} {'P':>5} {'method':22} {'grad ms':>9} {'hvp ms':>9} {'hvp/grad':>9}")
    for name in args.models:
        rows, lz = bench_model(
            name,
            batch_size=args.batch_size,
            repeats=args.repeats,
            dtype=dtype,
            device=device,
            lanczos_steps=args.lanczos_steps,
            compare=args.compare_curvlinops,
        )
        for r in rows:
            print(
                f"{r['model']:8} {r['P']:5d} {r['method']:22} {r['grad_ms']:9.2f} "
                f"{r['hvp_ms']:9.2f} {r['ratio']:9.2f}"
                + (f"  (|diff| {r['rel_diff_vs_ours']:.1e})" if "rel_diff_vs_ours" in r else "")
            )
        all_rows += rows
        all_lz.append(lz)
    print(f"\nLanczos m = {args.lanczos_steps} (full reorthogonalisation), default method")
    print(f"{'model':8} {'method':22} {'total s':>8} {'matvec s':>9} {'overhead':>9}")
    for lz in all_lz:
        print(
            f"{lz['model']:8} {lz['method']:22} {lz['total_s']:8.2f} {lz['matvec_s']:9.2f} "
            f"{100 * lz['overhead_share']:8.1f}%"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "hvp": all_rows,
                    "lanczos": all_lz,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": str(device),
                    "dtype": args.dtype,
                    "batch_size": args.batch_size,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
