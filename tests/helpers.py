"""Plain helpers shared by several test modules; pytest fixtures live in ``tests/conftest.py``.

No test module imports another: what two of them need is here, once.

* Numerics: :func:`rel_err`, :func:`exact_sigma2` (paper eq. 9 from dense per-sample Hessians).
* Small problems: the digits data (:func:`digits`), the operator tests' tiny models on 23 digits
  samples in batches of 10, 10, 3 (:func:`tiny_model`, :func:`subset`, :func:`full_operator`,
  :func:`references`, :func:`digits_mlp_operator`), a 5-4-3 tanh MLP on Gaussian samples
  (:func:`gaussian_mlp`), and a model that is not in ``nnhessian.models``
  (:class:`TwoLayer`, :func:`two_layer_data`).
* Central differences of the gradient, built independently of nnhessian: :func:`flat_loss`,
  :func:`gradient_of`, :func:`fd_errors`, :func:`assert_second_order_agreement`.
* Crash injection for resumable runs: :class:`Crash`, :class:`CrashingOperator`.
* The command line in process: :func:`run_cli`, :func:`one_line_error`, :func:`assert_refused`;
  :func:`free_port` for torch.distributed launches.
"""

from __future__ import annotations

import copy
import functools
import json
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nnhessian import reference
from nnhessian.data import InMemoryDataset, load_digits
from nnhessian.models import build
from nnhessian.operators import HessianOperator
from reports.schema import TIDY_COLUMNS
from tests.tolerances import FD_RATIO_RANGE, FD_RTOL, FD_STEPS
from validation.cli import main

F64 = torch.float64


# ---- numerics ---------------------------------------------------------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error ``||a - b|| / ||b||``."""
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def exact_sigma2(H: torch.Tensor) -> float:
    """``sigma^2 = (1/(N P^2)) sum_i ||H_i - H_emp||_F^2`` from per-sample Hessians ``(N, P, P)``
    (paper eq. 9, ``H_emp`` their mean)."""
    n, P, _ = H.shape
    D = H - H.mean(0)
    return float((D**2).sum()) / (n * P * P)


# ---- small problems ---------------------------------------------------------------------------


@functools.cache
def digits(images: bool) -> InMemoryDataset:
    """The digits data set in float64, as images ``(N, 1, 8, 8)`` or flat ``(N, 64)``."""
    return load_digits(images=images, dtype=F64)


N_SUB = 23
BATCH = 10  # batches of 10, 10, 3
BATCH_RANGES = (range(0, 10), range(10, 20), range(20, 23))
BATCH_IDX = torch.tensor([1, 4, 5, 11, 17, 20, 22])  # the fixed batch, B = 7
# (model name, policy): cnn_bn carries dropout and is left in train mode -- the policy must
# switch dropout off and choose the BatchNorm statistics.
CASES = (("mlp", "eval"), ("cnn", "eval"), ("cnn_bn", "eval"), ("cnn_bn", "batch-stats"))


@functools.cache
def subset(images: bool) -> InMemoryDataset:
    """The first 23 digits samples (float64)."""
    return digits(images).subset(range(N_SUB))


def make_model(name: str) -> nn.Module:
    """A fresh tiny model: "mlp" (64-6-10, P = 460), "cnn" or "cnn_bn" (train mode, dropout 0.3,
    running statistics moved by 3 forward passes)."""
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        return build("mlp", 10, hidden=6, generator=g)
    if name == "cnn":
        return build("cnn", 10, width=3, generator=g)
    model = build("cnn_bn", 10, width=3, dropout=0.3, generator=g)
    model.train()  # running statistics away from their initial 0/1, then left in train mode
    with torch.no_grad():
        for _ in range(3):
            model(digits(True).X[:300].float())
    return model


tiny_model = functools.cache(make_model)


def images_for(name: str) -> bool:
    return name != "mlp"


@functools.cache
def references(name: str, policy: str) -> dict[str, torch.Tensor]:
    """Dense H_emp (sample-weighted batches), H_B and H_B - H_emp (float64)."""
    data = subset(images_for(name))
    model = tiny_model(name)

    def dense(indices):
        return reference.dense_hessian(model, data, indices, policy=policy, dtype=F64)

    # batch statistics depend on the batching: H_emp is the weighted mean of the batch Hessians
    H_full = sum(len(r) / N_SUB * dense(r) for r in BATCH_RANGES)
    H_batch = dense(BATCH_IDX)
    return {"full": H_full, "batch": H_batch, "noise": H_batch - H_full}


def full_operator(name: str, policy: str = "eval", **options) -> HessianOperator:
    """H_emp of a tiny model on the 23 samples in batches of 10, 10, 3 (float64, CPU)."""
    return HessianOperator.full(
        tiny_model(name),
        subset(images_for(name)),
        batch_size=BATCH,
        dtype=F64,
        device="cpu",
        policy=policy,
        **options,
    )


@functools.cache
def digits_mlp_operator() -> HessianOperator:
    """Full-data Hessian of the 460-parameter MLP on the 23 digits samples (batches 10, 10, 3),
    float64, default device (the Lanczos and resume tests)."""
    return HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH, dtype=F64)


def probes(P: int, k: int, seed: int = 0) -> torch.Tensor:
    """``(k, P)`` standard Gaussian vectors (float64)."""
    return torch.randn(k, P, generator=torch.Generator().manual_seed(seed), dtype=F64)


def gaussian_mlp(n: int) -> tuple[nn.Module, InMemoryDataset]:
    """A 5-4-3 tanh MLP (P = 39) and ``n`` Gaussian samples with labels in 0..2, float64; one
    generator seeded 0 draws X, then y, then the weights."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (n,), generator=g)
    model = build("mlp", 3, in_features=5, hidden=4, generator=g)
    return model, InMemoryDataset(X, y, 3)


class TwoLayer(nn.Module):
    """Not in nnhessian.models: a tanh network with a skip connection, P = 5*7+7+7*3+3+5*3 = 81."""

    in_features, num_classes = 5, 3

    def __init__(self):
        super().__init__()
        D, C = self.in_features, self.num_classes
        self.hidden = nn.Linear(D, 7, dtype=torch.float64)
        self.out = nn.Linear(7, C, dtype=torch.float64)
        self.skip = nn.Linear(D, C, bias=False, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x))) + self.skip(x)


def two_layer_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)``: ``n`` Gaussian samples for :class:`TwoLayer` (float64, seed 3)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, TwoLayer.in_features, generator=g, dtype=torch.float64)
    y = torch.randint(0, TwoLayer.num_classes, (n,), generator=g)
    return X, y


# ---- central differences of the gradient, independent of nnhessian ----------------------------


def reference_model(model: nn.Module, policy: str) -> nn.Module:
    """A float64 deep copy in the policy's mode: eval, or BatchNorm on batch statistics."""
    m = copy.deepcopy(model).double()
    m.eval()
    if policy == "batch-stats":
        for mod in m.modules():
            if isinstance(mod, _BatchNorm):
                mod.train()
                mod.track_running_stats = False
    return m


def flat_loss(model: nn.Module, batches, weights, policy: str = "eval"):
    """``(f, theta0)``: ``f(theta) = sum_b weights[b] * mean-loss of batch b`` at flat ``theta``.

    Built here, independently of nnhessian: the loss whose gradient the central differences use.
    """
    m = reference_model(model, policy)
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    consts = {n: b.detach() for n, b in m.named_buffers()}
    batches = [(X.double(), y) for X, y in batches]

    def f(theta):
        parts = torch.split(theta, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        total = theta.new_zeros(())
        for (X, y), w in zip(batches, weights, strict=True):
            out = torch.func.functional_call(m, (params, consts), (X,))
            total = total + w * F.cross_entropy(out, y)
        return total

    return f, theta0


def gradient_of(f):
    """``theta -> grad f(theta)`` by one reverse pass (plain autograd)."""

    def grad_at(theta):
        theta = theta.detach().requires_grad_(True)
        return torch.autograd.grad(f(theta), theta)[0]

    return grad_at


def fd_errors(grad_at, theta0, v, hv, steps=FD_STEPS) -> list[float]:
    """Relative errors of central differences ``(g(w + h v) - g(w - h v)) / 2h`` against ``hv``."""
    errs = []
    for h in steps:
        fd = (grad_at(theta0 + h * v) - grad_at(theta0 - h * v)) / (2 * h)
        errs.append(rel_err(fd, hv))
    return errs


def assert_second_order_agreement(errs) -> None:
    """Errors shrink as h^2 (ratio 4 when h halves) and are small: HVP = derivative of gradient."""
    lo, hi = FD_RATIO_RANGE
    assert lo <= errs[0] / errs[1] <= hi, errs
    assert errs[1] <= FD_RTOL, errs


# ---- crash injection --------------------------------------------------------------------------


class Crash(RuntimeError):
    """The injected failure."""


class CrashingOperator:
    """Delegates to ``op`` (same fingerprint) and raises :class:`Crash` on product ``after + 1``.

    ``after=None`` never crashes. ``calls`` counts the products this wrapper did.
    """

    def __init__(self, op, after: int | None = None, action=None) -> None:
        self._op = op
        self._after = after
        self._action = action
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._op, name)

    def matvec(self, v):
        if self._after is not None and self.calls >= self._after:
            if self._action is not None:
                self._action()
            raise Crash(f"injected crash before product {self.calls + 1}")
        self.calls += 1
        return self._op.matvec(v)


# ---- the command line -------------------------------------------------------------------------


def run_cli(argv) -> int:
    """``python -m validation *argv`` in this process (arguments converted to str); exit status."""
    return main([str(a) for a in argv])


def one_line_error(capsys, argv) -> str:
    """Run the CLI, expect exit status 2 and exactly one line ``error: ...`` on stderr; return it
    (stripped)."""
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def assert_refused(capsys, argv, message, out) -> None:
    """A refusal: one line containing ``message``, exit 2, nothing written at ``out`` (no result
    folder, no ``.<name>.partial-*`` temporary folder beside it)."""
    err = one_line_error(capsys, argv)
    assert message in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- result folders for the report tests ------------------------------------------------------

NETWORK_FIGURES = ("ritz_full_vs_batch.png", "density.png", "noise_spectrum.png", "batch_sweep.png")


def tiny_png(path: Path, label: str) -> None:
    fig = Figure(figsize=(2, 1.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_title(label, fontsize=6)
    fig.savefig(path, dpi=40)


def write_fake_network(folder: Path, *, epoch, sigma2, model="vgg16", omit=()) -> Path:
    """A network result folder as the spec describes it, with made-up numbers (a test fixture)."""
    folder.mkdir(parents=True)
    summary = pd.DataFrame(
        [
            ["network", "theorem2", "lambda_max batch B=32", 12.0, 12.5, 0.2, "outlier", "agrees"],
            ["network", "sigma2", "sigma^2 hutchinson", np.nan, sigma2, 0.1 * sigma2, "-",
             "not applicable"],
            ["network", "noise-edge", "noise lambda_max vs GOE edge", 3.0, 4.5, 0.1, "edge",
             "disagrees (assumption 3 violated by 50%)"],
        ],
        columns=list(TIDY_COLUMNS),
    )  # fmt: skip
    files = {
        "summary.csv": summary,
        "ritz.csv": pd.DataFrame(
            {"operator": ["full", "batch", "noise"], "B": [np.nan, 32, 32], "probe": [0, 0, 0],
             "value": [10.0, 12.5, 4.5], "weight": [0.1, 0.1, 0.2]}
        ),
        "density.csv": pd.DataFrame(
            {"curve": ["full", "batch measured", "batch predicted"], "B": [np.nan, 32, 32],
             "x": [0.0, 0.0, 0.0], "density": [1.0, 0.8, 0.9]}
        ),
        "sigma2.csv": pd.DataFrame(
            {"estimator": ["hutchinson"], "value": [sigma2], "ci_low": [0.9 * sigma2],
             "ci_high": [1.1 * sigma2], "probes": [8]}
        ),
        "sweep.csv": pd.DataFrame(
            {"B": [16, 32], "predicted": [14.0, 12.0], "measured": [14.5, 12.5],
             "regime": ["outlier", "outlier"]}
        ),
    }  # fmt: skip
    written = []
    for name, frame in files.items():
        if name not in omit:
            frame.to_csv(folder / name, index=False)
            written.append(name)
    for name in NETWORK_FIGURES:
        if name not in omit:
            tiny_png(folder / name, name)
            written.append(name)
    results = {
        "kind": "network",
        "provenance": {
            "config": {"model": model, "epoch": epoch, "batch_sizes": [16, 32]},
            "versions": {"python": "3.11", "torch": "fake"},
            "git": {"commit": "0" * 40, "dirty": False},
            "device": "cpu",
            "started_utc": "2026-01-01T00:00:00+00:00",
            "wall_seconds": 1.0,
        },
        "model": model,
        "data": "fake-cifar",
        "P": 1234,
        "N": 500,
        "epoch": epoch,
        "batch_sizes": [16, 32],
        "sigma2": {
            "hutchinson": {
                "value": sigma2,
                "ci_low": 0.9 * sigma2,
                "ci_high": 1.1 * sigma2,
                "probes": 8,
            }
        },  # fmt: skip
        "assumption3": {
            "32": {"verdict": "violated", "summary": "assumption 3 violated at B=32: edges 1.5x"}
        },
        "sweep_law": {"law": "saturates toward the outlier", "loglog_slope_vs_f": 0.1},
        # every file the spec names is listed, so an omitted one is "listed but missing"
        "files": sorted({*files, *NETWORK_FIGURES, "results.json"}),
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


# ---- torch.distributed: launching gloo ranks as child processes ----------------------------------


def launch_ranks(entry: str, out_dir, world: int = 2, timeout: float = 150.0) -> list[dict]:
    """Run ``entry`` (``"tests.test_x:function"``, called with ``out_dir``) in ``world`` child
    processes with a torchrun-style environment (RANK, WORLD_SIZE, a free MASTER_PORT on
    127.0.0.1); each saves ``out_dir / f"rank{r}.pt"``, returned in rank order."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    module, function = entry.split(":")
    out_dir = Path(out_dir)
    port = free_port()
    code = f"from {module} import {function}; {function}({str(out_dir)!r})"
    root = Path(__file__).resolve().parents[1]
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + timeout
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            logs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-3000:]}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
