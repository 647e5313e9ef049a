"""``python -m validation train``: the recipe, exact resume, checkpoints, bad input. Toy sizes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from nnhessian.cifar import write_miniature_cifar100
from tests.tolerances import TRAIN_RESUME_ATOL
from validation.cli import main
from validation.errors import UsageError
from validation.train import (
    default_decay,
    learning_rate,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
)

assert TRAIN_RESUME_ATOL == 0.0  # bit-identical: compared with torch.equal below


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_miniature_cifar100(tmp_path_factory.mktemp("cifar"), 48, 16, seed=1)


def toy(mini, out, *extra):
    """A toy CIFAR run: cnn_bn (BatchNorm + dropout: every random stream matters)."""
    return [
        "train", "--model", "cnn_bn", "--data-dir", str(mini), "--epochs", "3",
        "--batch-size", "16", "--dropout", "0.3", "--seed", "3", "--device", "cpu",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{k}]")
    else:
        assert a == b, where


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "full"
    assert main(toy(mini, out)) == 0
    return out


@pytest.mark.parametrize("resume_from", [1, 2])
def test_resume_is_bit_identical(mini, uninterrupted, tmp_path, resume_from):
    """Kill after epoch `resume_from` (later checkpoints gone, a half-written temporary file
    left behind), run the same command again: the final state equals the uninterrupted run's."""
    out = tmp_path / "resumed"
    shutil.copytree(uninterrupted, out)
    for epoch, path in list_checkpoints(out).items():
        if epoch > resume_from:
            path.unlink()
    (out / "history.csv").unlink()
    (out / "checkpoints" / ".epoch_0003.pt.abc.tmp").write_bytes(b"half a checkpoint")
    assert main(toy(mini, out)) == 0
    full = read_checkpoint(uninterrupted / "checkpoints" / "epoch_0003.pt")
    resumed = read_checkpoint(out / "checkpoints" / "epoch_0003.pt")
    for key in ("model_state", "optimizer_state", "rng", "epoch", "config", "schedule"):
        assert_same_tensors(full[key], resumed[key], key)
    assert without_seconds(full["history"]) == without_seconds(resumed["history"])
    assert len(resumed["history"]) == 3
    table = pd.read_csv(out / "history.csv")
    assert table["epoch"].tolist() == [1, 2, 3]


def test_checkpoint_contents_and_results(uninterrupted):
    assert sorted(list_checkpoints(uninterrupted)) == [1, 2, 3]
    payload = read_checkpoint(uninterrupted / "checkpoints" / "epoch_0002.pt")
    assert payload["epoch"] == 2 and payload["seed"] == 3
    assert payload["config"]["model"] == "cnn_bn" and payload["config"]["augment"] is True
    assert set(payload["rng"]) == {"torch", "cuda", "numpy", "python", "data"}
    assert payload["optimizer_state"]["state"]  # momentum buffers are there
    assert payload["model_options"] == {"in_channels": 3, "image_size": 32, "dropout": 0.3}
    results = json.loads((uninterrupted / "results.json").read_text())
    assert results["kind"] == "train" and results["epochs_completed"] == 3
    assert results["provenance"]["config"]["seed"] == 3
    assert results["checkpoints"] == [f"checkpoints/epoch_000{k}.pt" for k in (1, 2, 3)]
    assert not [p for p in uninterrupted.rglob("*") if ".tmp" in p.name or "partial" in p.name]
    # the schedule of the run: 3 epochs scale [126, 161] of 225 to [2, 2]: a step at index 2
    assert [row["lr"] for row in results["history"]] == pytest.approx([0.1, 0.1, 0.001])


def test_rerunning_a_finished_run_changes_nothing(mini, uninterrupted, capsys):
    before = snapshot(uninterrupted)
    assert main(toy(mini, uninterrupted)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(uninterrupted) == before


def test_checkpoint_every_k_keeps_the_last(mini, tmp_path):
    out = tmp_path / "every2"
    assert main(toy(mini, out, "--checkpoint-every", "2", "--limit", "16")) == 0
    assert sorted(list_checkpoints(out)) == [2, 3]


def test_learning_rate_schedule():
    # paper, section 4: "[225, 300] epochs ... decaying from epochs [126, 161]", respectively
    assert default_decay("vgg16", 225) == (126, 224)
    assert default_decay("preresnet110", 300) == (161, 299)
    assert default_decay("vgg16", 100) == (56, 99)  # 126 * 100 / 225 = 56
    assert default_decay("mlp", 1) == (1, 1)  # one epoch (index 0) keeps lr0
    kw = {"lr": 0.1, "decay_start": 126, "decay_end": 161, "final_fraction": 0.01}
    assert learning_rate(0, **kw) == learning_rate(126, **kw) == 0.1
    assert learning_rate(161, **kw) == learning_rate(224, **kw) == pytest.approx(0.001, rel=1e-15)
    mid = learning_rate(126 + 14, **kw)  # 14 of 35 steps: 0.1 (1 - 0.99 * 0.4)
    assert mid == pytest.approx(0.1 * (1 - 0.99 * 14 / 35), rel=1e-15)
    lrs = [learning_rate(e, **kw) for e in range(225)]
    steps = [a - b for a, b in zip(lrs[126:161], lrs[127:162], strict=True)]
    assert steps == pytest.approx([0.1 * 0.99 / 35] * 35, rel=1e-12)  # linear


def test_digits_quick_run_learns(tmp_path, capsys):
    """The small offline run: an MLP on the digits reaches far above chance (10%) in 3 epochs."""
    out = tmp_path / "digits"
    argv = ["train", "--model", "mlp", "--data", "digits", "--epochs", "3", "--batch-size", "64",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "loss=" in captured.err and "acc=" in captured.err  # the progress bar's postfix
    assert "P = 2,410" in captured.out
    history = pd.read_csv(out / "history.csv")
    assert history["test_accuracy"].iloc[-1] > 0.7
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    model, epoch, meta = load_checkpoint(out / "checkpoints" / "epoch_0003.pt", "mlp", 10)
    assert epoch == 3 and meta["num_parameters"] == 2410 and meta["data"] == "digits"
    assert not model.training


def test_load_checkpoint(uninterrupted, tmp_path):
    path = uninterrupted / "checkpoints" / "epoch_0003.pt"
    model, epoch, meta = load_checkpoint(path, "cnn_bn", 100)
    payload = read_checkpoint(path)
    assert epoch == 3 and meta["model"] == "cnn_bn" and meta["num_classes"] == 100
    assert meta["seed"] == 3 and len(meta["history"]) == 3 and meta["config"]["epochs"] == 3
    assert_same_tensors(dict(model.state_dict()), dict(payload["model_state"]))
    assert load_checkpoint(path)[1] == 3  # model and classes taken from the file
    with pytest.raises(UsageError, match="holds a cnn_bn model, not vgg16"):
        load_checkpoint(path, "vgg16", 100)
    with pytest.raises(UsageError, match="has 100 output classes, but 10"):
        load_checkpoint(path, "cnn_bn", 10)
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", "cnn_bn", 100)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(path.read_bytes()[:1000])  # a truncated file
    with pytest.raises(UsageError, match="corrupt"):
        load_checkpoint(garbage, "cnn_bn", 100)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(UsageError, match="not a training checkpoint"):
        load_checkpoint(foreign, "cnn_bn", 100)
    reshaped = tmp_path / "reshaped.pt"  # right format, weights of another shape
    torch.save({**payload, "model_options": {**payload["model_options"], "width": 3}}, reshaped)
    with pytest.raises(UsageError, match="does not fit model cnn_bn with 100 classes"):
        load_checkpoint(reshaped, "cnn_bn", 100)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            load_checkpoint(path, "cnn_bn", 100, device="cuda")


def _one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--model", "resnet18"], "unknown model 'resnet18'; known models: cnn, cnn_bn"),
        (["--num-classes", "10"], "--num-classes 10 does not match the data: cifar100 has 100"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--data", "mnist"], "unknown data set 'mnist'"),
        (["--decay-start", "5", "--decay-end", "2"], "--decay-start <= --decay-end"),
        (["--model", "vgg16", "--data", "digits"], "vgg16 needs 3x32x32 images"),
        (["--limit", "1000"], "--limit 1000 exceeds the 48 training samples"),
        (["--model", "preresnet110"], "preresnet110 has no dropout layers"),
        (["--lr", "1e30"], "training diverged in epoch 1: the mean training loss is nan"),
        pytest.param(
            ["--device", "cuda"], "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present"),
        ),
    ],
)  # fmt: skip
def test_bad_input_one_line_nothing_written(mini, tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    err = _one_line_exit_2([*toy(mini, out), *extra], capsys)
    assert match in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_data_folder(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--model", "cnn", "--data-dir", str(tmp_path / "nodata"), "--out", str(out)]
    err = _one_line_exit_2(argv, capsys)
    assert f"expected {tmp_path / 'nodata' / 'cifar-100-python'}" in err and "--download" in err
    assert not out.exists()


def test_foreign_or_corrupt_checkpoint_in_out(mini, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    before = snapshot(out)
    other_arch = [*toy(mini, out), "--model", "mlp"]
    assert "holds checkpoints of a cnn_bn model, not mlp" in _one_line_exit_2(other_arch, capsys)
    other_lr = [*toy(mini, out), "--lr", "0.05"]
    assert "another configuration (lr 0.1 there, 0.05 here)" in _one_line_exit_2(other_lr, capsys)
    assert snapshot(out) == before
    (out / "checkpoints" / "epoch_0003.pt").write_bytes(b"\x00garbage")
    assert "epoch_0003.pt is corrupt" in _one_line_exit_2(toy(mini, out), capsys)


def test_module_imports_no_torch():
    code = (
        "import sys, validation.train, validation.cli; validation.cli.build_parser(); "
        "bad = [m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
