"""Benchmark of SLQ with its probes in lockstep against one probe at a time (issue 13).

    python benchmarks/bench_slq.py                        # cnn, cnn_bn, vgg16/8; m = 100, 5 probes
    python benchmarks/bench_slq.py --models cnn --images 128 --json out.json

The paper-scale situation: the graph cache is off (at 50,000 CIFAR images the gradient graphs do
not fit), so every product pays forward + backward + reverse. SLQ (m = 100 steps, as in the paper,
section 4; 5 probes, the default) runs twice on the same operator in one process: probes one after
another (``lockstep=1``: 5 x 100 products, each its own data pass) and all 5 in lockstep (100 data
passes, each building a batch's gradient graph once and running 5 reverse passes on it;
:meth:`nnhessian.operators.HessianOperator.matvec_many`). Reported per model: seconds, products
and the cost per product in gradient passes, ``(SLQ seconds / products) / gradient seconds``, the
gradient pass timed (median of ``--repeats``) before and after the two runs; and whether the two
runs' Ritz values and weights are bit-identical (they must be on the CPU). On a shared machine
the load can change between the two SLQ runs, so the products alone are also timed alternately
("paired": gradient pass, k separate products, one k-product pass, ``2 repeats + 1`` rounds,
medians), which load changes hit on all sides, together with the floor of any scheme that shares
a graph between products: the k products on a second operator whose graph cache holds every
batch's graph (built before the timing), i.e. the reverse passes alone; and the k-product pass
with one vmapped reverse pass per batch (``reverse="batched"``, which the CPU does not use: its
products are not bit-identical to one-at-a-time ones).

Models on CIFAR-shaped random data (3 x 32 x 32 standard normal images, 100 classes uniform,
float32, seeded; nothing downloaded): ``cnn`` and ``cnn_bn`` (nnhessian.models SmallCNN, width 8,
eval mode) and ``vgg16/8``, the paper's VGG16 with every convolution's channels divided by 8
(nnhessian.models.VGG; the classifier keeps 512 hidden units). Uses ``--threads`` intra-op
threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnhessian.data import InMemoryDataset  # noqa: E402
from nnhessian.models import VGG, VGG16_CFG, build, num_parameters  # noqa: E402
from nnhessian.operators import HessianOperator  # noqa: E402
from nnhessian.slq import slq  # noqa: E402

MODELS = ("cnn", "cnn_bn", "vgg16/8")
CLASSES = 100


def make_model(name: str, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    if name == "vgg16/8":
        cfg = tuple(v if v == "M" else int(v) // 8 for v in VGG16_CFG)
        return VGG(cfg, CLASSES, generator=g)
    return build(name, CLASSES, in_channels=3, image_size=32, width=8, generator=g)


def make_data(images: int, seed: int) -> InMemoryDataset:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(images, 3, 32, 32, generator=g)
    y = torch.randint(0, CLASSES, (images,), generator=g)
    return InMemoryDataset(X, y, CLASSES)


def grad_seconds(op: HessianOperator, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        op.loss_and_gradient()
        times.append(time.perf_counter() - t0)
    return times


def paired_products(
    op: HessianOperator,
    cached: HessianOperator,
    batched: HessianOperator,
    k: int,
    repeats: int,
    seed: int,
) -> dict:
    """Gradient pass, k separate products, one k-product pass, one on ``cached`` (every batch's
    graph kept: the reverse passes alone) and one on ``batched`` (one vmapped reverse pass per
    batch), timed alternately ``repeats`` times (load changes on a shared machine hit all five);
    medians, per product in gradient passes."""
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(op.dim, generator=g) for _ in range(k)]
    cached.matvec_many(vs)  # builds and keeps every graph
    t = {"grad": [], "separate": [], "lockstep": [], "cached": [], "batched": []}
    for _ in range(repeats):
        for label, fn in (
            ("grad", op.loss_and_gradient),
            ("separate", lambda: [op.matvec(v) for v in vs]),
            ("lockstep", lambda: op.matvec_many(vs)),
            ("cached", lambda: cached.matvec_many(vs)),
            ("batched", lambda: batched.matvec_many(vs)),
        ):
            t0 = time.perf_counter()
            fn()
            t[label].append(time.perf_counter() - t0)
    grad = statistics.median(t["grad"])
    out = {"grad_seconds": grad}
    for label in ("separate", "lockstep", "cached", "batched"):
        out[f"{label}_grad_passes_per_product"] = statistics.median(t[label]) / k / grad
    return out


def bench_model(name: str, args) -> dict:
    model = make_model(name, args.seed)
    data = make_data(args.images, args.seed + 1)
    op = HessianOperator.full(
        model,
        data,
        batch_size=args.batch_size,
        graph_cache_bytes=int(args.graph_cache_gb * 2**30),
        verify=False,
    )
    op.matvec(torch.ones(op.dim))  # warm-up; resolves the HVP method
    cached = HessianOperator.full(
        model, data, batch_size=args.batch_size, graph_cache_bytes=2**62, verify=False
    )
    cached.reverse = op.reverse
    batched = HessianOperator.full(
        model, data, batch_size=args.batch_size, graph_cache_bytes=0, verify=False
    )
    batched.reverse = "batched"
    paired = paired_products(op, cached, batched, args.probes, 2 * args.repeats + 1, args.seed + 2)
    cached.clear_graph_cache()
    grads = grad_seconds(op, args.repeats)
    runs = {}
    for label, k in (("sequential", 1), ("lockstep", args.probes)):
        before = op.matvecs
        t0 = time.perf_counter()
        res = slq(
            op, args.steps, args.probes, generator=torch.Generator().manual_seed(7), lockstep=k
        )
        seconds = time.perf_counter() - t0
        runs[label] = (res, seconds, op.matvecs - before)
    grads += grad_seconds(op, args.repeats)
    t_grad = statistics.median(grads)
    (a, _, _), (b, _, _) = runs["sequential"], runs["lockstep"]
    identical = bool(
        np.array_equal(a.ritz_values, b.ritz_values, equal_nan=True)
        and np.array_equal(a.weights, b.weights)
    )
    out = {
        "model": name,
        "P": num_parameters(model),
        "grad_seconds": t_grad,
        "bit_identical": identical,
        "reverse": op.reverse,
        "paired": paired,
    }
    for label, (_, seconds, products) in runs.items():
        out[label] = {
            "seconds": seconds,
            "products": products,
            "grad_passes_per_product": seconds / products / t_grad,
        }
    out["speedup"] = runs["sequential"][1] / runs["lockstep"][1]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--images", type=int, default=64, help="N CIFAR-shaped images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=100, help="Lanczos steps m (paper: 100)")
    p.add_argument("--probes", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="gradient passes timed, before and after")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--graph-cache-gb",
        type=float,
        default=0.0,
        help="GiB of gradient graphs kept across products (0, the default: off, the paper-scale "
        "situation; > 0 with every graph fitting: is lockstep no slower than today?)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"SLQ m = {args.steps}, {args.probes} probes, graph cache "
        f"{f'{args.graph_cache_gb:g} GiB' if args.graph_cache_gb > 0 else 'off'}, float32, "
        f"{args.images} images in batches of {args.batch_size}, {args.threads} thread(s)"
    )
    print(
        f"{'model':<9}{'P':>10}{'grad s':>9}{'seq s':>9}{'lock s':>9}{'seq x':>8}{'lock x':>8}"
        f"{'speedup':>9}  identical"
    )
    for name in args.models:
        r = bench_model(name, args)
        rows.append(r)
        print(
            f"{name:<9}{r['P']:>10,}{r['grad_seconds']:>9.3f}{r['sequential']['seconds']:>9.1f}"
            f"{r['lockstep']['seconds']:>9.1f}{r['sequential']['grad_passes_per_product']:>8.2f}"
            f"{r['lockstep']['grad_passes_per_product']:>8.2f}{r['speedup']:>9.2f}  "
            f"{r['bit_identical']}",
            flush=True,
        )
        pr = r["paired"]
        print(
            f"{'':<9}paired products: separate {pr['separate_grad_passes_per_product']:.2f}, "
            f"lockstep {pr['lockstep_grad_passes_per_product']:.2f}, every graph kept (the floor) "
            f"{pr['cached_grad_passes_per_product']:.2f}, lockstep with a vmapped reverse pass "
            f"{pr['batched_grad_passes_per_product']:.2f} gradient passes per product",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"config": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0 if all(r["bit_identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
