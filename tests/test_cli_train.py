"""``python -m validation train``: the recipe, exact resume, checkpoints, bad input. Toy sizes."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nnhessian import datasets
from nnhessian.cifar import write_miniature_cifar100
from nnhessian.data import InMemoryDataset, load_digits
from nnhessian.train_checkpoint import (
    CheckpointError,
    SeedStreams,
    isolated_generators,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    seed_streams,
)
from nnhessian.training import TrainingError, default_decay, learning_rate, model_options
from tests.helpers import one_line_error
from tests.tolerances import TRAIN_RESUME_ATOL
from validation.cli import main

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
    with pytest.raises(CheckpointError, match="holds a cnn_bn model, not vgg16"):
        load_checkpoint(path, "vgg16", 100)
    with pytest.raises(CheckpointError, match="has 100 output classes, but 10"):
        load_checkpoint(path, "cnn_bn", 10)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", "cnn_bn", 100)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(path.read_bytes()[:1000])  # a truncated file
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage, "cnn_bn", 100)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(foreign, "cnn_bn", 100)
    reshaped = tmp_path / "reshaped.pt"  # right format, weights of another shape
    torch.save({**payload, "model_options": {**payload["model_options"], "width": 3}}, reshaped)
    with pytest.raises(CheckpointError, match="does not fit model cnn_bn with 100 classes"):
        load_checkpoint(reshaped, "cnn_bn", 100)
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "version": 2}, newer)
    with pytest.raises(CheckpointError, match="has format version 2; this suite reads version 1"):
        load_checkpoint(newer)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            load_checkpoint(path, "cnn_bn", 100, device="cuda")


def test_seed_streams_are_pinned():
    """The four streams of a seed never change: old checkpoints and results stay reproducible
    (SeedSequence(3).spawn(4), first 64-bit word of each child >> 1)."""
    assert seed_streams(3) == SeedStreams(
        init=7224678797418390616,
        data=9221857584964276806,
        torch=608004686068262013,
        numpy=8529447876139971898,
    )


def test_isolated_generators_seed_restore_and_leave_the_caller_alone():
    """Inside: the globals seeded from the streams (or restored from a captured state); after:
    the caller's torch, numpy and python generators continue as if nothing had happened."""
    from nnhessian.train_checkpoint import capture_rng

    streams = seed_streams(5)
    cpu = torch.device("cpu")

    def draws():
        legacy = np.random.rand(3)  # noqa: NPY002 - the global state is what is checked
        return [torch.rand(3), torch.tensor(legacy), [random.random() for _ in "abc"]]

    torch.manual_seed(11), np.random.seed(12), random.seed(13)  # noqa: NPY002
    expected = draws()
    torch.manual_seed(11), np.random.seed(12), random.seed(13)  # noqa: NPY002
    data = torch.Generator()
    with isolated_generators(cpu, data, streams=streams):
        inside = draws()
        state = capture_rng(data, cpu)
        later = [*draws(), torch.randint(0, 10**6, (3,), generator=data)]
    assert_same_tensors(draws(), expected)  # the caller's streams, untouched
    with isolated_generators(cpu, data, state=state):  # a resume continues where it stopped
        assert_same_tensors([*draws(), torch.randint(0, 10**6, (3,), generator=data)], later)
    torch.manual_seed(streams.torch)
    np.random.seed(streams.numpy % 2**32)  # noqa: NPY002
    random.seed(streams.numpy)
    assert_same_tensors(inside, draws())  # seeded from the torch and numpy streams
    with pytest.raises(ValueError, match="exactly one of streams"):
        with isolated_generators(cpu, data):
            pass


def test_registry_digits_split_and_hessian_view():
    """digits: the first 1500 of 1797 standardised samples train, the other 297 test; the
    Hessian view is load_digits(images=True) in the dtype asked, the first `limit` samples."""
    ref = load_digits(images=True, dtype=torch.float32)
    data = datasets.load_training_data("digits")
    assert data.name == "digits" and data.num_classes == 10 and not data.raw_uint8
    assert torch.equal(data.train_X, ref.X[:1500]) and torch.equal(data.train_y, ref.y[:1500])
    assert torch.equal(data.test_X, ref.X[1500:]) and torch.equal(data.test_y, ref.y[1500:])
    assert len(data.test_y) == 297 and data.input_shape == (1, 8, 8)
    cut = datasets.load_training_data("digits", limit=40)
    assert torch.equal(cut.train_X, ref.X[:40]) and len(cut.test_y) == 297
    with pytest.raises(datasets.DatasetError, match="^--limit 1501 exceeds the 1500 training"):
        datasets.load_training_data("digits", limit=1501)
    view = datasets.load_dataset("digits", dtype=torch.float64, limit=100)
    ref64 = load_digits(images=True, dtype=torch.float64)
    assert torch.equal(view.X, ref64.X[:100]) and torch.equal(view.y, ref64.y[:100])
    assert (
        view.num_classes == 10 and len(datasets.load_dataset("digits", dtype=torch.float64)) == 1797
    )


def test_registry_names_and_a_new_data_set(monkeypatch):
    """Unknown names: one line listing the accepted ones. A researcher's loader registered in
    DATASETS / NUM_CLASSES is found by load_dataset, cut to `limit`, given its class count."""
    assert list(datasets.DATASETS) == ["digits", "cifar100"]
    assert list(datasets.TRAINING_SPLITS) == ["cifar100", "digits"]
    assert datasets.NUM_CLASSES == {"digits": 10, "cifar100": 100}
    with pytest.raises(
        datasets.DatasetError, match="^unknown data set 'mnist'; accepted: digits, c"
    ):
        datasets.load_dataset("mnist", dtype=torch.float32)
    with pytest.raises(datasets.DatasetError, match="'mnist'; choose one of cifar100, digits$"):
        datasets.load_training_data("mnist")
    X = torch.arange(12.0).reshape(6, 2)
    seen = {}

    def blobs(*, data_dir, dtype, download=False, limit=None):
        seen.update(data_dir=data_dir, download=download)
        return InMemoryDataset(X.to(dtype), torch.tensor([0, 1, 2, 0, 1, 2]))  # no num_classes

    monkeypatch.setitem(datasets.DATASETS, "blobs", blobs)
    monkeypatch.setitem(datasets.NUM_CLASSES, "blobs", 3)
    monkeypatch.setitem(datasets.DEFAULT_DATA_DIR, "blobs", "blob-folder")
    data = datasets.load_dataset("blobs", dtype=torch.float64, limit=4)
    assert torch.equal(data.X, X[:4].double()) and data.num_classes == 3
    assert seen == {"data_dir": "blob-folder", "download": False}


def test_model_options_fit_the_images():
    assert model_options("mlp", (1, 8, 8), data="digits") == {"in_features": 64}
    assert model_options("cnn", (3, 32, 32), data="cifar100", dropout=0.1) == {
        "in_channels": 3,
        "image_size": 32,
        "dropout": 0.1,
    }
    assert model_options("vgg16", (3, 32, 32), data="cifar100") == {}
    with pytest.raises(TrainingError, match="^model cnn needs square images of even size, got 7x7"):
        model_options("cnn", (1, 7, 7), data="x")
    with pytest.raises(TrainingError, match="the digits data are 1x8x8; use mlp, cnn or cnn_bn"):
        model_options("preresnet110", (1, 8, 8), data="digits")


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
    err = one_line_error(capsys, [*toy(mini, out), *extra])
    assert match in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_data_folder(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--model", "cnn", "--data-dir", str(tmp_path / "nodata"), "--out", str(out)]
    err = one_line_error(capsys, argv)
    assert f"expected {tmp_path / 'nodata' / 'cifar-100-python'}" in err and "--download" in err
    assert not out.exists()


def test_foreign_or_corrupt_checkpoint_in_out(mini, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    before = snapshot(out)
    other_arch = [*toy(mini, out), "--model", "mlp"]
    assert "holds checkpoints of a cnn_bn model, not mlp" in one_line_error(capsys, other_arch)
    other_lr = [*toy(mini, out), "--lr", "0.05"]
    assert "another configuration (lr 0.1 there, 0.05 here)" in one_line_error(capsys, other_lr)
    assert snapshot(out) == before
    (out / "checkpoints" / "epoch_0003.pt").write_bytes(b"\x00garbage")
    assert "epoch_0003.pt is corrupt" in one_line_error(capsys, toy(mini, out))


def test_module_imports_no_torch():
    code = (
        "import sys, validation.train, validation.cli; validation.cli.build_parser(); "
        "bad = [m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
