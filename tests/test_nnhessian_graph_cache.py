"""The graph cache of HessianOperator: identical products, the byte budget, its size measure,
lifetime, and that the data and determinism checks still see every pass.

Same small models and 23 digits samples (batches 10, 10, 3) as ``test_nnhessian_operators``
(from ``tests/helpers.py``).
"""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import nnhessian.hvp as hvp
from nnhessian.data import DeterminismError
from nnhessian.models import build
from nnhessian.operators import DEFAULT_GRAPH_CACHE_BYTES, GraphCacheInfo, HessianOperator
from tests.helpers import (
    BATCH,
    BATCH_IDX,
    CASES,
    F64,
    full_operator,
    images_for,
    probes,
    references,
    rel_err,
    subset,
    tiny_model,
)
from tests.tolerances import GRAPH_BYTES_RTOL, HVP_RTOL64

pytestmark = pytest.mark.usefixtures("single_thread")

BIG = 2**30  # room for every graph of these small problems


def cached_operator(name, policy="eval", budget=BIG, **options) -> HessianOperator:
    return full_operator(name, policy, graph_cache_bytes=budget, **options)


def graph_bytes(name) -> list[int]:
    """Measured size of each of the three batch graphs of the full-data operator."""
    sizes = []
    for b in range(3):
        data = subset(images_for(name))
        X, y = list(data.batches(BATCH))[b]
        op = HessianOperator.full(
            tiny_model(name), data, batch_size=BATCH, dtype=F64, graph_cache_bytes=BIG
        )
        g = op.engine.grad_graph(X.to(F64), y, measure=True)
        sizes.append(g.nbytes)
    return sizes


@pytest.mark.parametrize(("name", "policy"), CASES)
def test_cached_products_are_bit_identical_to_uncached(name, policy):
    """Same reverse pass on the same graph: equal bits, for full, batch and noise operators."""
    cached = cached_operator(name, policy)
    plain = cached_operator(name, policy, budget=0)
    pairs = [
        (cached, plain),
        (cached.batch_operator(BATCH_IDX), plain.batch_operator(BATCH_IDX)),
        (cached.noise_operator(BATCH_IDX), plain.noise_operator(BATCH_IDX)),
    ]
    V = probes(cached.dim, 4, seed=3)
    for a, b in pairs:
        for v in V:
            assert torch.equal(a.matvec(v), b.matvec(v))
    info = cached.graph_cache
    # 3 full-data graphs + 1 batch graph + 1 batch graph of the noise operator's own source
    assert info.graphs == 5
    assert info.misses == 5 and info.hits == 4 * 3 + 4 * 1 + 4 * 4 - 5
    assert plain.graph_cache == GraphCacheInfo(0, 0, 0, 0, 3 * 4 + 4 + 4 * 4)


@pytest.mark.parametrize(("name", "policy"), CASES)
def test_cached_products_match_the_dense_hessian(name, policy):
    op = cached_operator(name, policy)
    H = references(name, policy)["full"]
    for v in probes(op.dim, 3, seed=5):
        for _ in range(2):  # the first product builds the graphs, the second reuses them
            assert rel_err(op.matvec(v), H @ v) <= HVP_RTOL64
    assert op.graph_cache.hits == 5 * 3


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_bn"])
def test_measured_graph_size_equals_the_memory_autograd_keeps(name):
    """Net bytes allocated by one cached product (torch profiler) minus its output = the
    measure."""
    op = cached_operator(name, verify=False)
    v = probes(op.dim, 1)[0]
    gc.collect()  # garbage of earlier tests freed inside the window would count as negative
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = op.matvec(v)
    finally:
        gc.enable()
    kept = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    kept -= out.numel() * out.element_size()
    used = op.graph_cache.used_bytes
    assert used > 0
    assert abs(used - kept) <= GRAPH_BYTES_RTOL * kept, (used, kept)


def test_budget_keeps_graphs_in_pass_order_while_they_fit():
    sizes = graph_bytes("cnn")
    assert sizes[0] == sizes[1] > sizes[2]  # the uneven last batch has a smaller graph
    # room for the first two only; the third is rebuilt on every product
    op = cached_operator("cnn", budget=sizes[0] + sizes[1] + sizes[2] - 1)
    plain = cached_operator("cnn", budget=0)
    for v in probes(op.dim, 3):
        assert torch.equal(op.matvec(v), plain.matvec(v))
    info = op.graph_cache
    assert (info.graphs, info.used_bytes) == (2, sizes[0] + sizes[1])
    assert (info.hits, info.misses) == (2 * 2, 2 + 3)
    # a budget below one graph keeps none, but the last (smaller) one if it fits
    op = cached_operator("cnn", budget=sizes[2])
    op.matvec(probes(op.dim, 1)[0])
    assert (op.graph_cache.graphs, op.graph_cache.used_bytes) == (1, sizes[2])


def test_graphs_go_with_their_operator_and_with_clear():
    full = cached_operator("mlp")
    v = probes(full.dim, 1)[0]
    full.matvec(v)
    with_full = full.graph_cache.used_bytes
    batch = full.batch_operator(BATCH_IDX)
    batch.matvec(v)
    assert full.graph_cache.graphs == 4 and full.graph_cache.used_bytes > with_full
    del batch
    gc.collect()
    assert (full.graph_cache.graphs, full.graph_cache.used_bytes) == (3, with_full)
    full.clear_graph_cache()
    assert (full.graph_cache.graphs, full.graph_cache.used_bytes) == (0, 0)
    assert torch.equal(full.matvec(v), cached_operator("mlp", budget=0).matvec(v))


def test_determinism_check_never_uses_the_cache():
    op = cached_operator("cnn_bn", verify=False)
    op.check_determinism()
    assert op.graph_cache == GraphCacheInfo(BIG, 0, 0, 0, 0)  # no lookups at all


def test_determinism_check_still_catches_dropout_with_graphs_cached(monkeypatch):
    """Dropout left on (policy bypassed): cached graphs would repeat one mask; the check, which
    rebuilds every graph, still sees two different products."""
    model = build("mlp", 10, hidden=6, dropout=0.5, generator=torch.Generator().manual_seed(2))
    model.train()
    monkeypatch.setattr(hvp, "policy_mode", lambda m, p: contextlib.nullcontext())
    torch.manual_seed(0)  # test fixture: the dropout masks come from the global RNG
    op, plain = (
        HessianOperator.full(
            model, subset(False), batch_size=BATCH, dtype=F64, graph_cache_bytes=b, verify=False
        )
        for b in (BIG, 0)
    )
    v = probes(op.dim, 1)[0]
    masks = torch.get_rng_state()
    first = op.matvec(v)  # keeps one dropout mask per batch
    # reference: the uncached operator with the same masks (the same draws from the same state)
    torch.set_rng_state(masks)
    assert torch.equal(plain.matvec(v), first)
    assert not torch.equal(plain.matvec(v), first)  # new masks: the product is stochastic
    assert torch.equal(op.matvec(v), first)  # ... but the cache repeats the first masks
    with pytest.raises(DeterminismError, match="stochastic"):
        op.check_determinism()


def test_changed_data_is_caught_on_a_cached_pass():
    data = subset(False)
    batches = [(X.clone(), y.clone()) for X, y in data.batches(BATCH)]
    op = HessianOperator.full(tiny_model("mlp"), batches, dtype=F64, graph_cache_bytes=BIG)
    v = probes(op.dim, 1)[0]
    op.matvec(v)
    assert op.graph_cache.graphs == 3
    batches[1][0].mul_(-1.0)  # the loader now yields other data
    with pytest.raises(DeterminismError, match="different data"):
        op.matvec(v)


def test_forward_over_reverse_keeps_no_graphs():
    op = cached_operator("mlp", method="forward-over-reverse")
    op.matvec(probes(op.dim, 1)[0])
    assert op.graph_cache.graphs == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2GB", None])
def test_bad_budget_is_a_value_error(bad):
    with pytest.raises(ValueError, match="graph_cache_bytes must be an integer >= 0"):
        cached_operator("mlp", budget=bad)


def test_default_budget():
    op = HessianOperator.full(tiny_model("mlp"), subset(False), batch_size=BATCH, dtype=F64)
    assert op.graph_cache.budget_bytes == DEFAULT_GRAPH_CACHE_BYTES == 2 * 2**30
