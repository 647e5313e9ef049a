"""Probes in lockstep: k Hessian-vector products in one data pass, SLQ and sigma^2 probes advanced
together -- bit-identical on the CPU to one product, one probe at a time; resumable per probe
after a crash (under another lockstep too); the same under two gloo processes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from nnhessian.distributed import DistContext, init_from_env, sharded_full_operator
from nnhessian.lanczos import DEFAULT_LOCKSTEP_BYTES
from nnhessian.operators import HessianOperator, MatrixOperator
from nnhessian.sigma2 import sigma2_per_sample
from nnhessian.slq import lockstep_probes, products, second_moments, shares_passes, slq
from tests.helpers import (
    BATCH_IDX,
    F64,
    Crash,
    digits_mlp_operator,
    full_operator,
    gaussian_mlp,
    launch_ranks,
    probes,
)
from tests.tolerances import BATCHED_REVERSE_RTOL64

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


class ManyMatrix(MatrixOperator):
    """A dense matrix that takes part in lockstep (``matvec_many``: one product per vector)."""

    def matvec_many(self, vectors):
        return [self.matvec(v) for v in vectors]


class CrashingMany:
    """Delegates to ``op`` and raises :class:`Crash` once ``after`` products are done (a
    ``matvec_many`` of k vectors counts k; it crashes before the call that would pass ``after``)."""

    def __init__(self, op, after: int | None) -> None:
        self._op, self._after, self.calls = op, after, 0

    def __getattr__(self, name):
        return getattr(self._op, name)

    def _count(self, k: int) -> None:
        if self._after is not None and self.calls + k > self._after:
            raise Crash(f"injected crash before product {self.calls + 1}")
        self.calls += k

    def matvec(self, v):
        self._count(1)
        return self._op.matvec(v)

    def matvec_many(self, vectors):
        vectors = list(vectors)
        self._count(len(vectors))
        return self._op.matvec_many(vectors)


def assert_same_slq(a, b) -> None:
    for field in ("ritz_values", "weights", "residuals", "steps_done", "breakdown"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert a.seeds == b.seeds
    for ra, rb in zip(a.runs, b.runs, strict=True):
        assert np.array_equal(ra.alpha, rb.alpha) and np.array_equal(ra.beta, rb.beta)
        assert ra.beta_last == rb.beta_last


def operators(name: str, cache: bool) -> dict[str, HessianOperator]:
    full = full_operator(name, graph_cache_bytes=2**30 if cache else 0, verify=False)
    return {
        "full": full,
        "batch": full.batch_operator(BATCH_IDX, chunk_size=4, verify=False),
        "noise": full.noise_operator(BATCH_IDX, verify=False),
    }


# ---- k products in one data pass ------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
@pytest.mark.parametrize("cache", [False, True])
def test_matvec_many_is_bit_identical_to_matvec(name, cache):
    """Full, batch (in chunks: sample-weighted) and noise operators, graph cache off and on:
    each of the k products equals ``matvec`` bit for bit, and the pass builds each graph once."""
    for kind, op in operators(name, cache).items():
        V = probes(op.dim, 4, seed=3)
        op.matvec(V[0])  # resolves method "auto" (its first product tries double-backward)
        vectors = [V[i] for i in range(4)]
        before = op.graph_cache
        many = op.matvec_many(vectors)
        after = op.graph_cache
        one = [op.matvec(v) for v in vectors]
        for a, b in zip(many, one, strict=True):
            assert torch.equal(a, b), kind
        assert op.reverse == "loop"  # the CPU keeps separate reverse passes (bit-identity)
        assert op.engine.reverse_timing.chosen == "loop"
        if not cache:
            assert after.misses - before.misses == (
                3 if kind == "full" else 2 if kind == "batch" else 4
            )


def test_matvec_many_with_forward_over_reverse_and_rows_of_a_matrix():
    op = full_operator("mlp", method="forward-over-reverse", verify=False)
    V = probes(op.dim, 3, seed=5)
    many = op.matvec_many(V)  # the rows of a (k, P) tensor
    for i, w in enumerate(many):
        assert torch.equal(w, op.matvec(V[i]))
    with pytest.raises(ValueError, match="at least one vector"):
        op.matvec_many([])
    with pytest.raises(ValueError, match="length"):
        op.matvec_many([V[0][:-1]])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_batched_reverse_pass_agrees_with_separate_passes(name):
    ops = operators(name, cache=False)
    full = ops["full"]
    V = probes(full.dim, 5, seed=8)
    loop = full.matvec_many(V)
    full.reverse = "batched"
    assert full.reverse == "batched" and ops["noise"].reverse == "batched"  # one engine
    batched = full.matvec_many(V)
    for a, b in zip(batched, loop, strict=True):
        assert float(torch.linalg.vector_norm(a - b)) <= BATCHED_REVERSE_RTOL64 * float(
            torch.linalg.vector_norm(b)
        )
    full.reverse = "auto"
    assert full.reverse == "auto" and full.engine.reverse_timing is None
    with pytest.raises(ValueError, match="reverse mode"):
        full.reverse = "vmap"


def test_products_uses_matvec_many_only_where_the_class_defines_it():
    A = torch.diag(torch.arange(1.0, 6.0, dtype=F64))
    plain, many = MatrixOperator(A), ManyMatrix(A)
    assert not shares_passes(plain) and shares_passes(many)
    assert shares_passes(digits_mlp_operator())
    assert not shares_passes(CrashingWrapper(digits_mlp_operator()))
    out = products(plain, [torch.ones(5, dtype=F64), torch.arange(5.0, dtype=F64)])
    assert torch.equal(out[1], torch.tensor([0.0, 2.0, 6.0, 12.0, 20.0], dtype=F64))


class CrashingWrapper:
    """A wrapper overriding ``matvec`` only (as tests.helpers.CrashingOperator)."""

    def __init__(self, op):
        self._op = op

    def __getattr__(self, name):
        return getattr(self._op, name)

    def matvec(self, v):
        return self._op.matvec(v)


def test_lockstep_probes_from_the_memory_budget():
    per_probe = 100 * 1000 * 4  # m x P float32
    assert lockstep_probes(5, 100, 1000, torch.float32, 3 * per_probe) == 3
    assert lockstep_probes(5, 100, 1000, torch.float32, 3 * per_probe - 1) == 2
    assert lockstep_probes(5, 100, 1000, torch.float64, 3 * per_probe) == 1
    assert lockstep_probes(5, 100, 1000, torch.float32, 0) == 1  # at least one
    assert lockstep_probes(5, 100, 1000, torch.float32, 100 * per_probe) == 5  # at most probes
    # VGG16 at m = 100 in float32 (issue 13): 6.1 GB per probe, so the default 8 GiB takes one
    assert lockstep_probes(5, 100, 15_291_300, torch.float32, DEFAULT_LOCKSTEP_BYTES) == 1
    with pytest.raises(ValueError, match="budget"):
        lockstep_probes(5, 100, 1000, torch.float32, -1)


# ---- SLQ and sigma^2 in lockstep ------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5, None])
def test_slq_in_lockstep_is_bit_identical_to_one_probe_at_a_time(k):
    op = digits_mlp_operator()
    ref = slq(op, 12, 5, generator=torch.Generator().manual_seed(2))
    before = op.matvecs
    res = slq(op, 12, 5, generator=torch.Generator().manual_seed(2), lockstep=k)
    assert_same_slq(res, ref)
    assert op.matvecs - before == 60
    assert (ref.lockstep, res.lockstep) == (1, 5 if k is None else k)


def test_slq_in_lockstep_with_breakdowns_hands_places_on():
    """Three nonzero eigenvalues and a null space: every probe's Krylov space is invariant after
    4 steps (breakdown), and the next probes take the freed places; equal to the sequential run."""
    U = torch.linalg.qr(torch.randn(9, 3, generator=torch.Generator().manual_seed(0), dtype=F64))[0]
    op = ManyMatrix(U @ torch.diag(torch.tensor([3.0, -1.0, 0.5], dtype=F64)) @ U.T)
    ref = slq(op, 6, 5, generator=torch.Generator().manual_seed(1))
    res = slq(op, 6, 5, generator=torch.Generator().manual_seed(1), lockstep=2)
    assert_same_slq(res, ref)
    assert list(res.steps_done) == [4] * 5 and res.breakdown.all()


@pytest.mark.parametrize(("k_crash", "k_resume"), [(3, 3), (3, 2), (1, 4), (4, 1)])
def test_slq_in_lockstep_resumes_bit_identically(k_crash, k_resume, tmp_path):
    """Crashes mid-run under one lockstep, resumed under another: the state is per probe."""
    op = digits_mlp_operator()
    g_ref = torch.Generator().manual_seed(9)
    ref = slq(op, 10, 4, generator=g_ref, distribution="rademacher")
    for after, k in ((7, k_crash), (19, k_crash)):
        with contextlib.suppress(Crash):
            slq(
                CrashingMany(op, after),
                10,
                4,
                generator=torch.Generator().manual_seed(9),
                distribution="rademacher",
                state_dir=tmp_path,
                save_every=3,
                lockstep=k,
            )
    g = torch.Generator().manual_seed(9)
    wrapped = CrashingMany(op, None)
    res = slq(
        wrapped,
        10,
        4,
        generator=g,
        distribution="rademacher",
        state_dir=tmp_path,
        save_every=3,
        lockstep=k_resume,
    )
    assert_same_slq(res, ref)
    assert torch.equal(g.get_state(), g_ref.get_state())
    assert 0 < wrapped.calls < 40  # resumed, not restarted
    assert not list(tmp_path.glob("basis-*"))
    again = CrashingMany(op, 0)  # finished: no product
    assert_same_slq(
        slq(
            again,
            10,
            4,
            generator=torch.Generator().manual_seed(9),
            distribution="rademacher",
            state_dir=tmp_path,
            lockstep=2,
        ),
        ref,
    )


def test_second_moments_and_sigma2_in_lockstep_are_bit_identical(tmp_path):
    op = digits_mlp_operator()
    ref = second_moments(op, 4, generator=torch.Generator().manual_seed(3), lockstep=1)
    for k in (None, 3):
        got = second_moments(op, 4, generator=torch.Generator().manual_seed(3), lockstep=k)
        assert np.array_equal(got, ref)
    model, data = gaussian_mlp(12)
    full = HessianOperator.full(model, data, batch_size=5, dtype=F64, verify=False)
    one = sigma2_per_sample(full, probes=5, generator=torch.Generator().manual_seed(4))
    for k in (2, None):
        got = sigma2_per_sample(
            full, probes=5, generator=torch.Generator().manual_seed(4), lockstep=k
        )
        assert np.array_equal(got.per_probe, one.per_probe)
    # crash in the second lockstep group, resume: the first group's probes are not redone
    engine = full.engine
    real, count = engine.batch_hvp_many, [0]

    def crashing(*args, **kwargs):
        count[0] += 1
        if count[0] > 4:
            raise Crash("injected")
        return real(*args, **kwargs)

    engine.batch_hvp_many = crashing
    with contextlib.suppress(Crash):
        sigma2_per_sample(
            full,
            probes=5,
            generator=torch.Generator().manual_seed(4),
            lockstep=2,
            state_dir=tmp_path,
        )
    engine.batch_hvp_many = real
    got = sigma2_per_sample(
        full, probes=5, generator=torch.Generator().manual_seed(4), lockstep=3, state_dir=tmp_path
    )
    assert np.array_equal(got.per_probe, one.per_probe)


# ---- two gloo processes -------------------------------------------------------------------------


def compute(ctx: DistContext, state_dir: Path) -> dict:
    """Sequential vs lockstep on this layout; the same collectives in the same order everywhere."""
    model, data = gaussian_mlp(30)
    op = sharded_full_operator(model, data, batch_size=7, context=ctx, dtype=F64)
    out = {"seq": slq(op, 15, 3, generator=torch.Generator().manual_seed(3)).ritz_values}
    out["lock"] = slq(op, 15, 3, generator=torch.Generator().manual_seed(3), lockstep=3).ritz_values
    with contextlib.suppress(Crash):
        slq(
            CrashingMany(op, 20),
            15,
            3,
            generator=torch.Generator().manual_seed(3),
            state_dir=state_dir,
            save_every=4,
            lockstep=3,
        )
    wrapped = CrashingMany(op, None)
    out["resumed"] = slq(
        wrapped,
        15,
        3,
        generator=torch.Generator().manual_seed(3),
        state_dir=state_dir,
        save_every=4,
        lockstep=2,
    ).ritz_values
    out["resumed_products"] = wrapped.calls
    g = torch.Generator().manual_seed(5)
    out["s2_seq"] = sigma2_per_sample(op, probes=3, generator=g).per_probe
    g = torch.Generator().manual_seed(5)
    out["s2_lock"] = sigma2_per_sample(op, probes=3, generator=g, lockstep=3).per_probe
    return out


def _rank_main(out_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = init_from_env(device="cpu", timeout_s=120)
    try:
        res = compute(ctx, Path(out_dir) / "state")
        torch.save(res, Path(out_dir) / f"rank{ctx.rank}.pt")
    finally:
        ctx.close()


def launch(out_dir: Path, world: int = 2, timeout: float = 150.0) -> list[dict]:
    return launch_ranks("tests.test_nnhessian_lockstep:_rank_main", out_dir, world, timeout)


@pytest.mark.distributed
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo"
)
def test_two_gloo_processes_lockstep_equals_sequential(tmp_path):
    ranks = launch(tmp_path)
    for r in ranks:
        assert np.array_equal(r["lock"], r["seq"])
        assert np.array_equal(r["resumed"], r["seq"])
        assert 0 < r["resumed_products"] < 45
        assert np.array_equal(r["s2_lock"], r["s2_seq"])
    for key in ("seq", "lock", "resumed", "s2_lock"):
        assert np.array_equal(ranks[0][key], ranks[1][key]), key
