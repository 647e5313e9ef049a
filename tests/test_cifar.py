"""nnhessian.cifar: on-disk format, normalisation, augmentation, clear errors. No real data."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from nnhessian import cifar
from nnhessian.cifar import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CifarDataError,
    augment,
    channel_statistics,
    load_cifar100,
    normalize,
    read_cifar100,
    write_miniature_cifar100,
)
from nnhessian.data import BatchSource, InMemoryDataset, data_pass
from nnhessian.datasets import (
    DEFAULT_DATA_DIR,
    DatasetError,
    load_dataset,
    load_training_data,
    test_batches,
    training_batch,
)
from tests.tolerances import CIFAR_NORMALIZE_ATOL32, Z_STAT


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_miniature_cifar100(tmp_path_factory.mktemp("cifar"), 24, 10, seed=5)


def test_miniature_is_what_torchvision_reads(mini, monkeypatch):
    """torchvision's own CIFAR100 parser (MD5 checks switched off: the sums are the real
    files') reads the same images, labels and class names from the miniature files."""
    import torchvision.datasets.cifar as tv

    monkeypatch.setattr(tv, "check_integrity", lambda *a, **k: True)
    for split, n in (("train", 24), ("test", 10)):
        ref = tv.CIFAR100(str(mini), train=split == "train")
        ours = read_cifar100(mini, split)
        assert len(ours) == len(ref) == n
        assert np.array_equal(ours.images.permute(0, 2, 3, 1).numpy(), ref.data)
        assert ours.labels.tolist() == list(ref.targets)
        assert list(ours.classes) == list(ref.classes) and len(ours.classes) == 100
        assert ours.images.dtype == torch.uint8 and ours.images.shape == (n, 3, 32, 32)


def test_miniature_is_deterministic_and_accepts_the_folder_itself(tmp_path, mini):
    again = write_miniature_cifar100(tmp_path / "again", 24, 10, seed=5)
    a, b = read_cifar100(mini, "train"), read_cifar100(again, "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = read_cifar100(mini / cifar.BASE_FOLDER, "train")  # --data-dir .../cifar-100-python
    assert torch.equal(a.images, c.images)
    other = read_cifar100(write_miniature_cifar100(tmp_path / "other", 24, 10, seed=6), "train")
    assert not torch.equal(a.images, other.images)


def test_hessian_dataset_is_normalised_in_file_order(mini):
    raw = read_cifar100(mini, "train")
    data = load_cifar100(mini)
    assert isinstance(data, InMemoryDataset) and data.num_classes == 100 and len(data) == 24
    mean = np.asarray(CIFAR100_MEAN).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR100_STD).reshape(1, 3, 1, 1)
    expected = (raw.images.numpy().astype(np.float64) / 255 - mean) / std
    assert data.X.dtype == torch.float32
    assert np.max(np.abs(data.X.numpy() - expected)) <= CIFAR_NORMALIZE_ATOL32
    assert torch.equal(data.y, raw.labels)
    again = load_cifar100(mini)
    assert torch.equal(data.X, again.X)  # no augmentation, no shuffling
    head = load_cifar100(mini, limit=5, dtype=torch.float64)
    assert len(head) == 5 and head.X.dtype == torch.float64
    assert np.max(np.abs(head.X.numpy() - expected[:5])) <= 1e-15 * 8
    # a data pass over it passes the determinism fingerprint on a second pass
    source = BatchSource.from_dataset(data, 7, device="cpu", dtype=torch.float32)
    for _ in range(2):
        data_pass(lambda X, y: (X.sum().reshape(1),), source, progress=False)
    assert load_cifar100(mini, split="test").X.shape == (10, 3, 32, 32)


def test_channel_statistics_recipe():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 4, 4), generator=g, dtype=torch.uint8)
    mean, std = channel_statistics(images)
    x = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-15)
    assert np.allclose(std, x.std(axis=(0, 2, 3)), rtol=0, atol=1e-15)
    z = normalize(images, mean=mean, std=std, dtype=torch.float64)
    assert np.allclose(z.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-14)
    assert np.allclose(z.std(dim=(0, 2, 3), correction=0).numpy(), 1, atol=1e-14)


def _find_crop(out, img):
    """All (i, j, flip) with out == crop(pad(img, 4), i, j) (flipped horizontally if flip)."""
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    hits = []
    for i in range(9):
        for j in range(9):
            crop = padded[:, i : i + 32, j : j + 32]
            for flip in (False, True):
                if torch.equal(out, crop.flip(-1) if flip else crop):
                    hits.append((i, j, flip))
    return hits


def test_augmentation_is_a_padded_crop_with_flip():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(1, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8)
    out = augment(images, generator=torch.Generator().manual_seed(2))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # replay the documented draws: offsets (n, 2), then flips (n,)
    replay = torch.Generator().manual_seed(2)
    offsets = torch.randint(0, 9, (12, 2), generator=replay)
    flips = torch.randint(0, 2, (12,), generator=replay).bool()
    for k in range(12):
        assert _find_crop(out[k], images[k]) == [(int(offsets[k, 0]), int(offsets[k, 1]),
                                                  bool(flips[k]))]  # fmt: skip
    # deterministic in the generator, different for another seed, input untouched
    assert torch.equal(out, augment(images, generator=torch.Generator().manual_seed(2)))
    assert not torch.equal(out, augment(images, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(TypeError, match="torch.Generator"):
        augment(images, generator=None)


def test_augmentation_draw_frequencies():
    """Offsets uniform on 0..8 and flips fair: counts within Z_STAT binomial standard errors."""
    n = 4000
    images = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    images[:, :, 0, 0] = 255  # a marker pixel: where it lands tells the offset and the flip
    out = augment(images, generator=torch.Generator().manual_seed(7))
    rows, cols = [], []
    for k in range(n):
        r, c = torch.nonzero(out[k, 0] == 255, as_tuple=True)
        if len(r):
            rows.append(int(r[0]))
            cols.append(int(c[0]))
    # The marker sits at (4, 4) of the padded image, so a crop at offset (i, j) shows it at
    # (4 - i, 4 - j), or at column 31 - (4 - j) = 27 + j when flipped: it stays visible iff
    # i <= 4 and j <= 4, probability (5/9)^2 for uniform offsets, flip or not.
    p = (5 / 9) ** 2
    visible = len(rows) / n
    assert abs(visible - p) <= Z_STAT * math.sqrt(p * (1 - p) / n)
    flipped = np.mean([c >= 27 for c in cols])  # flipped markers land in columns 27..31
    assert abs(flipped - 0.5) <= Z_STAT * math.sqrt(0.25 / len(cols))
    assert set(cols) == set(range(5)) | set(range(27, 32))
    assert set(rows) == set(range(5))


def test_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(CifarDataError) as err:
        read_cifar100(tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "--download" in msg and "cifar-100-python.tar.gz" in msg


def _corrupt(folder, name, content: bytes):
    (folder / cifar.BASE_FOLDER / name).write_bytes(content)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("train", b"not a pickle at all", "cannot unpickle"),
        ("train", pickle.dumps([1, 2, 3]), "expected a dict"),
        ("train", pickle.dumps({"data": np.zeros((2, 10), np.uint8), "fine_labels": [0, 1]}),
         r"uint8 \(N, 3072\)"),
        ("train", pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100]}),
         "outside"),
        ("train", pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}), "fine_labels"),
        ("meta", pickle.dumps({"fine_label_names": ["a"]}), "fine_label_names"),
    ],
)  # fmt: skip
def test_corrupt_files_give_one_clear_line(tmp_path, name, content, match):
    write_miniature_cifar100(tmp_path, 4, 2, 0)
    _corrupt(tmp_path, name, content)
    with pytest.raises(CifarDataError, match=match) as err:
        read_cifar100(tmp_path, "train")
    msg = str(err.value)
    assert "\n" not in msg and "corrupt" in msg and str(tmp_path) in msg


def test_full_size_files_are_checked_against_the_published_md5(tmp_path):
    write_miniature_cifar100(tmp_path, 4, 2, 0)
    fake = {"data": np.zeros((10_000, 3072), np.uint8), "fine_labels": [0] * 10_000}
    _corrupt(tmp_path, "test", pickle.dumps(fake, protocol=2))
    with pytest.raises(CifarDataError, match="MD5"):
        read_cifar100(tmp_path, "test")


def test_download_only_when_asked(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_miniature_cifar100(root, 4, 2, 0)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    with pytest.raises(CifarDataError):
        read_cifar100(tmp_path / "d")
    assert calls == []  # never fetched without download=True
    data = read_cifar100(tmp_path / "d", download=True)
    assert len(data) == 4 and calls == [(str(tmp_path / "d"), True, True)]

    class Offline:
        def __init__(self, root, train, download):
            raise OSError("network unreachable\nmore detail")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Offline)
    with pytest.raises(CifarDataError, match="could not download CIFAR-100") as err:
        read_cifar100(tmp_path / "e", download=True)
    assert "\n" not in str(err.value) and "cifar-100-python.tar.gz" in str(err.value)


def test_miniature_sizes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        write_miniature_cifar100(tmp_path, 0, 2, 0)
    with pytest.raises(ValueError, match="n_test"):
        write_miniature_cifar100(tmp_path, 2, 10_000, 0)


def test_download_unpacks_an_archive_already_in_the_folder_with_torchvision(tmp_path, monkeypatch):
    """The real torchvision path of --download, offline: with cifar-100-python.tar.gz already in
    the folder and its MD5 right, torchvision verifies and unpacks it without fetching. The
    published MD5 sums are swapped for the miniature's; everything else is torchvision's code."""
    import hashlib
    import tarfile

    import torchvision.datasets

    def md5(path):
        return hashlib.md5(path.read_bytes()).hexdigest()

    source = write_miniature_cifar100(tmp_path / "src", 6, 3, 1) / "cifar-100-python"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-100-python")
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "tgz_md5", md5(archive))
    monkeypatch.setattr(cls, "train_list", [["train", md5(source / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", md5(source / "test")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(source / "meta")})
    monkeypatch.setattr(cls, "url", "http://127.0.0.1:9/unreachable")  # a fetch would fail

    train = read_cifar100(data_dir, download=True)
    test = read_cifar100(data_dir, "test")
    expected = read_cifar100(tmp_path / "src")
    assert len(train) == 6 and len(test) == 3
    assert np.array_equal(train.images, expected.images)
    assert np.array_equal(train.labels, expected.labels)


# ---- the data-set registry (nnhessian.datasets) on the miniature files ---------------------


def test_registry_cifar100_is_the_hessian_view(mini, tmp_path, monkeypatch):
    """load_dataset("cifar100") is load_cifar100's training split, exactly; ``limit`` cuts and
    asks no more than there is; no data_dir reads DEFAULT_DATA_DIR ("data" in the cwd)."""
    ref = load_cifar100(mini, dtype=torch.float64)
    data = load_dataset("cifar100", data_dir=mini, dtype=torch.float64)
    assert data.num_classes == 100 and torch.equal(data.X, ref.X) and torch.equal(data.y, ref.y)
    head = load_dataset("cifar100", data_dir=mini, dtype=torch.float32, limit=5)
    assert torch.equal(head.X, load_cifar100(mini, limit=5).X) and len(head) == 5
    assert len(load_dataset("cifar100", data_dir=mini, dtype=torch.float32, limit=99)) == 24
    assert DEFAULT_DATA_DIR == {"cifar100": "data"}
    write_miniature_cifar100(tmp_path / "data", 24, 10, seed=5)  # the same files as `mini`
    monkeypatch.chdir(tmp_path)
    assert torch.equal(load_dataset("cifar100", dtype=torch.float64).X, ref.X)


def test_registry_cifar100_training_split(mini):
    """load_training_data("cifar100"): the train and test files as uint8 images, file order."""
    train, test = read_cifar100(mini, "train"), read_cifar100(mini, "test")
    data = load_training_data("cifar100", data_dir=mini)
    assert data.name == "cifar100" and data.num_classes == 100 and data.raw_uint8
    assert torch.equal(data.train_X, train.images) and torch.equal(data.train_y, train.labels)
    assert torch.equal(data.test_X, test.images) and torch.equal(data.test_y, test.labels)
    assert data.input_shape == (3, 32, 32)
    cut = load_training_data("cifar100", data_dir=mini, limit=7)
    assert torch.equal(cut.train_X, train.images[:7]) and torch.equal(cut.test_y, test.labels)


def test_registry_cifar100_batches_augment_then_normalise(mini):
    """A training batch: the chosen images, augmented from the generator, then normalised; the
    test batches: every test image normalised, in order, never augmented."""
    data = load_training_data("cifar100", data_dir=mini)
    idx = torch.tensor([5, 0, 17])
    X, y = training_batch(
        data, idx, augment=True, generator=torch.Generator().manual_seed(4), device="cpu"
    )
    expected = normalize(augment(data.train_X[idx], generator=torch.Generator().manual_seed(4)))
    assert torch.equal(X, expected) and torch.equal(y, data.train_y[idx])
    X, _ = training_batch(data, idx, augment=False, generator=torch.Generator(), device="cpu")
    assert torch.equal(X, normalize(data.train_X[idx]))
    pairs = list(test_batches(data, "cpu"))
    assert len(pairs) == 1  # 10 test images, batches of EVAL_BATCH = 1000
    assert torch.equal(pairs[0][0], normalize(data.test_X)) and torch.equal(
        pairs[0][1], data.test_y
    )


def test_registry_cifar100_errors_are_one_line(mini, tmp_path):
    """Missing files: the same one line as CifarDataError, as a DatasetError (a ValueError);
    a limit above the training set names both numbers."""
    with pytest.raises(CifarDataError) as raw:
        read_cifar100(tmp_path / "nodata")
    for load in (
        lambda: load_dataset("cifar100", data_dir=tmp_path / "nodata", dtype=torch.float32),
        lambda: load_training_data("cifar100", data_dir=tmp_path / "nodata"),
    ):
        with pytest.raises(DatasetError) as err:
            load()
        assert str(err.value) == str(raw.value) and isinstance(err.value, ValueError)
    with pytest.raises(DatasetError, match="^--limit 25 exceeds the 24 training samples of cifar"):
        load_training_data("cifar100", data_dir=mini, limit=25)
