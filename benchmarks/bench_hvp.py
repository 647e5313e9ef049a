"""Benchmark of the Hessian-vector products and of Lanczos overhead on the offline digits data.

    python benchmarks/bench_hvp.py                      # all small models, batch 256, float32
    python benchmarks/bench_hvp.py --models mlp --batch-size 1797 --repeats 20 --json out.json

For each model it times, on the same data and batching, three operators: each HVP
implementation from scratch ("forward-over-reverse": torch.func.jvp of torch.func.grad;
"double-backward": autograd.grad twice; graph cache off), and the default operator
("double-backward + cache": each batch's gradient graph kept across products, as Lanczos uses it;
timed at steady state, after the warm-up product has built the graphs). It reports:

* ``grad_ms``  -- one full-data pass computing the mean gradient (autograd, no graph kept);
* ``hvp_ms``   -- one full-data Hessian-vector product; ``ratio = hvp / grad`` (target <= 2.0);
* ``graphs`` / ``cache MB`` -- batches whose graph is kept, and their measured size;
* Lanczos at m = 100 (paper, section 4) with the default operator: total time, the time spent
  inside ``matvec``, and the overhead share ``(total - matvec) / total`` (target <= 10%).

``--compare`` (default: all of curvlinops pyhessian eigenthings; ``--compare none`` for none)
times third-party full-data HVPs against ours (double-backward from scratch, like theirs) on
the same model and weights (a deep copy per tool, eval mode, our dtype and device) and the same
list of batches -- consecutive, the last one uneven unless ``--batch-size`` divides N = 1797:

* curvlinops: ``HessianLinearOperator(model, CrossEntropyLoss(), params, batches) @ v``;
* PyHessian: ``hessian(model, CrossEntropyLoss(), dataloader=batches).dataloader_hv_product``;
* hessian-eigenthings: ``HessianOperator(model, batches, supervised_loss(...),
  full_dataset=True).matvec`` (1.x), or the legacy ``hvp_operator.HVPOperator(...).apply``.

Per tool: ms per HVP, ``tool/ours``, ``rel diff = ||Hv_tool - Hv_ours|| / ||Hv_ours||``, and the
distance to ``(1/K) sum_b H_b v``, the unweighted mean over the K batch Hessians (computed with
our ``HessianOperator.batch``). With an uneven last batch this tells how a tool averages: by
sample count ``n_b / N`` (exact, as ours) or ``1/K`` per batch (hessian-eigenthings 1.0.0a5
divides by the number of batches, which over-weights the short last batch). These are optional
third-party references (``pip install .[bench]``), never test dependencies; a tool that is not
installed or fails is reported as skipped with the reason.

Times are medians over ``--repeats`` after one warm-up call; a gradient pass and an HVP are
timed alternately, so load changes on a shared machine hit both sides of their ratio. Uses
torch's intra-op thread count (``--threads`` overrides). Needs no GPU; ``--device cuda`` measures
there when present.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
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
from nnhessian.hvp import AUTO_ORDER  # noqa: E402
from nnhessian.lanczos import lanczos  # noqa: E402
from nnhessian.models import build, num_parameters  # noqa: E402
from nnhessian.operators import (  # noqa: E402
    DEFAULT_GRAPH_CACHE_BYTES,
    HessianOperator,
    resolve_device,
)

# (method, graph cache budget): both implementations from scratch, then the default operator
# (double-backward, graph cache on), timed at steady state (the warm-up call builds the graphs).
VARIANTS = (
    ("forward-over-reverse", 0),
    ("double-backward", 0),
    ("double-backward", DEFAULT_GRAPH_CACHE_BYTES),
)


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


def _paired_median_times(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median times of ``fn_a`` and ``fn_b`` called alternately (after one warm-up call each),
    so that a change in machine load hits both sides of their ratio alike."""
    fn_a()
    fn_b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


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


TOOLS = ("curvlinops", "pyhessian", "eigenthings")
_DISTRIBUTIONS = {
    "curvlinops": "curvlinops-for-pytorch",
    "pyhessian": "PyHessian",
    "eigenthings": "hessian-eigenthings",
}


class _Skip(Exception):
    """A third-party tool that cannot run: not installed, or an API this script does not know."""


def _version(tool: str) -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[tool])
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split_like(v: torch.Tensor, params) -> list[torch.Tensor]:
    sizes = [p.numel() for p in params]
    return [t.view_as(p) for t, p in zip(torch.split(v, sizes), params, strict=True)]


def _curvlinops_hvp(model, batches):
    """curvlinops' ``HessianLinearOperator``: batches weighted by ``n_b / N`` (mean reduction)."""
    try:
        with warnings.catch_warnings():  # its dependencies use the deprecated torch.jit.script
            warnings.simplefilter("ignore", FutureWarning)
            from curvlinops import HessianLinearOperator
    except ImportError as exc:
        raise _Skip(f"not installed ({exc})") from exc
    params = [p for p in model.parameters() if p.requires_grad]
    H = HessianLinearOperator(
        model,
        torch.nn.CrossEntropyLoss(reduction="mean"),
        params,
        batches,
        check_deterministic=False,
    )
    return lambda v: H @ v


def _pyhessian_hvp(model, batches):
    """PyHessian's ``hessian(..., dataloader=...).dataloader_hv_product`` (weights by ``n_b``)."""
    try:
        from pyhessian import hessian
    except ImportError as exc:
        raise _Skip(f"not installed ({exc})") from exc
    device = next(model.parameters()).device
    H = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")

    def hvp(v):
        _, Hv = H.dataloader_hv_product(_split_like(v, H.params))
        return _flat(Hv)

    return hvp


def _eigenthings_hvp(model, batches):
    """hessian-eigenthings' full-data operator (averages the batch Hessians, ``1/K`` each).

    Its current API (1.x: ``HessianOperator(model, dataloader, loss_fn, full_dataset=True)``) and
    the legacy one (0.x: ``hvp_operator.HVPOperator(model, dataloader, criterion, use_gpu=...,
    full_dataset=True).apply``) are both tried.
    """
    try:
        import hessian_eigenthings as he
    except ImportError as exc:
        raise _Skip(f"not installed ({exc})") from exc
    device = next(model.parameters()).device
    criterion = torch.nn.CrossEntropyLoss()
    if hasattr(he, "HessianOperator") and hasattr(he, "supervised_loss"):
        H = he.HessianOperator(model, batches, he.supervised_loss(criterion), full_dataset=True)
        return H.matvec
    try:
        from hessian_eigenthings.hvp_operator import HVPOperator
    except ImportError as exc:
        raise _Skip(f"neither HessianOperator nor hvp_operator.HVPOperator found ({exc})") from exc
    H = HVPOperator(model, batches, criterion, use_gpu=device.type == "cuda", full_dataset=True)
    return H.apply


_TOOL_HVPS = {
    "curvlinops": _curvlinops_hvp,
    "pyhessian": _pyhessian_hvp,
    "eigenthings": _eigenthings_hvp,
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _batch_count_mean(model, data, *, batch_size, op, method, v) -> torch.Tensor:
    """``(1/K) sum_b H_b v`` over the same K batches (what a tool dividing by K computes)."""
    acc = torch.zeros_like(v)
    N, K = len(data), data.num_batches(batch_size)
    for start in range(0, N, batch_size):
        hb = HessianOperator.batch(
            model,
            data,
            list(range(start, min(start + batch_size, N))),
            dtype=op.dtype,
            device=op.device,
            method=method,
            progress=False,
            verify=False,
        )
        acc += hb.matvec(v)
    return acc / K


def compare_tools(tools, model, data, *, batch_size, repeats, op, method, v, ours_ms):
    """One row per tool: ms per full-data HVP and its distance to ours, or why it was skipped.

    Every tool gets a deep copy of the same model (same weights, eval mode, ``op``'s dtype and
    device) and the same list of batches as ours: consecutive, last one uneven unless the batch
    size divides N. ``rel_diff`` is ``||Hv_tool - Hv_ours|| / ||Hv_ours||``; ``rel_diff_batch_mean``
    measures the tool against the unweighted mean of the batch Hessians, ``(1/K) sum_b H_b v``.
    """
    ours = op.matvec(v)
    N = len(data)
    batches = [(X.to(op.device, op.dtype), y.to(op.device)) for X, y in data.batches(batch_size)]
    uneven = N % batch_size != 0
    per_batch = _batch_count_mean(model, data, batch_size=batch_size, op=op, method=method, v=v)
    gap = _rel(per_batch, ours)  # what dividing by K instead of weighting by n_b changes
    # Agreement threshold: far above float rounding, far below the uneven-batch effect.
    tol = 1e-3 if op.dtype == torch.float32 else 1e-9
    rows = []
    for tool in tools:
        row = {
            "tool": tool,
            "version": _version(tool),
            "model": "",
            "batches": f"{len(batches)} ({N // batch_size} x {batch_size}"
            + (f" + 1 x {N % batch_size})" if uneven else ")"),
            "ours_ms": ours_ms,
            "batch_mean_vs_ours": gap,
        }
        try:
            m = copy.deepcopy(model).to(device=op.device, dtype=op.dtype).eval()
            hvp = _TOOL_HVPS[tool](m, batches)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = _median_time(lambda hvp=hvp: hvp(v), repeats, op.device)
                out = hvp(v).detach().to(device=ours.device, dtype=ours.dtype)
        except _Skip as exc:
            rows.append({**row, "skipped": str(exc)})
            continue
        except Exception as exc:  # a tool that fails is reported, never stops the benchmark
            rows.append({**row, "skipped": f"failed: {type(exc).__name__}: {exc}"})
            continue
        d_ours, d_mean = _rel(out, ours), _rel(out, per_batch)
        if not uneven or gap <= tol:
            weighting = "agrees" if d_ours <= tol else "differs"
        elif d_ours <= tol:
            weighting = "by n_b (exact)"
        elif d_mean <= tol:
            weighting = "1/K per batch"
        else:
            weighting = "neither"
        rows.append(
            {
                **row,
                "hvp_ms": 1e3 * t,
                "ratio_vs_ours": 1e3 * t / ours_ms,
                "rel_diff": d_ours,
                "rel_diff_batch_mean": d_mean,
                "weighting": weighting,
            }
        )
    return rows


def bench_model(name, *, batch_size, repeats, dtype, device, lanczos_steps, compare=()):
    images = name != "mlp"
    data = load_digits(images=images)
    model = build(name, 10, generator=torch.Generator().manual_seed(0))
    rows, ops = [], {}
    v = None
    for method, budget in VARIANTS:
        op = HessianOperator.full(
            model,
            data,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            method=method,
            graph_cache_bytes=budget,
            progress=False,
            verify=False,
        )
        if v is None:
            v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            v = v.to(device=op.device, dtype=op.dtype)
        t_grad, t_hvp = _paired_median_times(
            op.loss_and_gradient, lambda op=op, v=v: op.matvec(v), repeats, op.device
        )
        label = method if budget == 0 else f"{method} + cache"
        ops[label] = op
        rows.append(
            {
                "model": name,
                "P": num_parameters(model),
                "N": len(data),
                "batch_size": batch_size,
                "method": label,
                "grad_ms": 1e3 * t_grad,
                "hvp_ms": 1e3 * t_hvp,
                "ratio": t_hvp / t_grad,
                "graph_cache_mb": op.graph_cache.used_bytes / 2**20,
                "graphs_cached": op.graph_cache.graphs,
                "batches": -(-len(data) // batch_size),
            }
        )
    tool_rows = []
    if compare:
        ref = AUTO_ORDER[0]  # the default method, one product from scratch (no graph cache)
        ours_ms = next(r["hvp_ms"] for r in rows if r["method"] == ref)
        tool_rows = compare_tools(
            compare,
            model,
            data,
            batch_size=batch_size,
            repeats=repeats,
            op=ops[ref],
            method=ref,
            v=v,
            ours_ms=ours_ms,
        )
        for r in tool_rows:
            r["model"] = name
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
    return rows, tool_rows, lz


def _print_tools(rows) -> None:
    print(
        f"\nThird-party full-data HVPs vs ours ({AUTO_ORDER[0]}), same model, weights, batches; "
        "rel diff = ||Hv_tool - Hv_ours|| / ||Hv_ours||, vs 1/K = against (1/K) sum_b H_b v"
    )
    print(
        f"{'model':8} {'tool':12} {'version':9} {'batches':18} {'ours ms':>8} {'tool ms':>8} "
        f"{'tool/ours':>9} {'rel diff':>9} {'vs 1/K':>9}  weighting"
    )
    for r in rows:
        head = (
            f"{r['model']:8} {r['tool']:12} {r['version']:9} {r['batches']:18} {r['ours_ms']:8.2f}"
        )
        if "skipped" in r:
            print(f"{head}  skipped: {r['skipped']}")
            continue
        print(
            f"{head} {r['hvp_ms']:8.2f} {r['ratio_vs_ours']:9.2f} {r['rel_diff']:9.1e} "
            f"{r['rel_diff_batch_mean']:9.1e}  {r['weighting']}"
        )
    gaps = {r["model"]: r["batch_mean_vs_ours"] for r in rows}
    print(
        "(1/K) sum_b H_b v vs ours (sample-weighted): "
        + ", ".join(f"{m} {g:.1e}" for m, g in gaps.items())
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "cnn_bn"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--lanczos-steps", type=int, default=100)
    parser.add_argument(
        "--compare",
        nargs="+",
        choices=(*TOOLS, "none"),
        default=list(TOOLS),
        help="third-party HVPs to time against ours (default: all; 'none' for no comparison)",
    )
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
    compare = [t for t in dict.fromkeys(args.compare) if t != "none"]
    all_rows, all_tools, all_lz = [], [], []
    print(
        f"{'model':8} {'P':>5} {'method':30} {'grad ms':>9} {'hvp ms':>9} {'hvp/grad':>9} "
        f"{'graphs':>7} {'cache MB':>9}"
    )
    for name in args.models:
        rows, tool_rows, lz = bench_model(
            name,
            batch_size=args.batch_size,
            repeats=args.repeats,
            dtype=dtype,
            device=device,
            lanczos_steps=args.lanczos_steps,
            compare=compare,
        )
        for r in rows:
            print(
                f"{r['model']:8} {r['P']:5d} {r['method']:30} {r['grad_ms']:9.2f} "
                f"{r['hvp_ms']:9.2f} {r['ratio']:9.2f} "
                f"{r['graphs_cached']:>3d}/{r['batches']:<3d} {r['graph_cache_mb']:9.1f}"
            )
        all_rows += rows
        all_tools += tool_rows
        all_lz.append(lz)
    if all_tools:
        _print_tools(all_tools)
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
                    "compare": all_tools,
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
