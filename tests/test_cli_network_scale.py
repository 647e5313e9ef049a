"""End-to-end: ``python -m validation network`` at the paper's scale settings, at toy size.

CIFAR-100 from a miniature folder in the real on-disk format (``nnhessian.cifar``), training
checkpoints of ``python -m validation train`` (one, and a sweep over saved epochs), a run killed
with SIGKILL and resumed from ``--state-dir``, and two gloo processes against one. References:
the data set read directly by ``nnhessian.cifar.load_cifar100``; an uninterrupted run (resume:
equal bit for bit, ``RESUME_ATOL = 0``); the single-process run (distributed: equal up to the
order of the final summation, ``lanczos_reorder_atol``, ``SIGMA2_PROBE_RTOL64``).

The CIFAR-shaped models are too large for a dense Hessian (100 classes: P >= 25,738 for the
smallest CNN); their SLQ quadratures are checked instead against an exact identity of Lanczos,
``sum_j w_j theta_j^2 = e_1^T T^2 e_1 = ||H q||^2`` for each probe q (drawn again from the run's
named random stream), with ``H q`` from a float64 autograd Hessian built without nnhessian
(:class:`AutogradHessian`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist

from nnhessian import second_moments
from nnhessian.checkpoint import tensor_sha256
from nnhessian.cifar import load_cifar100, write_miniature_cifar100
from nnhessian.distributed import DistContext
from nnhessian.models import build
from nnhessian.operators import HessianOperator
from nnhessian.train_checkpoint import list_checkpoints, load_checkpoint
from tests.helpers import assert_refused, flat_loss, free_port, run_cli
from tests.tolerances import (
    HVP_RTOL32,
    HVP_RTOL64,
    NETWORK_WEIGHT_SUM_ATOL,
    SIGMA2_PROBE_RTOL64,
    lanczos_reorder_atol,
    slq_second_moment_atol,
)
from validation.network import commandline, epochs
from validation.network.config import stream_generator

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
EPOCHS = (1, 2, 3)


# ---- fixtures: a miniature CIFAR-100 folder and a folder of training checkpoints --------------


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_miniature_cifar100(tmp_path_factory.mktemp("cifar"), n_train=48, n_test=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``python -m validation train``: an MLP (64-32-10, P = 2,410) on digits, 3 epochs."""
    out = tmp_path_factory.mktemp("train") / "mlp"
    argv = ["train", "--model", "mlp", "--data", "digits", "--epochs", 3, "--limit", 120,
            "--batch-size", 40, "--out", out, "--quiet"]  # fmt: skip
    assert run_cli(argv) == 0
    assert sorted(list_checkpoints(out)) == list(EPOCHS)
    return out


# ---- an independent Hessian for the SLQ identity -------------------------------------------


class AutogradHessian:
    """The Hessian of the mean cross-entropy of ``model`` on ``(X, y)`` as an operator for
    :func:`nnhessian.second_moments`: ``H v`` by plain autograd (gradient, then the gradient of
    its inner product with v) on a float64 eval-mode copy (``tests.helpers.flat_loss``), no
    nnhessian code. ``dtype`` is the run's: probes are drawn in it, products are float64."""

    def __init__(self, model, X, y, dtype) -> None:
        self.loss, self.theta0 = flat_loss(model, [(X, y)], [1.0])
        self.dim, self.dtype, self.device = self.theta0.numel(), dtype, torch.device("cpu")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        theta = self.theta0.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(theta), theta, create_graph=True)
        (hv,) = torch.autograd.grad(grad @ v.to(torch.float64), theta)
        return hv


class Difference:
    """``A - B`` for the noise operator N_B = H_B - H_emp."""

    def __init__(self, a, b) -> None:
        self.a, self.b = a, b
        self.dim, self.dtype, self.device = a.dim, a.dtype, a.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.a.matvec(v) - self.b.matvec(v)


def assert_slq_second_moments(out: Path, model, data) -> None:
    """Every probe's quadrature in ritz.csv against ``||H q||^2`` for the full, batch and noise
    operators, with the probes drawn again from the run's streams (as the run's SLQ draws them)."""
    results = json.loads((out / "results.json").read_text())
    config = results["provenance"]["config"]
    dtype = getattr(torch, config["dtype"])
    X, y = data.X.to(dtype), data.y  # the run measures the features in its dtype
    full = AutogradHessian(model, X, y, dtype)
    operators = {("full", None): (full, "slq full", ())}
    for B, idx in results["batch_indices"].items():
        batch = AutogradHessian(model, X[idx], y[idx], dtype)
        operators["batch", int(B)] = (batch, "slq batch", (int(B),))
        operators["noise", int(B)] = (Difference(batch, full), "slq noise", (int(B),))
    ritz = pd.read_csv(out / "ritz.csv")
    hvp_rtol = HVP_RTOL32 if dtype == torch.float32 else HVP_RTOL64
    eps = float(torch.finfo(dtype).eps)
    for (operator, B), (op, stream, key) in operators.items():
        generator = stream_generator(config["seed"], stream, *key)
        reference = second_moments(op, config["probes"], generator=generator)
        rows = ritz[(ritz.operator == operator) & ((ritz.B == B) if B else ritz.B.isna())]
        assert sorted(set(rows.probe)) == list(range(config["probes"]))
        for probe, m2_ref in enumerate(reference):
            r = rows[rows.probe == probe]
            m2 = float((r.weight * r.value**2).sum())
            atol = slq_second_moment_atol(
                m2_ref, float(r.value.abs().max()), results["steps"], hvp_rtol=hvp_rtol, eps=eps
            )
            assert abs(m2 - m2_ref) <= atol, (operator, B, probe, m2, m2_ref, atol)


# ---- CIFAR-100 ------------------------------------------------------------------------------


def test_cifar100_miniature_with_a_training_checkpoint(tmp_path, cifar_dir):
    """A CNN trained by 'validation train' on the miniature CIFAR-100, measured on its first
    24 images: the model comes from the checkpoint (no --model), the data are exactly what
    load_cifar100 reads, 100 classes."""
    train_out = tmp_path / "train"
    argv = ["train", "--model", "cnn", "--data", "cifar100", "--data-dir", cifar_dir,
            "--epochs", 1, "--batch-size", 16, "--no-augment", "--out", train_out,
            "--quiet"]  # fmt: skip
    assert run_cli(argv) == 0
    checkpoint = list_checkpoints(train_out)[1]
    out = tmp_path / "network"
    argv = ["network", "--data", "cifar100", "--data-dir", cifar_dir, "--samples", 24,
            "--checkpoint", checkpoint, "--batch-sizes", 8, "--steps", 5, "--probes", 2,
            "--sigma2-probes", 2, "--out", out, "--quiet"]  # fmt: skip
    clock = time.perf_counter()
    assert run_cli(argv) == 0
    wall = time.perf_counter() - clock
    results = json.loads((out / "results.json").read_text())
    # SmallCNN(3 -> 8 -> 8 channels, 32x32, 100 classes): 224 + 584 + 8 * 16 * 16 * 100 + 100
    assert (results["model"], results["data"], results["N"], results["P"]) == (
        "cnn",
        "cifar100",
        24,
        224 + 584 + 2048 * 100 + 100,
    )
    assert results["epoch"] == 1 and results["weights"]["kind"] == "training checkpoint"
    assert results["training"] is None and not results["exact_check"]
    data = load_cifar100(cifar_dir, limit=24, dtype=torch.float64)
    identity = results["data_identity"]
    assert identity["num_classes"] == 100 and identity["input_shape"] == [3, 32, 32]
    expected = tensor_sha256(data.X) + tensor_sha256(data.y)
    assert identity["sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    ritz = pd.read_csv(out / "ritz.csv")
    sums = ritz.groupby(["operator", "B", "probe"], dropna=False)["weight"].sum()
    assert len(sums) == 2 * (1 + 2) and np.all(np.abs(sums - 1.0) <= NETWORK_WEIGHT_SUM_ATOL)
    model, _, _ = load_checkpoint(checkpoint, "cnn", 100, device="cpu")
    assert_slq_second_moments(out, model, data)
    print(f"cifar100 miniature network run (P = {results['P']:,}, N = 24): {wall:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "P"), [("vgg16", 15_291_300), ("vgg16bn", 15_299_748), ("preresnet110", 1_169_972)]
)
def test_paper_models_on_miniature_cifar100(tmp_path, cifar_dir, model, P):
    out = tmp_path / model
    argv = ["network", "--model", model, "--data", "cifar100", "--data-dir", cifar_dir,
            "--samples", 8, "--train-epochs", 0, "--batch-sizes", 4, "--steps", 3, "--probes", 1,
            "--sigma2-probes", 2, "--dtype", "float32", "--out", out, "--quiet"]  # fmt: skip
    assert run_cli(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["P"], results["N"], results["data"]) == (P, 8, "cifar100")
    # the weights: the seeded initialisation (--train-epochs 0), built again from its stream
    init = build(
        model, 100, generator=stream_generator(results["provenance"]["config"]["seed"], "init")
    )
    assert_slq_second_moments(out, init, load_cifar100(cifar_dir, limit=8, dtype=torch.float64))


# ---- training checkpoints and the epoch sweep --------------------------------------------------

SWEEP_ARGS = ["--samples", 100, "--batch-sizes", 10, 25, "--steps", 12, "--probes", 2,
              "--sigma2-probes", 3, "--exact", "no", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, trained):
    out = tmp_path_factory.mktemp("sweep") / "epochs"
    assert run_cli(["network", "--checkpoints", trained, *SWEEP_ARGS, "--out", out]) == 0
    return out


def test_sweep_writes_every_epoch_and_the_epoch_table(sweep, trained):
    names = {p.name for p in sweep.iterdir()}
    assert names == {"epoch_0001", "epoch_0002", "epoch_0003", "epochs.csv", "epochs.png",
                     "results.json"}  # fmt: skip
    table = pd.read_csv(sweep / "epochs.csv")
    assert tuple(table.columns) == epochs.EPOCH_COLUMNS
    assert list(table.epoch) == [1, 1, 2, 2, 3, 3] and list(table.B) == [10, 25] * 3
    for epoch in EPOCHS:
        folder = sweep / f"epoch_{epoch:04d}"
        results = json.loads((folder / "results.json").read_text())
        assert results["epoch"] == epoch and results["model"] == "mlp" and results["P"] == 2410
        assert results["weights"]["kind"] == "training checkpoint"
        assert results["provenance"]["config"]["checkpoint"] == str(
            list_checkpoints(trained)[epoch]
        )
        rows = table[table.epoch == epoch]
        for name, stored in results["sigma2"].items():
            slug = f"sigma2_{name.replace('-', '_')}"
            assert (rows[slug] == stored["value"]).all()
            assert (rows[f"{slug}_ci_low"] == stored["ci_low"]).all()
        per_b = pd.read_csv(folder / "sweep.csv")
        for column in ("lambda_full_max", "measured_min", "predicted_max", "t"):
            assert list(rows[column]) == list(per_b[column]), column
    # the weights change over training, and so do the spectra
    assert table.drop_duplicates("epoch").lambda_full_max.nunique() == 3
    top = json.loads((sweep / "results.json").read_text())
    assert top["kind"] == "network-epochs" and top["epochs"] == list(EPOCHS)


def test_an_epoch_folder_equals_a_single_checkpoint_run(tmp_path, sweep, trained):
    out = tmp_path / "single"
    checkpoint = list_checkpoints(trained)[2]
    assert run_cli(["network", "--checkpoint", checkpoint, *SWEEP_ARGS, "--out", out]) == 0
    for name in ("ritz.csv", "sigma2.csv", "sweep.csv"):
        assert (out / name).read_bytes() == (sweep / "epoch_0002" / name).read_bytes(), name


def test_sweep_reuses_finished_epochs_and_resumes(tmp_path, sweep, trained, monkeypatch, capsys):
    out = tmp_path / "epochs"
    for epoch in (1, 3):  # an interrupted sweep: epochs 1 and 3 done, 2 missing
        name = f"epoch_{epoch:04d}"
        (out / name).mkdir(parents=True)
        for f in (sweep / name).iterdir():
            (out / name / f.name).write_bytes(f.read_bytes())
    calls = []
    real = epochs.run_network

    def counting(config, **kwargs):
        calls.append(config.checkpoint)
        return real(config, **kwargs)

    monkeypatch.setattr(epochs, "run_network", counting)
    assert run_cli(["network", "--checkpoints", trained, *SWEEP_ARGS, "--out", out]) == 0
    assert calls == [str(list_checkpoints(trained)[2])]
    assert "epoch 1: reusing" in capsys.readouterr().out
    assert (out / "epochs.csv").read_bytes() == (sweep / "epochs.csv").read_bytes()
    # --epochs chooses; everything is reused now
    calls.clear()
    argv = ["network", "--checkpoints", trained, "--epochs", 3, 1, *SWEEP_ARGS, "--out", out]
    assert run_cli(argv) == 0 and calls == []
    assert list(pd.read_csv(out / "epochs.csv").epoch.unique()) == [1, 3]


# ---- resumable runs -------------------------------------------------------------------------

RESUME_ARGS = ["--samples", 120, "--width", 2, "--train-epochs", 1, "--batch-sizes", 8, 30,
               "--steps", 40, "--probes", 3, "--sigma2-probes", 4, "--exact", "no",
               "--save-every", 3, "--quiet"]  # fmt: skip


class MatvecCounter:
    def __init__(self, monkeypatch):
        self.count = 0
        real = HessianOperator.matvec

        def counted(op, v):
            self.count += 1
            return real(op, v)

        monkeypatch.setattr(HessianOperator, "matvec", counted)
        real_many = HessianOperator.matvec_many

        def counted_many(op, vectors):  # probes in lockstep: k products in one data pass
            self.count += len(vectors)
            return real_many(op, vectors)

        monkeypatch.setattr(HessianOperator, "matvec_many", counted_many)


def test_killed_run_resumes_to_identical_results(tmp_path, monkeypatch):
    state = tmp_path / "state"
    killed_out = tmp_path / "resumed"
    argv = ["network", *RESUME_ARGS, "--state-dir", state, "--out", killed_out]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "validation", *map(str, argv)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker = state / "slq-batch-8" / "state.pt"  # mid-run: sigma^2 and SLQ of H_emp done
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not killed_out.exists()
    assert (state / "trained-weights.pt").is_file()

    counter = MatvecCounter(monkeypatch)
    assert run_cli(argv) == 0
    resumed_products = counter.count
    counter.count = 0
    reference = tmp_path / "uninterrupted"
    assert run_cli(["network", *RESUME_ARGS, "--out", reference]) == 0
    assert resumed_products < counter.count  # finished work was loaded, not redone
    print(f"resumed run: {resumed_products} operator products, uninterrupted {counter.count}")
    for name in ("ritz.csv", "sigma2.csv", "sweep.csv", "summary.csv"):
        assert (killed_out / name).read_bytes() == (reference / name).read_bytes(), name
    stages = {p.name for p in state.iterdir()}
    assert stages == {"trained-weights.pt", "sigma2-per-sample", "sigma2-partition",
                      "sigma2-two-batch", "slq-full", "slq-batch-8", "slq-noise-8",
                      "slq-batch-30", "slq-noise-30"}  # fmt: skip


def test_state_of_another_configuration_or_corrupt_is_refused(tmp_path, capsys):
    state = tmp_path / "state"
    small = ["--samples", 40, "--width", 2, "--train-epochs", 1, "--batch-sizes", 8,
             "--steps", 5, "--probes", 1, "--sigma2-probes", 2, "--exact", "no",
             "--quiet"]  # fmt: skip
    assert run_cli(["network", *small, "--state-dir", state, "--out", tmp_path / "first"]) == 0
    capsys.readouterr()
    out = tmp_path / "second"
    changed = [*small, "--steps", 6, "--state-dir", state, "--out", out]
    assert_refused(capsys, ["network", *changed], "belongs to another run configuration", out)
    other_seed = [*small, "--seed", 1, "--state-dir", state, "--out", out]
    assert_refused(capsys, ["network", *other_seed], "another run configuration", out)
    (state / "slq-full" / "state.pt").write_bytes(b"truncated")
    again = [*small, "--state-dir", state, "--out", out]
    assert_refused(capsys, ["network", *again], "cannot be read", out)


# ---- torch.distributed ----------------------------------------------------------------------

DIST_ARGS = ["--samples", 60, "--width", 2, "--train-epochs", 1, "--batch-sizes", 8, 20,
             "--steps", 20, "--probes", 2, "--sigma2-probes", 3, "--hvp-batch", 16,
             "--quiet"]  # fmt: skip


@pytest.mark.distributed
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo"
)
def test_two_gloo_processes_match_the_single_process_run(tmp_path):
    out = tmp_path / "two"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        argv = ["network", *DIST_ARGS, "--device", "cpu", "--out", out]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "validation", *map(str, argv)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, (o, e)) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank}:\n{o.decode()[-2000:]}\n{e.decode()[-3000:]}"
    assert b"network: results in" in logs[0][0]
    assert logs[1][0] == b""  # only rank 0 prints and writes

    single = tmp_path / "one"
    assert run_cli(["network", *DIST_ARGS, "--out", single]) == 0
    r2 = json.loads((out / "results.json").read_text())
    r1 = json.loads((single / "results.json").read_text())
    assert r2["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert r1["distributed"] == {"world_size": 1, "backend": None}
    assert r2["training"] == r1["training"] and r2["exact_check"] and r1["exact_check"]
    assert r2["batch_indices"] == r1["batch_indices"]

    a, b = pd.read_csv(out / "ritz.csv"), pd.read_csv(single / "ritz.csv")
    keys = ["operator", "B", "probe"]
    assert a[keys].equals(b[keys])  # the same Ritz values exist (no breakdown moved)
    P = r1["P"]
    worst = (0.0, 0.0, 0.0)  # |difference|, ||A||, tolerance
    for key, group in b.groupby(keys, dropna=False):
        other = a.loc[group.index]
        norm = float(np.abs(group.value).max())
        diff = float(np.abs(other.value.to_numpy() - group.value.to_numpy()).max())
        tol = lanczos_reorder_atol(norm, P)
        assert diff <= tol, (key, diff, tol)
        worst = max(worst, (diff, norm, tol), key=lambda w: w[0] / w[1] if w[1] else 0.0)
    for name, stored in r1["sigma2"].items():
        rel = abs(r2["sigma2"][name]["value"] - stored["value"]) / stored["value"]
        assert rel <= SIGMA2_PROBE_RTOL64, (name, rel)
    print(
        f"distributed vs single: max |Ritz difference| {worst[0]:.2e} at ||A|| = {worst[1]:.3g} "
        f"(relative {worst[0] / worst[1]:.2e}; tolerance {worst[2]:.2e})"
    )


# ---- bad input: one line, exit status 2, nothing written --------------------------------------


def test_world_larger_than_the_data_is_refused(tmp_path, capsys, monkeypatch):
    fake = DistContext(0, 3, 0, "gloo", torch.device("cpu"), False)  # no process group needed
    monkeypatch.setattr(commandline, "init_context", lambda config: fake)
    out = tmp_path / "network"
    argv = ["network", "--samples", 2, "--batch-sizes", 2, "--out", out, "--quiet"]
    assert_refused(capsys, argv, "world size 3 exceeds the data set size N = 2", out)


@pytest.fixture(scope="module")
def empty_train_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("empty")
    (folder / "checkpoints").mkdir()
    return folder


BAD = [
    (["--data", "cifar100", "--data-dir", "{tmp}/nowhere"], "CIFAR-100 not found: expected"),
    (
        ["--data", "cifar100", "--data-dir", "{cifar}", "--samples", 100],
        "--samples 100 exceeds the 48 samples of cifar100",
    ),
    (["--model", "vgg16"], "model 'vgg16' does not fit data 'digits': it needs 3x32x32 images"),
    (["--checkpoint", "{ckpt}", "--model", "cnn"], "holds a mlp model, not cnn"),
    (
        [
            "--checkpoint",
            "{ckpt}",
            "--data",
            "cifar100",
            "--data-dir",
            "{cifar}",
            "--batch-sizes",
            8,
        ],
        "has 10 output classes, but 100 were asked for",
    ),
    (["--checkpoint", "{ckpt}", "--width", 4], "--width does not apply to checkpoint"),
    (["--checkpoints", "{train}", "--epochs", 2, 7], "--epochs 7 not saved in"),
    (["--checkpoints", "{train}", "--model", "cnn"], "holds a mlp model, not cnn"),
    (["--checkpoints", "{empty}"], "no checkpoints in"),
    (["--checkpoints", "{tmp}/nowhere"], "is not a folder"),
    (["--checkpoints", "{train}", "--checkpoint", "{ckpt}"], "exclude each other"),
    (["--epochs", 3], "--epochs chooses saved epochs of --checkpoints DIR"),
    (["--state-dir", "{ckpt}"], "exists and is not a folder"),
    (["--save-every", 0], "--save-every must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path, capsys, trained, cifar_dir, empty_train_out, args, message
):
    subst = {
        "{tmp}": str(tmp_path),
        "{cifar}": str(cifar_dir),
        "{train}": str(trained),
        "{ckpt}": str(list_checkpoints(trained)[1]),
        "{empty}": str(empty_train_out),
    }
    argv = []
    for a in args:
        a = str(a)
        for key, value in subst.items():
            a = a.replace(key, value)
        argv.append(a)
    out = tmp_path / "network"
    assert_refused(capsys, ["network", *argv, "--out", out, "--quiet"], message, out)


def test_under_torchrun_only_rank_0_reports_bad_input(tmp_path, capsys, monkeypatch):
    for name in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "network"
    with pytest.raises(SystemExit) as exit_info:  # the same line as rank 0's: not repeated
        run_cli(["network", "--steps", 0, "--out", out, "--quiet"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "" and not out.exists()
    # a launch problem may differ by rank: every rank says it
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["network", "--device", "cpu", "--out", out, "--quiet"]
    assert_refused(capsys, argv, "torch.distributed (rank 1): MASTER_ADDR is not set", out)
