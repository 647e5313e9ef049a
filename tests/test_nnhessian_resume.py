"""Resumable Lanczos, SLQ and sigma^2 runs: a run killed at any point and started again with the
same arguments gives bit-identical results on the CPU; states of other runs are refused.

Crashes are injected two ways: in-process, an operator (or HVP engine) that raises after k
products, which leaves the state exactly as a kill at that moment would; and for real, a child
process that SIGKILLs itself mid-run, including inside the atomic rename of a save.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnhessian.checkpoint import (
    META,
    RunState,
    StateCorruptError,
    StateMismatchError,
    atomic_save,
)
from nnhessian.data import InMemoryDataset
from nnhessian.lanczos import lanczos
from nnhessian.models import build
from nnhessian.operators import HessianOperator, MatrixOperator
from nnhessian.sigma2 import sigma2_partition, sigma2_per_sample, sigma2_two_batch
from nnhessian.slq import slq
from rmt.testing import seeds
from tests.helpers import (
    F64,
    Crash,
    CrashingOperator,
    digits_mlp_operator,
    gaussian_mlp,
    subset,
    tiny_model,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def matrix_operator(P: int = 30) -> MatrixOperator:
    A = torch.randn(P, P, generator=torch.Generator().manual_seed(11), dtype=F64)
    return MatrixOperator((A + A.T) / np.sqrt(2 * P))


def assert_same_lanczos(a, b) -> None:
    for field in ("ritz_values", "weights", "alpha", "beta", "residuals"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert (a.beta_last, a.steps, a.breakdown) == (b.beta_last, b.steps, b.breakdown)


def assert_same_slq(a, b) -> None:
    for field in ("ritz_values", "weights", "residuals", "steps_done", "breakdown"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert a.seeds == b.seeds
    for ra, rb in zip(a.runs, b.runs, strict=True):
        assert_same_lanczos(ra, rb)


def run_until_done(call, kills):
    """``call(after)`` with each crash point of ``kills`` in turn, then without one."""
    for after in kills:
        with contextlib.suppress(Crash):  # a crash point beyond the remaining work: no crash
            call(after)
    return call(None)


# ---- Lanczos -------------------------------------------------------------------------------


def test_lanczos_resumes_bit_identically_and_skips_finished_work(tmp_path):
    """Crash after 7 and after 16 products (saves every 3 steps); the finished run equals the
    uninterrupted one bit for bit (coefficients, Ritz values, weights, basis, generator state),
    each restart redoes only the products since the last save, and a rerun of the finished state
    does no product at all."""
    op = digits_mlp_operator()
    steps, every = 25, 3
    g_ref = torch.Generator().manual_seed(5)
    ref = lanczos(op, steps, generator=g_ref, keep_basis=True)
    done_products = []

    def call(after):
        wrapped = CrashingOperator(op, after)
        g = torch.Generator().manual_seed(5)
        try:
            return lanczos(
                wrapped, steps, generator=g, keep_basis=True, state_dir=tmp_path, save_every=every
            ), g
        finally:
            done_products.append(wrapped.calls)

    res, g = run_until_done(call, [7, 16])
    assert_same_lanczos(res, ref)
    assert torch.equal(res.basis, ref.basis)
    assert torch.equal(g.get_state(), g_ref.get_state())
    # restarts: from step 6 (saved at 6 of 7), then from 15 (of 6 + 16 = 22 -> saved at 21)
    assert done_products == [7, 16, steps - 21]
    again, _ = call(0)  # finished state: no product at all (a product would crash)
    assert_same_lanczos(again, ref)
    assert torch.equal(again.basis, ref.basis)
    assert not list(tmp_path.glob(".*.tmp"))


def test_lanczos_resume_from_v0_and_after_breakdown(tmp_path):
    """A start vector instead of a generator, and a run that stops at a breakdown (5 distinct
    eigenvalues): resumed runs equal the uninterrupted one."""
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=F64))
    values = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=F64).repeat_interleave(10)
    op = MatrixOperator(Q @ torch.diag(values) @ Q.T)
    v0 = torch.randn(50, generator=g, dtype=F64)
    ref = lanczos(op, 20, v0=v0)
    assert ref.breakdown and ref.steps == 5

    def call(after):
        return lanczos(
            CrashingOperator(op, after), 20, v0=v0, state_dir=tmp_path / "a", save_every=2
        )

    assert_same_lanczos(run_until_done(call, [3]), ref)
    with pytest.raises(StateMismatchError, match="v0_sha256"):
        lanczos(op, 20, v0=v0 + 1, state_dir=tmp_path / "a")


@settings(max_examples=12)
@given(
    seed=seeds,
    kills=st.lists(st.integers(0, 17), max_size=3),
    every=st.integers(1, 4),
)
def test_slq_killed_anywhere_resumes_bit_identically(seed, kills, every):
    """Any sequence of crash points (counted in products since each restart, 0 = before the
    first), any save interval: the finished SLQ equals the uninterrupted one bit for bit."""
    op = matrix_operator()
    ref = slq(op, 6, 3, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as d:

        def call(after):
            return slq(
                CrashingOperator(op, after),
                6,
                3,
                generator=torch.Generator().manual_seed(seed),
                state_dir=d,
                save_every=every,
            )

        assert_same_slq(run_until_done(call, kills), ref)


def test_slq_on_hessian_resumes_and_keeps_only_the_current_basis(tmp_path):
    op = digits_mlp_operator()
    g_ref = torch.Generator().manual_seed(9)
    ref = slq(op, 10, 3, generator=g_ref, distribution="rademacher")
    seen_segments = []

    def call(after):
        def look():
            seen_segments.append(sorted(p.name for p in tmp_path.glob("basis-*")))

        g = torch.Generator().manual_seed(9)
        res = slq(
            CrashingOperator(op, after, action=look),
            10,
            3,
            generator=g,
            distribution="rademacher",
            state_dir=tmp_path,
            save_every=4,
        )
        return res, g

    res, g = run_until_done(call, [6, 15])
    assert_same_slq(res, ref)
    assert torch.equal(g.get_state(), g_ref.get_state())
    # crash 1 in probe 0 after a save at step 4: rows 0..4 on disk; crash 2 after the 6 products
    # that finish probe 0 (its basis deleted) and 9 of probe 1: its rows 0..9 (saves at 4, 8).
    assert seen_segments == [
        ["basis-p00000-000000-000005.pt"],
        ["basis-p00001-000000-000005.pt", "basis-p00001-000005-000009.pt"],
    ]
    assert not list(tmp_path.glob("basis-*"))  # finished: no basis kept


# ---- sigma^2 --------------------------------------------------------------------------------


@functools.cache
def sigma2_problem():
    return gaussian_mlp(12)


def crashing_sigma2_operator(after: int | None) -> HessianOperator:
    """A fresh full-data operator whose HVP engine raises after ``after`` batch/per-sample calls."""
    model, data = sigma2_problem()
    op = HessianOperator.full(model, data, batch_size=5, dtype=F64, verify=False)
    engine = op.engine
    count = [0]

    def wrap(fn):
        def inner(*args, **kwargs):
            if after is not None and count[0] >= after:
                raise Crash("injected crash in an HVP")
            count[0] += 1
            return fn(*args, **kwargs)

        return inner

    engine.batch_hvp = wrap(engine.batch_hvp)
    engine.per_sample_hvp = wrap(engine.per_sample_hvp)
    return op


ESTIMATORS = {
    "per-sample": (sigma2_per_sample, {}, [4, 13]),
    "partition": (sigma2_partition, {"batch_size": 3}, [7, 5]),
    "two-batch": (sigma2_two_batch, {"batch_size": 3}, [3, 4]),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_sigma2_resumes_bit_identically(name, tmp_path):
    fn, kw, kills = ESTIMATORS[name]
    g_ref = torch.Generator().manual_seed(4)
    ref = fn(crashing_sigma2_operator(None), probes=5, generator=g_ref, **kw)

    def call(after):
        g = torch.Generator().manual_seed(4)
        op = crashing_sigma2_operator(after)
        return fn(op, probes=5, generator=g, state_dir=tmp_path, save_every=1, **kw), g

    res, g = run_until_done(call, kills)
    assert np.array_equal(res.per_probe, ref.per_probe)
    assert (res.estimate, res.seeds, res.N, res.standard_error) == (
        ref.estimate,
        ref.seeds,
        ref.N,
        ref.standard_error,
    )
    assert torch.equal(g.get_state(), g_ref.get_state())
    # finished state: no HVP needed
    again, _ = call(0)
    assert np.array_equal(again.per_probe, ref.per_probe)


# ---- refusing other runs' states ---------------------------------------------------------------


def test_state_of_another_configuration_is_refused(tmp_path):
    op = matrix_operator()
    lanczos(op, 6, generator=torch.Generator().manual_seed(1), state_dir=tmp_path)
    cases = [
        (dict(steps=7, generator=torch.Generator().manual_seed(1)), "steps"),
        (dict(steps=6, generator=torch.Generator().manual_seed(2)), "generator"),
    ]
    for kw, field in cases:
        with pytest.raises(StateMismatchError, match=f"another run configuration.*{field}"):
            lanczos(op, state_dir=tmp_path, **kw)
    with pytest.raises(StateMismatchError, match="matrix_sha256"):
        lanczos(
            MatrixOperator(op.matrix * 2),
            6,
            generator=torch.Generator().manual_seed(1),
            state_dir=tmp_path,
        )
    with pytest.raises(StateMismatchError, match="dtype"):
        lanczos(
            MatrixOperator(op.matrix, dtype=torch.float32),
            6,
            generator=torch.Generator().manual_seed(1),
            state_dir=tmp_path,
        )
    with pytest.raises(StateMismatchError, match="run: saved 'lanczos', now 'slq'"):
        slq(op, 6, 1, generator=torch.Generator().manual_seed(1), state_dir=tmp_path)


def test_state_of_other_weights_or_data_is_refused(tmp_path):
    model, data = tiny_model("mlp"), subset(False)
    op = digits_mlp_operator()
    slq(op, 3, 2, generator=torch.Generator().manual_seed(0), state_dir=tmp_path)
    other = build("mlp", 10, hidden=6, generator=torch.Generator().manual_seed(2))
    op2 = HessianOperator.full(other, data, batch_size=10, dtype=F64, verify=False)
    with pytest.raises(StateMismatchError, match="params_sha256"):
        slq(op2, 3, 2, generator=torch.Generator().manual_seed(0), state_dir=tmp_path)
    data2 = InMemoryDataset(data.X.flip(0), data.y.flip(0), 10)
    op3 = HessianOperator.full(model, data2, batch_size=10, dtype=F64, verify=False)
    with pytest.raises(StateMismatchError, match="data_sha256"):
        slq(op3, 3, 2, generator=torch.Generator().manual_seed(0), state_dir=tmp_path)
    with pytest.raises(StateMismatchError, match="run: saved 'slq', now 'sigma2-per-sample'"):
        sigma2_per_sample(
            op, probes=2, generator=torch.Generator().manual_seed(0), state_dir=tmp_path
        )


def test_corrupt_or_foreign_state_is_refused(tmp_path):
    op = matrix_operator()

    def kw():
        return dict(generator=torch.Generator().manual_seed(1), save_every=2)

    with pytest.raises(Crash):
        lanczos(CrashingOperator(op, 5), 8, state_dir=tmp_path / "a", **kw())
    segment = sorted((tmp_path / "a").glob("basis-*"))[0]
    segment.write_bytes(b"not a tensor")
    with pytest.raises(StateCorruptError, match="basis segment"):
        lanczos(op, 8, state_dir=tmp_path / "a", **kw())
    (tmp_path / "a" / META).write_bytes(b"\x00" * 10)
    with pytest.raises(StateCorruptError, match="delete"):
        lanczos(op, 8, state_dir=tmp_path / "a", **kw())
    (tmp_path / "b").mkdir()
    atomic_save({"format": 99}, tmp_path / "b" / META)
    with pytest.raises(StateCorruptError, match="format"):
        lanczos(op, 8, state_dir=tmp_path / "b", **kw())
    (tmp_path / "c").write_text("a file")
    with pytest.raises(ValueError, match="not a directory"):
        lanczos(op, 8, state_dir=tmp_path / "c", **kw())
    with pytest.raises(ValueError, match="save_every"):
        lanczos(op, 8, state_dir=tmp_path / "d", generator=torch.Generator(), save_every=0)


def test_run_state_saves_atomically_and_prunes(tmp_path):
    store = RunState(tmp_path, {"run": "x"})
    assert store.load() == (None, None)
    a = store.write_segment("t", 0, torch.ones(2, 3))
    b = store.write_segment("t", 2, torch.zeros(1, 3))
    store.save({"k": 1}, basis=[a, b])
    payload, basis = RunState(tmp_path, {"run": "x"}).load()
    assert payload == {"k": 1} and torch.equal(
        basis, torch.cat([torch.ones(2, 3), torch.zeros(1, 3)])
    )
    (tmp_path / ".state.pt.abc.tmp").write_bytes(b"half")  # left by a kill during a save
    store.save({"k": 2}, basis=[])
    assert sorted(p.name for p in tmp_path.iterdir()) == [META]


# ---- a real SIGKILL ---------------------------------------------------------------------------

# The child imports only nnhessian (fast start) and SIGKILLs itself inside the k-th os.replace of
# the run, after the temporary file is written and before the rename (k = 0: no kill).
CHILD = """
import os, signal, sys, torch
from nnhessian.slq import slq
from nnhessian.operators import HessianOperator
from tests.helpers import gaussian_mlp
torch.set_num_threads(1)
state_dir, k = sys.argv[1], int(sys.argv[2])
model, data = gaussian_mlp(12)  # sigma2_problem()
op = HessianOperator.full(model, data, batch_size=5, dtype=torch.float64)
real, calls = os.replace, [0]
def replace(src, dst):
    calls[0] += 1
    if calls[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
res = slq(op, 10, 2, generator=torch.Generator().manual_seed(7), state_dir=state_dir, save_every=3)
torch.save({"ritz": torch.from_numpy(res.ritz_values), "weights": torch.from_numpy(res.weights)},
           os.path.join(state_dir, "result.pt"))
"""


def _child(state_dir, k):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(state_dir), str(k)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )


def test_sigkilled_run_resumes_bit_identically(tmp_path):
    """SIGKILL inside the 4th atomic rename (saves at step 3: segment, state; at step 6: segment,
    then the state file's temporary copy is written but not renamed), then run again to the end:
    equal to an uninterrupted run bit for bit, with no temporary file left behind."""
    model, data = sigma2_problem()
    op = HessianOperator.full(model, data, batch_size=5, dtype=F64)
    ref = slq(op, 10, 2, generator=torch.Generator().manual_seed(7))
    out = _child(tmp_path, 4)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-2000:]
    assert len(list(tmp_path.glob(".state.pt.*.tmp"))) == 1  # the interrupted save
    payload, _ = RunState(tmp_path, torch.load(tmp_path / META)["fingerprint"]).load()
    assert payload["current"]["m"] == 3  # the save at step 6 did not happen
    out = _child(tmp_path, 0)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    res = torch.load(tmp_path / "result.pt")
    assert np.array_equal(res["ritz"].numpy(), ref.ritz_values, equal_nan=True)
    assert np.array_equal(res["weights"].numpy(), ref.weights)
    assert not list(tmp_path.glob(".*.tmp"))
