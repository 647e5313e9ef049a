"""nnhessian.data: deterministic batching, the digits data set, fixed batches, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nnhessian.data import (
    BatchSource,
    DeterminismError,
    InMemoryDataset,
    data_pass,
    draw_batch_indices,
    load_digits,
)
from rmt.testing import seeds


def _toy(N=23, d=3):
    X = torch.arange(N * d, dtype=torch.float64).reshape(N, d)
    y = torch.arange(N) % 4
    return InMemoryDataset(X, y, num_classes=4)


def test_batches_fixed_order_with_uneven_last_batch():
    data = _toy()
    batches = list(data.batches(10))
    assert [X.shape[0] for X, _ in batches] == [10, 10, 3]
    assert data.num_batches(10) == 3
    assert torch.equal(torch.cat([X for X, _ in batches]), data.X)
    assert torch.equal(torch.cat([y for _, y in batches]), data.y)
    again = list(data.batches(10))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert [X.shape[0] for X, _ in data.batches(23)] == [23]
    assert [X.shape[0] for X, _ in data.batches(100)] == [23]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        list(_toy().batches(bad))


def test_dataset_validation_and_subset():
    with pytest.raises(ValueError, match="same N"):
        InMemoryDataset(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        InMemoryDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64))
    data = _toy()
    sub = data.subset([5, 0, 7])
    assert torch.equal(sub.X, data.X[[5, 0, 7]]) and torch.equal(sub.y, data.y[[5, 0, 7]])
    with pytest.raises(ValueError, match=r"\[0, 22\]"):
        data.subset([23])
    cast = data.to("cpu", torch.float32)
    assert cast.X.dtype == torch.float32 and cast.y.dtype == torch.int64
    assert data.to("cpu", torch.float64) is data


def test_load_digits_standardised():
    data = load_digits()
    assert data.X.shape == (1797, 64) and data.y.shape == (1797,) and data.num_classes == 10
    assert data.X.dtype == torch.float32
    assert sorted(torch.unique(data.y).tolist()) == list(range(10))
    X = data.X.double()
    std = X.std(0, correction=0)
    varying = std > 0
    # z-scored in float64, then rounded to float32: mean 0 and sd 1 to float32 precision
    assert float(X.mean(0).abs().max()) <= 1e-6
    assert float((std[varying] - 1).abs().max()) <= 1e-6
    assert int((~varying).sum()) >= 1  # constant corner pixels are only centred
    images = load_digits(images=True, dtype=torch.float64)
    assert images.X.shape == (1797, 1, 8, 8) and images.X.dtype == torch.float64
    assert torch.allclose(images.X.reshape(1797, 64).float(), data.X)
    raw = load_digits(standardize=False)
    assert float(raw.X.max()) == 16.0 and float(raw.X.min()) == 0.0


@given(seed=seeds, N=st.integers(1, 300), frac=st.floats(0.0, 1.0))
def test_draw_batch_indices_distinct_sorted_reproducible(seed, N, frac):
    B = max(1, int(round(frac * N)))
    idx = draw_batch_indices(N, B, generator=torch.Generator().manual_seed(seed))
    again = draw_batch_indices(N, B, generator=torch.Generator().manual_seed(seed))
    assert idx.shape == (B,) and idx.dtype == torch.int64
    assert torch.equal(idx, again)
    assert torch.unique(idx).numel() == B
    assert bool((idx[1:] > idx[:-1]).all()) and int(idx.min()) >= 0 and int(idx.max()) < N


def test_draw_batch_indices_is_uniform():
    """Each index is included with probability B/N: counts over 4000 draws, chi-square."""
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(0)
    N, B, draws = 10, 3, 4000
    counts = np.zeros(N)
    for _ in range(draws):
        counts[draw_batch_indices(N, B, generator=g).numpy()] += 1
    assert chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize(
    ("N", "B", "message"),
    [
        (10, 11, "exceeds the data set size N = 10"),
        (10, 0, "B must be >= 1"),
        (10, -3, "B must be >= 1"),
        (0, 1, "N must be a positive integer"),
    ],
)
def test_draw_batch_indices_bad_input(N, B, message):
    with pytest.raises(ValueError, match=message):
        draw_batch_indices(N, B, generator=torch.Generator().manual_seed(0))


def test_draw_batch_indices_requires_a_generator():
    with pytest.raises(TypeError, match="torch.Generator"):
        draw_batch_indices(10, 3, generator=0)


def test_data_pass_sums_and_counts():
    data = _toy()
    src = BatchSource.from_dataset(data, 10, device="cpu", dtype=torch.float64)
    res = data_pass(lambda X, y: (X.sum(0), torch.tensor(float(X.shape[0]))), src, progress=False)
    assert res.count == 23 and res.batches == 3
    assert torch.equal(res.sums[0], data.X.sum(0)) and float(res.sums[1]) == 23.0
    # a second identical pass is accepted
    data_pass(lambda X, y: (X.sum(0),), src, progress=False)
    assert src.passes == 2


def test_fingerprint_catches_permuted_batches_and_changed_values():
    data = _toy()
    state = {"k": 0}

    def loader_iter():
        state["k"] += 1
        order = (
            torch.arange(23)
            if state["k"] == 1
            else torch.randperm(23, generator=torch.Generator().manual_seed(1))
        )
        for s in range(0, 23, 10):
            idx = order[s : s + 10]
            yield data.X[idx], data.y[idx]

    src = BatchSource(
        loader_iter,
        num_batches=3,
        num_samples=None,
        device=torch.device("cpu"),
        dtype=torch.float64,
        description="test loader",
        moves_data=True,
    )
    data_pass(lambda X, y: (X.sum(),), src, progress=False)
    assert src.num_samples == 23
    with pytest.raises(DeterminismError, match="first differing batch: 0"):
        data_pass(lambda X, y: (X.sum(),), src, progress=False)


def test_loader_must_be_reiterable():
    data = _toy()
    with pytest.raises(TypeError, match="single pass"):
        BatchSource.from_loader(iter(list(data.batches(10))), device="cpu", dtype=torch.float64)
    src = BatchSource.from_loader(list(data.batches(10)), device="cpu", dtype=torch.float32)
    X, y = next(iter(src))
    assert X.dtype == torch.float32 and y.dtype == torch.int64
