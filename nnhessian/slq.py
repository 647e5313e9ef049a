"""Stochastic Lanczos quadrature (SLQ): several Lanczos runs from random probes, their Gauss
rules pooled into a spectral measure (Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38, 2017; the
paper, section 4: m = 100 steps), optionally advanced in lockstep so that each data pass serves k
probes (one forward pass per batch for all of them); ``second_moments`` of the same probes; the
extreme eigenvalues over the probes. One Lanczos run is :mod:`nnhessian.lanczos`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from nnhessian.checkpoint import (
    DEFAULT_SAVE_EVERY,
    RunState,
    StateCorruptError,
    check_save_every,
    config_fingerprint,
    generator_state_hash,
)
from nnhessian.lanczos import (
    DEFAULT_LOCKSTEP_BYTES,
    PAPER_STEPS,
    PROBE_DISTRIBUTIONS,
    LanczosResult,
    LanczosRun,
    as_generator,
    check_steps,
    random_unit_vector,
    result_from_state,
)

# ---------------------------------------------------------------------------------------------
# stochastic Lanczos quadrature
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SLQResult:
    """Raw per-probe quadratures; rows of runs that broke down early are padded.

    Padding: ``ritz_values`` NaN, ``weights`` 0, ``residuals`` NaN after ``steps_done[p]``.
    """

    ritz_values: np.ndarray  # (probes, steps) nodes per probe, ascending, NaN-padded
    weights: np.ndarray  # (probes, steps) Gauss weights per probe, each row sums to 1, 0-padded
    residuals: np.ndarray  # (probes, steps) residual estimates, NaN-padded
    steps_done: np.ndarray  # (probes,) Lanczos steps actually done
    breakdown: np.ndarray  # (probes,) bool
    steps: int  # steps requested per probe
    probes: int
    distribution: str  # probe law: "gaussian" or "rademacher"
    seeds: tuple[int, ...]  # per-probe seeds drawn from the generator, in probe order
    dim: int  # P
    runs: tuple[LanczosResult, ...]  # the individual runs (tridiagonals included)
    lockstep: int = 1  # probes advanced together (speed only: the numbers do not depend on it)


def lockstep_probes(
    probes: int, steps: int, dim: int, dtype, budget_bytes: int = DEFAULT_LOCKSTEP_BYTES
) -> int:
    """How many SLQ probes to advance together: as many ``steps x dim`` bases as fit in
    ``budget_bytes`` (each probe keeps its own), at least 1 and at most ``probes``.

    E.g. VGG16 (P = 15.3M) at m = 100 in float32: 6.1 GB per probe, so the default 8 GiB budget
    advances one probe at a time and 5 probes need 30.6 GB.
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
        raise ValueError(
            f"the lockstep memory budget must be an integer >= 0, got {budget_bytes!r}"
        )
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # "float32" too
    per_probe = int(steps) * int(dim) * torch.empty((), dtype=dtype).element_size()
    return max(1, min(int(probes), budget_bytes // per_probe))


def products(op, vectors) -> list[torch.Tensor]:
    """``[A v for v in vectors]``: one data pass for all (``op.matvec_many``) when ``op`` has it
    and there are several, else one ``matvec`` each; bit-identical either way on the CPU."""
    vectors = list(vectors)
    if len(vectors) > 1 and shares_passes(op):
        return list(op.matvec_many(vectors))
    return [op.matvec(v) for v in vectors]


def shares_passes(op) -> bool:
    """Whether ``op``'s class defines ``matvec_many`` (k products in one data pass).

    Looked up on the class: a wrapper that forwards attributes to another operator but overrides
    ``matvec`` (to count or intercept products) keeps seeing every product.
    """
    return callable(getattr(type(op), "matvec_many", None))


def _check_lockstep(lockstep, lockstep_bytes, probes, steps, op) -> int:
    if lockstep is None:  # nothing to share without matvec_many: one probe at a time
        if not shares_passes(op):
            return 1
        return lockstep_probes(probes, steps, int(op.dim), op.dtype, lockstep_bytes)
    if isinstance(lockstep, bool) or not isinstance(lockstep, int) or lockstep < 1:
        raise ValueError(
            f"lockstep must be an integer >= 1 (probes advanced together), got {lockstep!r}"
        )
    return min(lockstep, probes)


def slq(
    op,
    steps: int = PAPER_STEPS,
    probes: int = 5,
    *,
    generator,
    distribution: str = "gaussian",
    progress: bool | None = None,
    state_dir: str | os.PathLike | None = None,
    save_every: int = DEFAULT_SAVE_EVERY,
    lockstep: int | None = 1,
    lockstep_bytes: int = DEFAULT_LOCKSTEP_BYTES,
) -> SLQResult:
    """Stochastic Lanczos quadrature: ``probes`` independent Lanczos runs of ``steps`` steps.

    Probe p starts from a unit vector drawn from ``torch.Generator().manual_seed(seeds[p])``
    where ``seeds`` are drawn from ``generator``; 5 probes by default (more probes lower the
    variance of density and moment estimates as 1/probes; more steps lower the quadrature bias).
    Smoothing is left to :func:`smooth_density` so re-smoothing never repeats an HVP.

    Lockstep: ``lockstep`` probes advance together, one step each per round, and a round's
    products come from one data pass (``op.matvec_many``: each batch's gradient graph built once
    for all of them; :func:`products`). A probe that ends (or breaks down) hands its place to the
    next. ``lockstep=None`` takes as many as :func:`lockstep_probes` fits in ``lockstep_bytes``
    (each probe keeps an m x P basis; one probe for operators without ``matvec_many``); the
    default 1 runs the probes one after another, as before. The runs are independent, so every
    probe's numbers are bit-identical on the CPU whatever ``lockstep`` is; only speed and memory
    change (fewer forward + backward passes with the graph cache off).

    Resumable with ``state_dir`` / ``save_every`` as :func:`lanczos`: the state holds the seeds,
    the generator state after drawing them, the coefficients of every finished probe and the
    basis of every probe in progress (saved every ``save_every`` steps and when a probe ends); it
    resumes under any ``lockstep``. Distributed operators as in :func:`lanczos`.
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    steps = check_steps(steps, int(op.dim))
    if distribution not in PROBE_DISTRIBUTIONS:
        raise ValueError(
            f"unknown probe distribution {distribution!r}; accepted: "
            + ", ".join(PROBE_DISTRIBUTIONS)
        )
    k = _check_lockstep(lockstep, lockstep_bytes, probes, steps, op)
    g = as_generator(generator)
    dim = int(op.dim)
    rtol = 10.0 * math.sqrt(dim) * float(torch.finfo(op.dtype).eps)
    store = payload = basis = None
    if state_dir is not None:
        check_save_every(save_every)
        fp = config_fingerprint(
            "slq",
            op,
            steps=steps,
            probes=probes,
            distribution=distribution,
            breakdown_rtol=rtol,
            generator=generator_state_hash(g),
        )
        store = RunState(state_dir, fp, sharding=getattr(op, "sharding", None))
        payload, basis = store.load()
    if payload is not None:
        seeds = tuple(int(s) for s in payload["seeds"])
        g.set_state(payload["generator_after"])
    else:
        seeds = _probe_seeds(g, probes)
    group = _ProbeGroup(op, steps, rtol, seeds, distribution, store, g.get_state(), save_every)
    if payload is not None:
        group.restore(payload, basis)
    group.run(k, progress=progress)
    runs = [group.results[p] for p in range(probes)]
    return _slq_result(
        runs, steps=steps, distribution=distribution, seeds=seeds, dim=dim, lockstep=k
    )


class _ProbeGroup:
    """SLQ's probes: the finished ones' states and the runs in progress, advanced in lockstep."""

    def __init__(self, op, steps, rtol, seeds, distribution, store, gen_after, save_every):
        self.op, self.steps, self.rtol = op, steps, rtol
        self.seeds, self.distribution = seeds, distribution
        self.store, self.gen_after, self.every = store, gen_after, save_every
        self.finished: dict[int, dict] = {}  # probe -> state of its finished run
        self.results: dict[int, LanczosResult] = {}
        self.active: dict[int, LanczosRun] = {}  # probe -> run in progress, in probe order

    def restore(self, payload: dict, basis: torch.Tensor | None) -> None:
        """Finished probes and runs in progress of a saved state (:meth:`_payload`)."""
        prefix = list(payload["probes"])
        finished = {**dict(enumerate(prefix)), **payload.get("finished_later", {})}
        active = dict(payload.get("active_later", {}))
        if payload["current"] is not None:
            active[len(prefix)] = payload["current"]
        self.finished = {int(p): st for p, st in finished.items()}
        for p, st in self.finished.items():
            self.results[p] = result_from_state(
                st, steps=self.steps, breakdown_rtol=self.rtol, dim=int(self.op.dim)
            )
        offset = 0
        for p in sorted(int(q) for q in active):  # their segments, concatenated in probe order
            st = active[p]
            rows = int(st["rows"])
            run = LanczosRun(self.op, self.steps, self.rtol)
            run.restore(st, None if basis is None else basis[offset : offset + rows])
            offset += rows
            self.active[p] = run
        if basis is not None and offset != basis.shape[0]:
            raise StateCorruptError(
                f"the saved SLQ basis has {basis.shape[0]} rows, its runs name {offset}"
            )

    def _payload(self) -> dict:
        """The saved state. With probes ``0..f-1`` finished: ``probes`` their states,
        ``current`` probe f's run (None when it has not started), ``finished_later`` /
        ``active_later`` the probes after f by index -- one probe at a time, the last two are
        empty (the format of the runs before lockstep)."""
        f = 0
        while f in self.finished:
            f += 1
        current = self.active.get(f)
        return {
            "seeds": list(self.seeds),
            "generator_after": self.gen_after,
            "probes": [self.finished[p] for p in range(f)],
            "current": None if current is None else current.state(),
            "finished_later": {p: st for p, st in self.finished.items() if p > f},
            "active_later": {p: r.state() for p, r in self.active.items() if p > f},
        }

    def _fill(self, k: int) -> None:
        """Start the next probes until ``k`` are in progress (or none is left)."""
        busy = set(self.finished) | set(self.active)
        for p in range(len(self.seeds)):
            if len(self.active) >= k:
                break
            if p not in busy:
                run = LanczosRun(self.op, self.steps, self.rtol)
                run.start(_probe(self.op, self.seeds[p], self.distribution))
                self.active[p] = run
        self.active = dict(sorted(self.active.items()))

    def run(self, k: int, *, progress) -> None:
        total = len(self.seeds) * self.steps
        done = sum(int(s["m"]) for s in self.finished.values())
        bar = tqdm(
            total=total,
            initial=done + sum(r.m for r in self.active.values()),
            desc=f"SLQ ({len(self.seeds)} probes, {k} in lockstep)",
            leave=False,
            disable=(not progress) if progress is not None else None,
        )
        self._fill(k)
        while self.active:
            runs = list(self.active.values())
            for run, w in zip(runs, products(self.op, [r.current for r in runs]), strict=True):
                run.step(w)
            bar.update(len(runs))
            ended = [p for p, r in self.active.items() if r.done]
            for p in ended:
                run = self.active.pop(p)
                self.finished[p] = run.state()
                self.results[p] = run.result(keep_basis=False)
            if self.store is not None and (ended or any(r.m % self.every == 0 for r in runs)):
                self._save()
            self._fill(k)
        bar.close()

    def _save(self) -> None:
        """Append each run's new basis rows as its own segments; replace the state file."""
        names = []
        for p, run in self.active.items():
            if run.rows > run.saved_rows:
                seg = run.Q[run.saved_rows : run.rows]
                run.segments.append(self.store.write_segment(f"p{p:05d}", run.saved_rows, seg))
                run.saved_rows = run.rows
            names += run.segments
        payload = self._payload()
        self.store.save(payload, basis=names)


def _slq_result(runs, *, steps: int, distribution: str, seeds, dim: int, lockstep) -> SLQResult:
    """The probes' Lanczos runs as one SLQResult (NaN / 0 padding after a breakdown)."""
    probes = len(runs)
    nodes = np.full((probes, steps), np.nan)
    weights = np.zeros((probes, steps))
    resid = np.full((probes, steps), np.nan)
    for p, r in enumerate(runs):
        nodes[p, : r.steps] = r.ritz_values
        weights[p, : r.steps] = r.weights
        resid[p, : r.steps] = r.residuals
    return SLQResult(
        ritz_values=nodes,
        weights=weights,
        residuals=resid,
        steps_done=np.array([r.steps for r in runs]),
        breakdown=np.array([r.breakdown for r in runs]),
        steps=steps,
        probes=probes,
        distribution=distribution,
        seeds=seeds,
        dim=dim,
        runs=tuple(runs),
        lockstep=lockstep,
    )


def second_moments(
    op,
    probes: int,
    *,
    generator,
    distribution: str = "gaussian",
    progress: bool | None = None,
    lockstep: int | None = None,
) -> np.ndarray:
    """``(probes,)`` estimates ``||A q||^2`` of ``tr(A^2) / P`` for a symmetric operator A.

    Each ``q`` is a unit probe drawn exactly as :func:`slq` draws its starting vectors (the same
    generator gives the same probes; uniform on the sphere by default, so ``E[q q^T] = I / P``
    and ``E ||A q||^2 = tr(A^2) / P``). With the same ``q``, the Gauss quadrature of a Lanczos
    run gives the same number (``sum_j w_j theta_j^2 = e_1^T T^2 e_1 = ||A q||^2`` for m >= 2),
    at one product per probe instead of m. Accumulated in float64.

    ``lockstep`` probes (default: all; each holds two P-vectors) share one data pass
    (:func:`products`); the values are bit-identical on the CPU for any ``lockstep``.
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1, got {probes!r}")
    k = _check_lockstep(lockstep, 0, probes, 1, op) if lockstep is not None else probes
    seeds = _probe_seeds(as_generator(generator), probes)
    out = np.empty(probes)
    disable = None if progress is None else not progress
    bar = tqdm(total=probes, desc="tr(A^2)/P probes", leave=False, disable=disable)
    for first in range(0, probes, k):
        qs = [_probe(op, seed, distribution) for seed in seeds[first : first + k]]
        for p, w in enumerate(products(op, qs), start=first):
            out[p] = float(torch.linalg.vector_norm(w.to(torch.float64)) ** 2)
        bar.update(len(qs))
    bar.close()
    return out


def _probe_seeds(generator: torch.Generator, probes: int) -> tuple[int, ...]:
    """One seed per probe, drawn from ``generator`` (SLQ and :func:`second_moments` alike)."""
    return tuple(int(s) for s in torch.randint(0, 2**62, (probes,), generator=generator))


def _probe(op, seed: int, distribution: str) -> torch.Tensor:
    """The unit probe of one seed, on the operator's device and dtype."""
    return random_unit_vector(
        op.dim,
        generator=torch.Generator().manual_seed(seed),
        distribution=distribution,
        dtype=op.dtype,
        device=op.device,
    )


# ---------------------------------------------------------------------------------------------
# extreme eigenvalues
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtremeEigenvalues:
    """Extreme Ritz values with the evidence that they have converged.

    ``largest`` is the largest top Ritz value over the runs: by Cauchy interlacing every Ritz
    value is <= lambda_max, so the largest is the best lower bound; ``largest_residual`` is its
    residual estimate, and some eigenvalue of the operator lies in
    ``[largest - largest_residual, largest + largest_residual]``. ``largest_per_probe`` shows the
    agreement across independent starts. The same for ``smallest`` (an upper bound on lambda_min).
    """

    largest: float
    smallest: float
    largest_residual: float
    smallest_residual: float
    largest_per_probe: np.ndarray  # (probes,) top Ritz value of each run
    smallest_per_probe: np.ndarray  # (probes,) bottom Ritz value of each run
    largest_residual_per_probe: np.ndarray  # (probes,)
    smallest_residual_per_probe: np.ndarray  # (probes,)

    @property
    def largest_spread(self) -> float:
        """max - min of the top Ritz values across probes."""
        return float(np.ptp(self.largest_per_probe))

    @property
    def smallest_spread(self) -> float:
        return float(np.ptp(self.smallest_per_probe))

    def converged(self, rtol: float = 1e-3) -> bool:
        """Residuals and cross-probe spreads both below ``rtol * max(|largest|, |smallest|)``."""
        scale = max(abs(self.largest), abs(self.smallest))
        tol = rtol * scale
        return bool(
            self.largest_residual <= tol
            and self.smallest_residual <= tol
            and self.largest_spread <= tol
            and self.smallest_spread <= tol
        )


def extreme_eigenvalues(result: LanczosResult | SLQResult) -> ExtremeEigenvalues:
    """Extreme eigenvalue estimates from one Lanczos run or from every SLQ probe."""
    runs = result.runs if isinstance(result, SLQResult) else (result,)
    top = np.array([r.ritz_values[-1] for r in runs])
    bot = np.array([r.ritz_values[0] for r in runs])
    rtop = np.array([r.residuals[-1] for r in runs])
    rbot = np.array([r.residuals[0] for r in runs])
    i, k = int(np.argmax(top)), int(np.argmin(bot))
    return ExtremeEigenvalues(
        largest=float(top[i]),
        smallest=float(bot[k]),
        largest_residual=float(rtop[i]),
        smallest_residual=float(rbot[k]),
        largest_per_probe=top,
        smallest_per_probe=bot,
        largest_residual_per_probe=rtop,
        smallest_residual_per_probe=rbot,
    )
