"""GPU check: VGG16 on a CIFAR-shaped data set -- HVP vs gradient cost, memory at m = 100, Lanczos.

    python benchmarks/gpu_check.py --out gpu_check.json           # one GPU: ~1-2 min on an H200
    python benchmarks/gpu_check.py --device cpu --images 256 --steps 3 --model vgg16-small \\
        --basis 5 --out smoke.json                                # CPU smoke test (< 1 min)

What it measures, on one device, for the paper's VGG16 (CIFAR variant without BatchNorm, dropout
classifier 512-512-100: P = 15,291,300 for 100 classes; ``nnhessian.models.build("vgg16", 100)``
or the same architecture defined here when the registry lacks it) on ``--images`` random
CIFAR-shaped images (3 x 32 x 32 standard normal, as normalised CIFAR; labels uniform; generated
on the device from ``--seed``, nothing downloaded):

* ``grad``: one full-data gradient pass (mean loss over all images, batches of ``--batch-size``);
* ``hvp[method]``: one full-data Hessian-vector product for each HVP implementation from scratch
  ("double-backward", "forward-over-reverse"; graph cache off) and for the default operator
  ("double-backward + cache": gradient graphs kept within ``--graph-cache-gb``, steady state);
  ``ratio = hvp / grad``; the relative difference of two products with the same vector (GPU
  reduction nondeterminism); for the cached one, the graphs kept, their measured size and, on
  CUDA, the device memory the cache actually holds (allocated after minus before its first
  product, less that product's output);
* ``basis``: peak device memory of one Lanczos step with ``--basis`` (default 100, the paper's m)
  Lanczos vectors resident: basis + product + full reorthogonalisation against all of them;
* ``lockstep``: ``--lockstep`` (default 5) products with the graph cache off -- k separate
  matvecs, one data pass with k separate reverse passes per batch, and with one batched reverse
  pass (``is_grads_batched=True``): cost per product in gradient passes, which reverse mode is
  faster on this device (issue 13; the library's ``reverse="auto"`` keeps the faster off the
  CPU), what ``auto`` measured and batched vs loop's relative difference;
* ``lanczos``: a ``--steps``-step Lanczos run (default 10) with the library's default HVP method:
  wall time per step, share of time outside the products, extreme Ritz values and residuals.

Times are the median over ``--repeats`` after one warm-up product. float32 by default; TF32 is
left at torch's defaults unless ``--tf32 on/off`` (the flags used are recorded). ``--time-limit``
(seconds) skips the remaining stages once exceeded, so a prepared run cannot overrun its slot.
Prints a table and writes JSON (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnhessian.checkpoint import atomic_write_bytes  # noqa: E402
from nnhessian.data import InMemoryDataset  # noqa: E402
from nnhessian.hvp import AUTO_ORDER  # noqa: E402
from nnhessian.lanczos import lanczos  # noqa: E402
from nnhessian.operators import (  # noqa: E402
    DEFAULT_GRAPH_CACHE_BYTES,
    HessianOperator,
    resolve_device,
    resolve_dtype,
)

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
P_VGG16_100 = 15_291_300  # the paper's VGG16 on CIFAR-100
METHODS = ("double-backward", "forward-over-reverse")
CACHED = "double-backward + cache"


class LocalVGG(nn.Module):
    """CIFAR VGG without BatchNorm: 3x3 conv (padding 1) + ReLU, max-pool at "M", then
    Dropout, Linear(c, h), ReLU, Dropout, Linear(h, h), ReLU, Linear(h, classes)."""

    def __init__(self, cfg, num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, int(v), 3, padding=1), nn.ReLU()]
                prev = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(prev, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(name: str, num_classes: int, seed: int) -> tuple[nn.Module, str]:
    """``(model, source)``: the registry's VGG16 when present, else :class:`LocalVGG`."""
    g = torch.Generator().manual_seed(seed)
    if name == "vgg16":
        try:
            from nnhessian.models import build

            return build("vgg16", num_classes, generator=g), "nnhessian.models.build('vgg16')"
        except (ImportError, ValueError):
            pass
        torch.manual_seed(seed)  # script entry point: the local model uses torch's default init
        return LocalVGG(VGG16_CFG, num_classes), "benchmarks/gpu_check.py LocalVGG (registry lacks)"
    if name == "vgg16-small":  # same layout, channels / 8, hidden 64: a CPU smoke test
        torch.manual_seed(seed)
        cfg = tuple(v if v == "M" else int(v) // 8 for v in VGG16_CFG)
        return LocalVGG(cfg, num_classes, hidden=64), "benchmarks/gpu_check.py LocalVGG / 8"
    raise ValueError(f"unknown model {name!r}; accepted: vgg16, vgg16-small")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_bytes(device: torch.device) -> int:
    """Peak allocated device memory since the last reset (CUDA) or the process's peak RSS (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _timed(fn, device, repeats: int) -> tuple[float, list, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _git() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--model", default="vgg16", choices=("vgg16", "vgg16-small"))
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=10, help="Lanczos steps of the short run")
    p.add_argument("--basis", type=int, default=100, help="Lanczos vectors for the memory probe")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--lockstep", type=int, default=5, help="vectors of the k-product (lockstep) timing"
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--tf32", default="default", choices=("default", "on", "off"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--graph-cache-gb",
        type=float,
        default=DEFAULT_GRAPH_CACHE_BYTES / 2**30,
        help="GiB for gradient graphs kept across products (default operator and Lanczos)",
    )
    p.add_argument("--time-limit", type=float, default=270.0, help="seconds; later stages skip")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    for name in ("classes", "images", "batch_size", "steps", "basis", "repeats", "lockstep"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not (math.isfinite(args.graph_cache_gb) and args.graph_cache_gb >= 0):
        p.error("--graph-cache-gb must be a finite number >= 0 (GiB; 0 keeps no graphs)")
    return args


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    if device.type == "cuda":
        if args.tf32 != "default":
            flag = args.tf32 == "on"
            torch.backends.cuda.matmul.allow_tf32 = flag
            torch.backends.cudnn.allow_tf32 = flag
    result: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "provenance": {
            "utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            **_git(),
        },
        "skipped": [],
    }

    t_grad = 0.0
    product_seconds = []  # measured full-data HVP times, for the stage estimates

    def over_time(stage: str, products: int) -> bool:
        """Skip a stage whose ``products`` HVPs would end past ``--time-limit``."""
        per = max(product_seconds) if product_seconds else 3.0 * t_grad
        if time.perf_counter() - t_start + products * per > args.time_limit:
            result["skipped"].append(stage)
            return True
        return False

    # data on the device, from a seeded device generator (CIFAR-shaped, normalised scale)
    g = torch.Generator(device=device).manual_seed(args.seed)
    X = torch.randn(args.images, 3, 32, 32, generator=g, device=device, dtype=dtype)
    y = torch.randint(0, args.classes, (args.images,), generator=g, device=device)
    data = InMemoryDataset(X, y, args.classes)
    model, source = build_model(args.model, args.classes, args.seed)
    model = model.to(device)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["model"] = {"name": args.model, "source": source, "P": P}
    if args.model == "vgg16" and args.classes == 100 and P != P_VGG16_100:
        raise SystemExit(f"VGG16 has P = {P}, expected {P_VGG16_100}: wrong architecture")
    result["data_bytes"] = X.numel() * X.element_size()

    budget = int(args.graph_cache_gb * 2**30)

    def operator(method: str, cache: bool = True) -> HessianOperator:
        return HessianOperator.full(
            model,
            data,
            batch_size=args.batch_size,
            dtype=dtype,
            device=device,
            method=method,
            graph_cache_bytes=budget if cache else 0,
            progress=False,
            verify=False,
        )

    def allocated() -> int | None:
        return torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    v = torch.randn(P, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    v = (v / torch.linalg.vector_norm(v)).to(device=device, dtype=dtype)

    # gradient pass
    op = operator("auto")
    op.loss_and_gradient()  # warm-up (cuDNN autotuning, allocator)
    _reset_peak(device)
    t_grad, grad_times, (loss, _) = _timed(op.loss_and_gradient, device, args.repeats)
    result["grad"] = {
        "seconds": t_grad,
        "all": grad_times,
        "loss": loss,
        "peak_bytes": _peak_bytes(device),
    }

    # one full-data HVP per method: the library's first choice now, the other after Lanczos
    result["hvp"] = {}

    def time_method(label: str) -> None:
        if over_time(f"hvp {label}", args.repeats + 2):
            return
        method, cache = (AUTO_ORDER[0], True) if label == CACHED else (label, False)
        try:
            opm = operator(method, cache)
            before = allocated()
            first = opm.matvec(v)  # warm-up; builds the kept graphs
            after = allocated()
            held = None if before is None else after - before - first.numel() * first.element_size()
            del first
            _reset_peak(device)
            t, times, hv = _timed(lambda: opm.matvec(v), device, args.repeats)
            product_seconds.append(t)
            hv2 = opm.matvec(v)
            rel = float(torch.linalg.vector_norm(hv - hv2) / torch.linalg.vector_norm(hv))
            result["hvp"][label] = {
                "seconds": t,
                "all": times,
                "ratio_to_grad": t / t_grad,
                "peak_bytes": _peak_bytes(device),
                "repeat_rel_diff": rel,
                "norm_Hv": float(torch.linalg.vector_norm(hv)),
                "graph_cache": asdict(opm.graph_cache) | {"device_bytes_held": held},
            }
            del hv, hv2
        except Exception as err:  # noqa: BLE001 - report, do not abort the check
            result["hvp"][label] = {"error": f"{type(err).__name__}: {err}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()

    time_method(AUTO_ORDER[0])
    time_method(CACHED)

    # memory with m = --basis Lanczos vectors resident: one step at the largest basis
    if not over_time("basis", 1):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _reset_peak(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        Q = torch.empty((args.basis, P), device=device, dtype=dtype)
        gq = torch.Generator(device=device).manual_seed(args.seed + 2)
        for j in range(args.basis):  # unit rows, as Lanczos vectors (values do not matter)
            Q[j].normal_(generator=gq)
            Q[j].div_(torch.linalg.vector_norm(Q[j]))
        t0 = time.perf_counter()
        w = op.matvec(Q[-1])
        for _ in range(2):
            w.sub_(Q.T @ (Q @ w))
        _sync(device)
        result["basis"] = {
            "vectors": args.basis,
            "basis_bytes": Q.numel() * Q.element_size(),
            "allocated_before_bytes": before,
            "peak_bytes": _peak_bytes(device),
            "step_seconds": time.perf_counter() - t0,
        }
        if device.type == "cuda":
            _, total = torch.cuda.mem_get_info(device)
            result["basis"]["device_total_bytes"] = int(total)
        del Q, w

    # a short Lanczos run with the default method
    if not over_time("lanczos", args.steps):
        calls = []
        inner = op.matvec

        def timed_matvec(q):
            _sync(device)
            t0 = time.perf_counter()
            out = inner(q)
            _sync(device)
            calls.append(time.perf_counter() - t0)
            return out

        op.matvec = timed_matvec
        _reset_peak(device)
        t0 = time.perf_counter()
        res = lanczos(op, args.steps, generator=torch.Generator().manual_seed(args.seed + 3))
        _sync(device)
        total = time.perf_counter() - t0
        del op.matvec  # the class method again
        result["lanczos"] = {
            "steps": int(res.steps),
            "method": op.method,
            "seconds": total,
            "seconds_per_step": total / res.steps,
            # the paper's run, m = --basis steps for 5 SLQ probes, at this speed per step
            "projected_seconds_5_probes": 5 * args.basis * total / res.steps,
            "overhead_share": (total - sum(calls)) / total,
            "peak_bytes": _peak_bytes(device),
            "ritz_max": float(res.ritz_values[-1]),
            "ritz_min": float(res.ritz_values[0]),
            "residual_max": float(res.residuals[-1]),
            "residual_min": float(res.residuals[0]),
            "ritz_values": [float(x) for x in res.ritz_values],
            "graph_cache": asdict(op.graph_cache),
        }
    if not over_time("lockstep", 3 * args.lockstep * (args.repeats + 1)):
        result["lockstep"] = lockstep_stage(operator, v, args, device, t_grad)
    for method in METHODS:
        if method != AUTO_ORDER[0]:
            time_method(method)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def lockstep_stage(operator, v, args, device, t_grad) -> dict:
    """k = ``--lockstep`` products, graph cache off: k separate matvecs, one data pass with k
    separate reverse passes per batch ("loop"), and with one batched reverse pass
    (``is_grads_batched=True``): seconds per product and in gradient passes, the faster of the
    two reverse modes (issue 13), what ``reverse="auto"`` measured, and the largest relative
    difference batched vs loop."""
    out: dict = {"vectors": args.lockstep}
    try:
        op = operator(AUTO_ORDER[0], False)
        g = torch.Generator(device=device).manual_seed(args.seed + 4)
        vs = [v] + [
            torch.randn(v.numel(), generator=g, device=device, dtype=v.dtype)
            for _ in range(args.lockstep - 1)
        ]
        t_one, _, _ = _timed(lambda: [op.matvec(x) for x in vs], device, args.repeats)
        op.reverse = "auto"
        op.matvec_many(vs)  # the auto measurement on the first batch
        timing = op.engine.reverse_timing
        out["auto"] = None if timing is None else asdict(timing)
        ws = {}
        for mode in ("loop", "batched"):
            op.reverse = mode
            try:
                t, _, w = _timed(lambda: op.matvec_many(vs), device, args.repeats)
            except Exception as err:  # noqa: BLE001 - a missing vmap rule, out of memory
                out[mode] = {"error": f"{type(err).__name__}: {err}"}
                continue
            ws[mode] = w
            per = t / len(vs)
            out[mode] = {"seconds_per_product": per, "grad_passes_per_product": per / t_grad}
        out["separate"] = {
            "seconds_per_product": t_one / len(vs),
            "grad_passes_per_product": t_one / len(vs) / t_grad,
        }
        if len(ws) == 2:
            out["batched_rel_diff"] = max(
                float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a))
                for a, b in zip(ws["loop"], ws["batched"], strict=True)
            )
        timed = [m for m in ("loop", "batched") if "seconds_per_product" in out.get(m, {})]
        out["faster"] = min(timed, key=lambda m: out[m]["seconds_per_product"]) if timed else None
    except Exception as err:  # noqa: BLE001 - report, do not abort the check
        out["error"] = f"{type(err).__name__}: {err}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _cache_note(info: dict) -> str:
    if not info["budget_bytes"]:
        return ""
    note = f", {info['graphs']} graphs {info['used_bytes'] / 2**30:.2f} GiB"
    if info.get("device_bytes_held") is not None:
        note += f" (device {info['device_bytes_held'] / 2**30:.2f})"
    return note


def table(result: dict) -> str:
    gib = 2.0**30
    m = result["model"]
    lines = [
        f"{m['name']} (P = {m['P']:,}, {m['source']}) on {result['config']['images']:,} images, "
        f"batch {result['config']['batch_size']}, {result['config']['dtype']}, "
        f"{result['provenance']['device']}",
        f"{'stage':<28}{'seconds':>10}{'x grad':>9}{'peak GiB':>10}  notes",
        f"{'gradient pass':<28}{result['grad']['seconds']:>10.3f}{1.0:>9.2f}"
        f"{result['grad']['peak_bytes'] / gib:>10.2f}  loss {result['grad']['loss']:.4f}",
    ]
    for method, h in result["hvp"].items():
        if "error" in h:
            lines.append(f"{'HVP ' + method:<28}{'-':>10}{'-':>9}{'-':>10}  {h['error'][:60]}")
        else:
            lines.append(
                f"{'HVP ' + method:<28}{h['seconds']:>10.3f}{h['ratio_to_grad']:>9.2f}"
                f"{h['peak_bytes'] / gib:>10.2f}  repeat rel diff {h['repeat_rel_diff']:.1e}"
                + _cache_note(h["graph_cache"])
            )
    if "basis" in result:
        b = result["basis"]
        label = f"Lanczos step, m = {b['vectors']}"
        lines.append(
            f"{label:<28}{b['step_seconds']:>10.3f}{'':>9}"
            f"{b['peak_bytes'] / gib:>10.2f}  basis {b['basis_bytes'] / gib:.2f} GiB"
        )
    ls = result.get("lockstep", {})
    for mode in ("separate", "loop", "batched"):
        row = ls.get(mode)
        if row is None:
            continue
        label = f"{ls['vectors']} products, {mode}"
        if "error" in row:
            lines.append(f"{label:<28}{'-':>10}{'-':>9}{'-':>10}  {row['error'][:60]}")
            continue
        note = f"faster: {ls.get('faster')}" if mode == "batched" else "per product"
        lines.append(
            f"{label:<28}{row['seconds_per_product']:>10.3f}"
            f"{row['grad_passes_per_product']:>9.2f}{'':>10}  {note}"
        )
    if "lanczos" in result:
        lz = result["lanczos"]
        label = f"Lanczos {lz['steps']} steps (per step)"
        lines.append(
            f"{label:<28}{lz['seconds_per_step']:>10.3f}"
            f"{'':>9}{lz['peak_bytes'] / gib:>10.2f}  overhead {100 * lz['overhead_share']:.1f}%,"
            f" Ritz [{lz['ritz_min']:.4g}, {lz['ritz_max']:.4g}]"
        )
    if result["skipped"]:
        lines.append(f"skipped (time limit): {', '.join(result['skipped'])}")
    lines.append(f"wall time {result['wall_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: skipped, no CUDA device here (use --device cpu for a CPU smoke run)")
        return None
    result = run(args)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(json.dumps(result, indent=2).encode(), args.out)
    return result


if __name__ == "__main__":
    main()
