"""nnhessian.distributed: 2 gloo processes on this machine agree with the single-process run.

The launch mimics torchrun: two child processes with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT set (a free port), each calling :func:`compute` -- the same function the test runs in
a single process. Compared: the full-data HVP (elementwise, within the derived reassociation
bound), Lanczos to breakdown, SLQ, a noise operator's Lanczos, the gradient and sigma^2 probes;
and the two ranks with each other (bitwise: identical vectors on every rank).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

from nnhessian.data import InMemoryDataset
from nnhessian.distributed import (
    DistContext,
    init_from_env,
    shard_plan,
    sharded_full_operator,
)
from nnhessian.lanczos import lanczos, random_unit_vector
from nnhessian.models import build
from nnhessian.operators import HessianOperator
from nnhessian.sigma2 import sigma2_partition, sigma2_per_sample
from nnhessian.slq import slq
from tests.helpers import (
    F64,
    Crash,
    CrashingOperator,
    digits,
    gaussian_mlp,
    launch_ranks,
)
from tests.tolerances import (
    SIGMA2_PROBE_RTOL64,
    lanczos_reorder_atol,
    reassociation_atol,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
N, BATCH = 30, 7  # batches 7, 7, 7, 7, 2: rank 0 gets three, rank 1 two
NOISE_BATCH = [1, 4, 7, 20, 29]


def problem() -> tuple[torch.nn.Module, InMemoryDataset]:
    """A 5-4-3 tanh MLP (P = 39) on 30 Gaussian samples, float64 (a fresh model each call)."""
    return gaussian_mlp(N)


def compute(ctx: DistContext, state_dir: Path) -> dict:
    """Everything compared; the same collective calls in the same order on every rank."""
    model, data = problem()
    op = sharded_full_operator(model, data, batch_size=BATCH, context=ctx, dtype=F64)
    v = random_unit_vector(op.dim, generator=torch.Generator().manual_seed(1))
    out = {"N": op.num_samples, "hv": op.matvec(v)}
    loss, grad = op.loss_and_gradient()
    out.update(loss=loss, grad=grad)
    full = lanczos(op, op.dim, v0=v)
    out.update(full=full.ritz_values, full_steps=full.steps)
    s = slq(op, 20, 2, generator=torch.Generator().manual_seed(3), state_dir=state_dir)
    before = op.matvecs
    again = slq(op, 20, 2, generator=torch.Generator().manual_seed(3), state_dir=state_dir)
    out.update(slq=s.ritz_values, slq_again=again.ritz_values, again_products=op.matvecs - before)
    noise = op.noise_operator(NOISE_BATCH)
    out["noise"] = lanczos(noise, 8, generator=torch.Generator().manual_seed(4)).ritz_values
    # a crash at the same product on every rank, then a resume: rank 0 reads the saved basis and
    # broadcasts it; the result equals the uninterrupted run bit for bit
    lanczos_state = state_dir.with_name(state_dir.name + "-lanczos")
    with contextlib.suppress(Crash):
        lanczos(
            CrashingOperator(op, 7),
            15,
            generator=torch.Generator().manual_seed(6),
            state_dir=lanczos_state,
            save_every=4,
        )
    before = op.matvecs
    resumed = lanczos(
        op, 15, generator=torch.Generator().manual_seed(6), state_dir=lanczos_state, save_every=4
    )
    out["resume_products"] = op.matvecs - before
    uninterrupted = lanczos(op, 15, generator=torch.Generator().manual_seed(6))
    out["resume_equal"] = bool(
        np.array_equal(resumed.alpha, uninterrupted.alpha)
        and np.array_equal(resumed.beta, uninterrupted.beta)
        and resumed.beta_last == uninterrupted.beta_last
    )
    g = torch.Generator().manual_seed(5)
    out["per_sample"] = sigma2_per_sample(op, probes=2, generator=g).per_probe
    out["partition"] = sigma2_partition(op, batch_size=4, probes=2, generator=g).per_probe
    return out


def _rank_main(out_dir: str) -> None:
    """Entry point of a child process (torchrun-style environment)."""
    torch.set_num_threads(1)
    ctx = init_from_env(device="cpu", timeout_s=120)
    try:
        res = compute(ctx, Path(out_dir) / "state")
        res["context"] = (ctx.rank, ctx.world_size, ctx.backend)
        torch.save(res, Path(out_dir) / f"rank{ctx.rank}.pt")
    finally:
        ctx.close()


def launch(out_dir: Path, world: int = 2, timeout: float = 150.0) -> list[dict]:
    return launch_ranks("tests.test_nnhessian_distributed:_rank_main", out_dir, world, timeout)


@functools.cache
def single_process(tmp: str) -> dict:
    ctx = DistContext(0, 1, 0, None, torch.device("cpu"), False)
    return compute(ctx, Path(tmp) / "single-state")


def batch_terms(fn) -> list[torch.Tensor]:
    """``n_b * fn(batch operator b)`` for the single-process batches (the summed terms)."""
    model, data = problem()
    terms = []
    for start in range(0, N, BATCH):
        idx = list(range(start, min(start + BATCH, N)))
        op = HessianOperator.batch(model, data, idx, dtype=F64, verify=False)
        terms.append(len(idx) * fn(op))
    return terms


def assert_within_reassociation(a: torch.Tensor, b: torch.Tensor, terms) -> None:
    abs_sum = torch.stack([t.abs() for t in terms]).sum(0)
    tol = reassociation_atol(abs_sum, len(terms), N, b)
    assert bool(((a - b).abs() <= tol).all()), float(((a - b).abs() - tol).max())


@pytest.mark.distributed
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo"
)
def test_two_gloo_processes_match_the_single_process_run(tmp_path):
    r0, r1 = launch(tmp_path)
    single = single_process(str(tmp_path))
    assert r0["context"] == (0, 2, "gloo") and r1["context"] == (1, 2, "gloo")
    # identical on both ranks, bit for bit (all-reduced sums, broadcast Lanczos vectors)
    for key in r0:
        if key != "context":
            a, b = r0[key], r1[key]
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else np.array_equal(a, b)
            assert same, key
    # the full-data HVP and gradient: the single-process terms summed in another order
    v = random_unit_vector(39, generator=torch.Generator().manual_seed(1))
    assert r0["N"] == single["N"] == N
    assert_within_reassociation(r0["hv"], single["hv"], batch_terms(lambda op: op.matvec(v)))
    assert_within_reassociation(
        r0["grad"], single["grad"], batch_terms(lambda op: op.loss_and_gradient()[1])
    )
    assert abs(r0["loss"] - single["loss"]) <= reassociation_atol(
        sum(abs(float(t)) for t in batch_terms(lambda op: op.loss_and_gradient()[0])),
        5,
        N,
        single["loss"],
    )
    assert not torch.equal(r0["hv"], torch.zeros_like(r0["hv"]))
    # Ritz values: to breakdown (the same number of steps), SLQ at m = 20, a noise operator
    norm = float(np.abs(single["full"]).max())
    tol = lanczos_reorder_atol(norm, 39)
    assert r0["full_steps"] == single["full_steps"] < 39  # softmax invariances: breakdown
    for key in ("full", "slq", "noise"):
        diff = np.nanmax(np.abs(r0[key] - single[key]))
        assert diff <= tol, (key, diff, tol)
    # the finished SLQ state written by rank 0 is reloaded on both ranks: no product at all
    assert r0["again_products"] == 0 and np.array_equal(r0["slq_again"], r0["slq"])
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["state.pt"]
    # crash and resume on both ranks: 4 + 3 products lost, resumed from the save at step 4
    assert r0["resume_equal"] and single["resume_equal"]
    assert r0["resume_products"] == single["resume_products"] == 15 - 4
    # sigma^2 probes (per-sample and partition passes sharded)
    for key in ("per_sample", "partition"):
        rel = np.abs(r0[key] - single[key]) / np.abs(single[key])
        assert (rel <= SIGMA2_PROBE_RTOL64).all(), (key, rel)


# ---- sharding plan and bad input (no processes) --------------------------------------------


@given(N=st.integers(1, 200), batch=st.integers(1, 50), world=st.integers(1, 12))
def test_shard_plan_covers_the_data_once_in_order(N, batch, world):
    if world > N:
        with pytest.raises(ValueError, match=f"world size {world} exceeds .* N = {N}"):
            shard_plan(N, batch, world)
        return
    plan, kept = shard_plan(N, batch, world)
    assert len(plan) == world and all(plan)
    flat = [r for ranges in plan for r in ranges]
    assert flat[0][0] == 0 and flat[-1][1] == N
    assert all(a[1] == b[0] for a, b in zip(flat, flat[1:], strict=False))  # contiguous, in order
    assert all(b - a <= batch for a, b in flat)
    nb = -(-N // batch)
    if kept:
        assert flat == [(s, min(s + batch, N)) for s in range(0, N, batch)]
        counts = [len(r) for r in plan]
        assert max(counts) - min(counts) <= 1
    else:
        assert nb < world
        sizes = [b - a for a, b in flat]
        assert max(sizes) - min(sizes) <= 1


def test_world_larger_than_the_data_or_batches_is_refused():
    model, data = problem()
    with pytest.raises(ValueError, match="world size 31 exceeds the number of samples N = 30"):
        sharded_full_operator(
            model, data, batch_size=BATCH, context=DistContext(0, 31, 0, "gloo", "cpu", False)
        )
    bn = build("cnn_bn", 10, width=2, generator=torch.Generator().manual_seed(0))
    images = digits(True).subset(range(12))
    with pytest.raises(ValueError, match="BatchNorm batch statistics"):
        sharded_full_operator(
            bn,
            images,
            batch_size=5,
            policy="batch-stats",
            dtype=F64,
            context=DistContext(0, 4, 0, "gloo", torch.device("cpu"), False),
        )


def test_single_process_context_without_torchrun_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = init_from_env(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.distributed) == (0, 1, None, False)
    model, data = problem()
    op = sharded_full_operator(model, data, batch_size=BATCH, context=ctx, dtype=F64)
    assert op.sharding is None and type(op) is HessianOperator
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env(device="cpu").world_size == 1


@pytest.mark.parametrize(
    ("env", "kwargs", "message"),
    [
        ({"RANK": "0", "WORLD_SIZE": "two"}, {}, "WORLD_SIZE='two' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, {}, "inconsistent torchrun environment"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, {"device": "cpu"}, "MASTER_ADDR is not set"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, {"device": "cpu", "backend": "nccl"}, "NCCL"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, {"device": "cpu", "backend": "mpi"}, "unknown backend"),
    ],
)
def test_bad_environment(monkeypatch, env, kwargs, message):
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        init_from_env(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_from_env(device="cuda")
