r"""Estimators of sigma^2, the mean element variance of the per-sample Hessians (paper eq. 9).

Definition (1/N convention, as in ``DESIGN.md``)::

    sigma^2 = (1 / (N P^2)) sum_i ||H_i - H_emp||_F^2,     H_emp = (1/N) sum_i H_i.

All three estimators rest on the trace identity ``E_v ||A v||^2 = tr(A^T A) = ||A||_F^2`` for probes
with ``E[v v^T] = I`` -- standard Gaussian (the paper's choice, default) or Rademacher (Hutchinson
1989; Avron & Toledo 2011). Each probe p uses its own ``torch.Generator().manual_seed(seeds[p])``
(seeds drawn from the caller's generator) and draws, in this order, the probe vector and then any
random batches, so probes are independent and identically distributed and the t-interval
``mean +- t_{probes-1} sd / sqrt(probes)`` is valid (:func:`draw_probe`, :func:`draw_partition`).

Write ``a_i = (H_i - H_emp) v`` (so ``sum_i a_i = 0``) and ``S = (1/N) sum_i ||a_i||^2``, with
``E_v S = P^2 sigma^2``.

1. **Per-sample** (:func:`sigma2_per_sample`; Kunstner-style per-example products, vectorised with
   ``torch.func.vmap``): value ``S / P^2``. Unbiased for any probe law with ``E vv^T = I``. Cost per
   probe: one full-data HVP (for ``H_emp v``) plus N per-sample HVPs. Variance (Gaussian):
   ``2 ||M||_F^2 / (N P^2)^2`` with ``M = sum_i (H_i - H_emp)^2``; Rademacher removes the diagonal
   of M from that sum and is never worse.

2. **Partition** (:func:`sigma2_partition`): a uniformly random permutation split into
   ``K = floor(N / B)`` disjoint batches of B (the ``N - K B`` left-over samples still count in
   ``H_emp``). Every batch is marginally a uniform B-subset drawn without replacement, for which
   ``E ||(H_b - H_emp) v||^2 = f S`` with the exact finite-population factor

       f = (N - B) / (B (N - 1))      (Cochran 1977, thm 2.2, with the 1/N variance convention)

   i.e. ``P^2 s_B^2`` with ``s_B^2 = f sigma^2`` the off-diagonal noise variance of ``DESIGN.md``.
   Value ``(1/K) sum_b ||(H_b - H_emp) v||^2 / (f P^2)``: unbiased over (permutation, probe).
   Dividing by the paper's factor ``(N - B) / (B N)`` instead would give ``E = N/(N-1) sigma^2``,
   a relative bias of ``+1/(N - 1)``. One full-data pass per probe (plus one batch for a shift
   that keeps the float64 accumulation free of cancellation).

3. **Two disjoint batches** (:func:`sigma2_two_batch`): batches ``b1, b2`` of size B from one
   random permutation (``2 B <= N``), ``D = (H_b1 - H_b2) v = mean_{b1} a - mean_{b2} a``. Each mean
   has ``E||.||^2 = f S``, and for distinct i != j drawn without replacement
   ``E <a_i, a_j> = -S / (N - 1)`` (because ``sum_i a_i = 0``), so ``E <mean_b1 a, mean_b2 a> =
   -S / (N - 1)`` and

       E ||D||^2 = 2 f S + 2 S / (N - 1) = g S,     g = 2 N / (B (N - 1)).

   Value ``||D||^2 / (g P^2)``: unbiased, and needs no full-data pass (2B samples per probe).
   Using the naive "twice the noise", ``2 f``, would overestimate by the factor ``N / (N - B)``.

Long runs: every estimator takes ``state_dir`` and ``save_every`` (probes between saves, default
1): the seeds, the caller's generator state and the finished probes' values are saved there
(:class:`nnhessian.checkpoint.ProbeLoop`), and a killed run started again with the same arguments
skips the finished probes and returns bit-identical values on the CPU.

Distributed (:mod:`nnhessian.distributed`): with a sharded full-data operator the full-data and
per-sample passes run over each rank's shard and all-reduce their sums; the partition pass
splits the K + 1 index batches of each probe's partition contiguously over the ranks.

Scope: the estimators need ``H_b = mean_{i in b} H_i``, i.e. a loss that is a sum of per-sample
terms: BatchNorm under policy "batch-stats" is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch
from tqdm import tqdm

from nnhessian.checkpoint import ProbeLoop
from nnhessian.data import BatchSource, data_pass
from nnhessian.hvp import has_batchnorm, policy_mode
from nnhessian.lanczos import DEFAULT_LOCKSTEP_BYTES
from nnhessian.operators import HessianOperator
from nnhessian.slq import lockstep_probes, products
from rmt.theory import exact_factor

__all__ = [
    "Sigma2Estimate",
    "draw_partition",
    "draw_probe",
    "finite_population_factor",
    "sigma2_partition",
    "sigma2_per_sample",
    "sigma2_two_batch",
    "two_batch_factor",
]

CONVENTION = "sigma^2 = (1/(N P^2)) sum_i ||H_i - H_emp||_F^2 (1/N convention; paper eq. 9)"


@dataclass(frozen=True)
class Sigma2Estimate:
    """An estimate of sigma^2 with its per-probe values and a t confidence interval.

    ``factor`` is the constant in ``E[raw] = factor * P^2 sigma^2`` for the probe's raw squared
    norm: 1 (per-sample, raw = (1/N) sum_i ||(H_i - H_emp) v||^2), ``(N-B)/(B(N-1))`` (partition,
    raw = mean_b ||(H_b - H_emp) v||^2) or ``2N/(B(N-1))`` (two batches, raw = ||(H_b1-H_b2) v||^2).
    """

    estimate: float  # mean of per_probe
    per_probe: np.ndarray  # (probes,) unbiased single-probe estimates
    standard_error: float  # sd(per_probe, ddof=1) / sqrt(probes)
    ci_low: float
    ci_high: float
    confidence: float  # two-sided level of [ci_low, ci_high]
    method: str  # "per-sample", "partition" or "two-batch"
    distribution: str  # probe law: "gaussian" or "rademacher"
    probes: int
    seeds: tuple[int, ...]  # per-probe generator seeds, in probe order
    factor: float
    N: int
    P: int
    B: int | None  # batch size (None for per-sample)
    convention: str = CONVENTION


def finite_population_factor(N: int, B: int) -> float:
    """``(N - B) / (B (N - 1))``: Var of a without-replacement batch mean over the 1/N variance."""
    return float(exact_factor(N, B))


def two_batch_factor(N: int, B: int) -> float:
    """``2 N / (B (N - 1))``: ``E||mean_b1 a - mean_b2 a||^2`` over ``(1/N) sum ||a_i||^2``."""
    _check_NB(N, B)
    if 2 * B > N:
        raise ValueError(f"two disjoint batches need 2 B <= N; got B = {B}, N = {N}")
    return 2.0 * N / (B * (N - 1))


def _check_NB(N, B) -> None:
    if isinstance(B, bool) or not isinstance(B, int | np.integer):
        raise ValueError(f"batch size B must be an integer, got {B!r}")
    if B <= 0:
        raise ValueError(f"batch size B must be >= 1, got B = {B}")
    if B > N:
        raise ValueError(f"batch size B = {B} exceeds the data set size N = {N}")
    if N < 2:
        raise ValueError("sigma^2 needs N >= 2 samples")


def draw_probe(
    dim: int,
    *,
    generator: torch.Generator,
    distribution: str = "gaussian",
    dtype=torch.float64,
    device="cpu",
) -> torch.Tensor:
    """A probe with ``E[v v^T] = I``: standard Gaussian (default, as in the paper) or Rademacher.

    Drawn on the CPU in float64 and then moved, so a seed gives the same probe on every device.
    """
    if distribution == "gaussian":
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
    elif distribution == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=generator).to(torch.float64) * 2 - 1
    else:
        raise ValueError(
            f"unknown probe distribution {distribution!r}; accepted: gaussian, rademacher"
        )
    return v.to(device=device, dtype=dtype)


def draw_partition(
    N: int, B: int, *, generator: torch.Generator
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``K = floor(N/B)`` disjoint batches of B from ``torch.randperm(N)``, and the left-over.

    Batch k is ``perm[k B:(k+1) B]``; the left-over ``perm[K B:]`` has ``N - K B < B`` indices.
    """
    _check_NB(N, B)
    perm = torch.randperm(N, generator=generator)
    K = N // B
    return list(perm[: K * B].view(K, B)), perm[K * B :]


def _check_probes(probes, generator) -> None:
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 2:
        raise ValueError(
            f"probes must be an integer >= 2 (a confidence interval needs two), got {probes!r}"
        )
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator (randomness is an explicit argument)")


def _probe_seeds(probes, generator) -> tuple[int, ...]:
    _check_probes(probes, generator)
    return tuple(int(s) for s in torch.randint(0, 2**62, (probes,), generator=generator))


def _pending(loop, desc: str, probes: int, progress):
    """The probes ``loop`` has still to do, with a tqdm bar that counts resumed ones as done."""
    return tqdm(
        loop.pending(),
        desc=desc,
        total=probes,
        initial=loop.resumed,
        leave=False,
        disable=(not progress) if progress is not None else None,
    )


def _probe_loop(op, kind, probes, generator, state_dir, save_every, **settings) -> ProbeLoop:
    """The probe seeds drawn from ``generator`` -- or the saved run's, resumed from state_dir."""
    _check_probes(probes, generator)
    return ProbeLoop(
        state_dir,
        kind=kind,
        op=op,
        generator=generator,
        draw_seeds=lambda: _probe_seeds(probes, generator),
        settings={"probes": probes, **settings},
        save_every=save_every,
    )


def _lockstep(lockstep, lockstep_bytes, probes: int, op) -> int:
    """Probes whose full-data products share a pass: ``lockstep``, or from the memory budget
    at two P-vectors (probe and centre) per probe."""
    if lockstep is None:
        return lockstep_probes(probes, 2, op.dim, op.dtype, lockstep_bytes)
    if isinstance(lockstep, bool) or not isinstance(lockstep, int) or lockstep < 1:
        raise ValueError(
            f"lockstep must be an integer >= 1 (probes advanced together), got {lockstep!r}"
        )
    return lockstep


def _groups(items, k: int):
    """Consecutive lists of ``k`` items (the last one shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def _check_op(op: HessianOperator, *, in_memory: bool) -> None:
    if not isinstance(op, HessianOperator) or op.kind != "full":
        raise ValueError("sigma^2 estimators take a full-data HessianOperator (H_emp)")
    if in_memory and op.dataset is None:
        raise ValueError(
            "this estimator draws random batches: build the operator on an "
            "InMemoryDataset, not a loader"
        )
    if op.policy == "batch-stats" and has_batchnorm(op.model):
        raise ValueError(
            "sigma^2 needs batch Hessians that are means of per-sample Hessians; BatchNorm with "
            "policy 'batch-stats' breaks that: use policy 'eval'"
        )


def _summarise(values, *, confidence, **fields) -> Sigma2Estimate:
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    mean = float(values.mean())
    se = float(values.std(ddof=1) / np.sqrt(n))
    q = float(scipy.stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return Sigma2Estimate(
        estimate=mean,
        per_probe=values,
        standard_error=se,
        ci_low=mean - q * se,
        ci_high=mean + q * se,
        confidence=confidence,
        probes=n,
        **fields,
    )


def _check_distribution(distribution) -> None:
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(
            f"unknown probe distribution {distribution!r}; accepted: gaussian, rademacher"
        )


def _check_confidence(confidence):
    if not (0 < confidence < 1):
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def sigma2_per_sample(
    op: HessianOperator,
    *,
    probes: int = 10,
    generator: torch.Generator,
    distribution: str = "gaussian",
    chunk_size: int = 64,
    confidence: float = 0.95,
    progress: bool | None = None,
    state_dir=None,
    save_every: int = 1,
    lockstep: int | None = 1,
    lockstep_bytes: int = DEFAULT_LOCKSTEP_BYTES,
) -> Sigma2Estimate:
    """Per-sample estimator: probe value ``(1/(N P^2)) sum_i ||(H_i - H_emp) v||^2``; unbiased.

    ``op`` is the full-data operator (its ``H_emp v`` is the centre); per-sample products are
    vectorised over ``chunk_size`` samples with ``torch.func.vmap`` (loop fallback). More probes
    reduce the variance as 1/probes; there is no bias to trade.

    Lockstep: the centres ``H_emp v`` of ``lockstep`` probes come from one full-data pass
    (:func:`nnhessian.slq.products`); ``None`` takes as many as fit in ``lockstep_bytes`` at
    two P-vectors per probe. Values are bit-identical on the CPU for any ``lockstep`` and resume
    per probe as before. (The partition and two-batch estimators draw their own batches per
    probe, so their probes share no data pass and run one at a time.)
    """
    _check_op(op, in_memory=False)
    _check_confidence(confidence)
    _check_distribution(distribution)
    loop = _probe_loop(
        op, "sigma2-per-sample", probes, generator, state_dir, save_every, distribution=distribution
    )
    seeds = loop.seeds
    ps = op.per_sample(chunk_size=chunk_size)
    P = op.dim
    k = _lockstep(lockstep, lockstep_bytes, probes, op)
    for group in _groups(_pending(loop, "sigma^2 per-sample probes", probes, progress), k):
        vs = [
            draw_probe(
                P,
                generator=torch.Generator().manual_seed(seed),
                distribution=distribution,
                dtype=op.dtype,
                device=op.device,
            )
            for _, seed in group
        ]
        for v, center in zip(vs, products(op, vs), strict=True):
            total, N = ps.squared_deviation_sum(v, center)
            loop.record(total / (N * P * P), N=N)
    values = loop.values
    N = loop.extra["N"]
    return _summarise(
        values,
        confidence=confidence,
        method="per-sample",
        distribution=distribution,
        seeds=seeds,
        factor=1.0,
        N=int(N),
        P=P,
        B=None,
    )


def sigma2_partition(
    op: HessianOperator,
    *,
    batch_size: int,
    probes: int = 10,
    generator: torch.Generator,
    distribution: str = "gaussian",
    confidence: float = 0.95,
    progress: bool | None = None,
    state_dir=None,
    save_every: int = 1,
) -> Sigma2Estimate:
    """Partition estimator: ``mean_b ||(H_b - H_emp) v||^2 / (f P^2)``, f = (N-B)/(B(N-1)).

    Each probe draws a fresh random partition of the N samples into ``floor(N/B)`` batches of
    ``batch_size`` (see the module docstring for the derivation; unbiased). Needs ``N >= 2B``
    (at least two batches). Variance falls with more probes and with more batches per probe.
    """
    _check_op(op, in_memory=True)
    _check_confidence(confidence)
    N = len(op.dataset)
    _check_NB(N, batch_size)
    if N // batch_size < 2:
        raise ValueError(
            f"the partition estimator needs at least two batches: N = {N} < 2 B = {2 * batch_size}"
        )
    f = finite_population_factor(N, batch_size)
    _check_distribution(distribution)
    loop = _probe_loop(
        op,
        "sigma2-partition",
        probes,
        generator,
        state_dir,
        save_every,
        distribution=distribution,
        batch_size=batch_size,
    )
    seeds = loop.seeds
    engine = op.engine
    P = op.dim
    for _, seed in _pending(loop, "sigma^2 partition probes", probes, progress):
        g = torch.Generator().manual_seed(seed)
        v = draw_probe(P, generator=g, distribution=distribution, dtype=op.dtype, device=op.device)
        batches, leftover = draw_partition(N, batch_size, generator=g)
        raw = _partition_raw(engine, op.dataset, v, batches, leftover, progress, op.sharding)
        loop.record(raw / (f * P * P))
    values = loop.values
    return _summarise(
        values,
        confidence=confidence,
        method="partition",
        distribution=distribution,
        seeds=seeds,
        factor=f,
        N=N,
        P=P,
        B=batch_size,
    )


def _partition_raw(engine, dataset, v, batches, leftover, progress, sharding=None) -> float:
    """``(1/K) sum_b ||x_b - c||^2`` with ``x_b = H_b v``, ``c = H_emp v``, in one pass.

    Shifted sums (shift ``s = x_1``, computed first): ``S1 = sum_b (x_b - s)``, ``S2 = sum_b ||x_b
    - s||^2`` and ``W = sum_b n_b x_b`` (left-over included), all in float64; then with
    ``d = W/N - s``: ``sum_b ||x_b - c||^2 = S2 - 2 <d, S1> + K ||d||^2``.

    With ``sharding`` each rank evaluates a contiguous block of the K + 1 index batches (the
    shift on every rank) and the three sums and the count are all-reduced.
    """
    vd = engine.unflatten(v)
    B = int(batches[0].numel())
    K = len(batches)
    index_batches = list(batches) + ([leftover] if leftover.numel() else [])
    if sharding is not None:
        index_batches = sharding.split(index_batches, what="partition batches")
    source = BatchSource.from_indices(
        dataset, index_batches, device=engine.device, dtype=engine.dtype
    )
    first = BatchSource.from_indices(
        dataset, [batches[0]], device=engine.device, dtype=engine.dtype
    )
    with policy_mode(engine.model, engine.policy):
        X1, y1 = next(iter(first))
        shift = engine.batch_hvp(X1, y1, vd)[0].to(torch.float64)

        def fn(X, y):
            x = engine.batch_hvp(X, y, vd)[0].to(torch.float64)
            n = X.shape[0]
            if n == B:
                dev = x - shift
                return x * n, dev, (dev * dev).sum()
            return x * n, torch.zeros_like(x), torch.zeros((), dtype=torch.float64, device=x.device)

        res = data_pass(fn, source, progress=progress, desc="partition batch HVPs")
    if sharding is not None:
        res = sharding.reduce_pass(res)
    W, S1, S2 = res.sums
    d = W / res.count - shift
    total = float(S2 - 2 * torch.dot(d, S1) + K * torch.dot(d, d))
    if not np.isfinite(total):
        raise ValueError("batch Hessian-vector products are not finite")
    return max(total, 0.0) / K


def sigma2_two_batch(
    op: HessianOperator,
    *,
    batch_size: int,
    probes: int = 10,
    generator: torch.Generator,
    distribution: str = "gaussian",
    confidence: float = 0.95,
    progress: bool | None = None,
    state_dir=None,
    save_every: int = 1,
) -> Sigma2Estimate:
    """Two-disjoint-batch estimator: ``||(H_b1 - H_b2) v||^2 / (g P^2)``, g = 2N/(B(N-1)).

    Each probe draws ``b1 = perm[:B]``, ``b2 = perm[B:2B]`` from a fresh permutation; unbiased
    (module docstring), needs ``2 B <= N`` and no full-data pass.
    """
    _check_op(op, in_memory=True)
    _check_confidence(confidence)
    N = len(op.dataset)
    g_factor = two_batch_factor(N, batch_size)
    _check_distribution(distribution)
    loop = _probe_loop(
        op,
        "sigma2-two-batch",
        probes,
        generator,
        state_dir,
        save_every,
        distribution=distribution,
        batch_size=batch_size,
    )
    seeds = loop.seeds
    engine = op.engine
    P = op.dim
    for _, seed in _pending(loop, "sigma^2 two-batch probes", probes, progress):
        g = torch.Generator().manual_seed(seed)
        v = draw_probe(P, generator=g, distribution=distribution, dtype=op.dtype, device=op.device)
        perm = torch.randperm(N, generator=g)
        b1, b2 = perm[:batch_size], perm[batch_size : 2 * batch_size]
        vd = engine.unflatten(v)
        x = []
        for b in (b1, b2):
            source = BatchSource.from_indices(
                op.dataset, [b], device=engine.device, dtype=engine.dtype
            )
            mean, _ = engine.mean_over(
                source,
                lambda X, y, vd=vd: engine.batch_hvp(X, y, vd),
                progress=False,
                desc="two-batch HVP",
            )
            x.append(mean.to(torch.float64))
        diff = x[0] - x[1]
        raw = float(torch.dot(diff, diff))
        if not np.isfinite(raw):
            raise ValueError("batch Hessian-vector products are not finite")
        loop.record(raw / (g_factor * P * P))
    values = loop.values
    return _summarise(
        values,
        confidence=confidence,
        method="two-batch",
        distribution=distribution,
        seeds=seeds,
        factor=g_factor,
        N=N,
        P=P,
        B=batch_size,
    )
