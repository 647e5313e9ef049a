"""Stages 2-5 of a network run, after :mod:`validation.network.prepare`:

2. operators: ``H_emp`` over all N samples (sharded over torch.distributed ranks when launched by
   torchrun), and per batch ``H_B`` and ``N_B = H_B - H_emp`` at the same weights;
3. sigma^2 (paper eq. 9; :mod:`nnhessian.sigma2`): per-sample, partition and two-batch estimators;
4. spectra: SLQ of ``H_emp``; per B, SLQ of ``H_B`` and ``N_B`` of draw 0, and for draws 1..K-1
   one Lanczos run of ``H_B`` and ``tr(N_B^2)/P`` on SLQ's probes;
5. exact check (``P <= EXACT_MAX_P``, rank 0): dense Hessians from :mod:`nnhessian.reference`, a
   code path independent of the HVP engine, and their eigenvalues.

Each stage is resumable through its own state directory under ``--state-dir``.
:func:`run_network` (a configuration) and :func:`measure` (a prepared model and data) run them in
order and return the raw :class:`~validation.network.result.NetworkResult`; the comparisons with
theory are :mod:`validation.checks.network`'s.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from validation.errors import UsageError
from validation.network.config import (
    DEFAULT_SAVE_EVERY,
    EXACT_MAX_P,
    SIGMA2_ESTIMATORS,
    NetworkConfig,
    stream_generator,
)
from validation.network.curvature import curvature_stage
from validation.network.prepare import (
    Prepared,
    flat,
    is_main,
    prepare,
    resolve_device,
    sigma2_batch_size,
)
from validation.network.result import NetworkResult, Spectrum


class Timer:
    """Seconds per named stage, summed over the stage's visits: ``with timer("slq"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _eigvalsh(H) -> np.ndarray:
    import torch

    return torch.linalg.eigvalsh(H).cpu().numpy().astype(np.float64)


def _spectrum(operator, B, result, exact=None) -> Spectrum:
    return Spectrum(
        operator=operator,
        B=B,
        nodes=result.ritz_values,
        weights=result.weights,
        residuals=result.residuals,
        exact=exact,
    )


class _Run:
    """One run's settings and bookkeeping shared by its stages (progress, timings, notes)."""

    def __init__(
        self, config: NetworkConfig, prepared: Prepared, *, progress, state_dir, save_every
    ):
        self.config = config
        self.prepared = prepared
        self.progress = progress or (lambda *a: None)
        self.state_dir = state_dir
        self.save_every = save_every
        self.timer = Timer()
        self.notes = list(prepared.notes)
        self.done: dict[str, int] = {}
        self.totals: dict[str, int] = {}

    def step(self, kind: str) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1
        self.progress(f"network {kind}", self.done[kind], self.totals[kind])

    def stage_dir(self, name: str) -> str | None:
        """The state directory of one stage (None: not resumable)."""
        return None if self.state_dir is None else str(Path(self.state_dir) / name)

    def slq(self, op, stream: str, key: tuple, state: str, probes: int | None = None):
        """SLQ of ``op``: ``steps`` steps from ``probes`` probes of the named stream, resumable."""
        from nnhessian import slq

        return slq(
            op,
            self.steps,
            self.config.probes if probes is None else probes,
            generator=stream_generator(self.config.seed, stream, *key),
            progress=False,
            state_dir=self.stage_dir(state),
            save_every=self.save_every,
            lockstep=None,  # as many probes as lockstep_bytes holds bases of
            lockstep_bytes=self.lockstep_bytes,
        )

    @property
    def lockstep_bytes(self) -> int:
        """``--lockstep-gb`` in bytes: the bases of the probes advanced together."""
        return int(self.config.lockstep_gb * 2**30)


def full_operator(prepared: Prepared, config: NetworkConfig, *, device, context, sharding):
    """Stage 2: ``H_emp`` over all N samples (sharded over the ranks with several processes)."""
    import torch

    from nnhessian import HessianOperator

    options = dict(
        batch_size=min(config.hvp_batch, len(prepared.data)),
        policy=config.policy,
        dtype=getattr(torch, config.dtype),
        device=device,
        graph_cache_bytes=int(config.graph_cache_gb * 2**30),
        progress=False,
    )
    if sharding is None:
        return HessianOperator.full(prepared.model, prepared.data, **options)
    from nnhessian.distributed import sharded_full_operator

    try:
        return sharded_full_operator(prepared.model, prepared.data, context=context, **options)
    except ValueError as err:
        raise UsageError(f"torch.distributed: {flat(err)}") from None


def sigma2_stage(run: _Run, full_op, sigma2_batch: int | None) -> dict:
    """Stage 3: the sigma^2 estimators, each on its own named stream and state directory."""
    from nnhessian.sigma2 import sigma2_partition, sigma2_per_sample, sigma2_two_batch

    lockstep = {"lockstep": None, "lockstep_bytes": run.lockstep_bytes}
    estimators = {"per-sample": (sigma2_per_sample, lockstep)}
    if sigma2_batch is None:
        run.notes.append(
            f"partition and two-batch sigma^2 need 2 B <= N; smallest B = "
            f"{min(run.config.batch_sizes)}"
        )
    else:
        batch = {"batch_size": sigma2_batch}
        estimators.update(
            {"partition": (sigma2_partition, batch), "two-batch": (sigma2_two_batch, batch)}
        )
    sigma2 = {}
    for name, (estimator, options) in estimators.items():
        sigma2[name] = estimator(
            full_op,
            **options,
            probes=run.config.sigma2_probes,
            generator=stream_generator(run.config.seed, f"sigma2 {name}"),
            progress=False,
            state_dir=run.stage_dir(f"sigma2-{name}"),
        )
        run.step("sigma^2")
    return sigma2


def exact_eigenvalues(run: _Run, indices=None, H_full=None):
    """Stage 5 for the full data (``indices`` None: returns ``(H, eigenvalues)``) or a batch
    (returns the eigenvalues of ``H_B`` and of ``H_B - H_full``, and ``H_B``)."""
    from nnhessian.reference import dense_hessian

    model, data = run.prepared.model, run.prepared.data
    with run.timer("exact"):
        H = dense_hessian(model, data, indices)
        if indices is None:
            result = (H, _eigvalsh(H))
        else:
            result = (_eigvalsh(H), _eigvalsh(H - H_full), H)
    run.step("exact")
    return result


def draw_zero(run: _Run, full_op, B: int, idx, H_full):
    """Draw 0 of batch size B: SLQ of ``H_B`` and ``N_B``, their exact eigenvalues, and the dense
    ``H_B`` (None without the exact check)."""
    with run.timer("slq"):
        batch_slq = run.slq(full_op.batch_operator(idx), "slq batch", (B,), f"slq-batch-{B}")
    run.step("SLQ")
    with run.timer("slq"):
        noise_slq = run.slq(full_op.noise_operator(idx), "slq noise", (B,), f"slq-noise-{B}")
    run.step("SLQ")
    exact_batch = exact_noise = H_batch = None
    if H_full is not None:
        exact_batch, exact_noise, H_batch = exact_eigenvalues(run, idx, H_full)
    batch = _spectrum("batch", B, batch_slq, exact_batch)
    return batch, _spectrum("noise", B, noise_slq, exact_noise), H_batch


def extra_draw(run: _Run, full_op, B: int, draw: int, N: int):
    """Draw ``draw`` >= 1 of batch size B (streams keyed by (B, draw)): only the extremes of
    ``H_B`` (one Lanczos run of ``steps`` on one probe) and ``tr(N_B^2)/P`` (``probes``
    products of ``N_B`` on the probes SLQ would start from)."""
    from nnhessian import draw_batch_indices, second_moments

    seed = run.config.seed
    idx = draw_batch_indices(N, B, generator=stream_generator(seed, "batch draw", B, draw))
    with run.timer("slq"):
        op = full_op.batch_operator(idx)
        draw_slq = run.slq(op, "slq batch", (B, draw), f"slq-batch-{B}-draw-{draw}", probes=1)
    run.step("SLQ")
    with run.timer("noise_m2"):
        m2 = second_moments(
            full_op.noise_operator(idx, verify=False),
            run.config.probes,
            generator=stream_generator(seed, "noise m2", B, draw),
        )
    return _spectrum("batch", B, draw_slq), idx.numpy(), m2


def _check_memory(config: NetworkConfig, P: int, steps: int) -> None:
    """Refuse, before any product, a Lanczos basis beyond the machine: ``(steps + 3) P`` numbers
    for one probe (the basis and three work vectors; the dense check is capped at EXACT_MAX_P)."""
    from validation.options import check_machine

    itemsize = 4 if config.dtype == "float32" else 8
    check_machine(
        f"a Lanczos basis of {steps} steps at P = {P:,}", memory=(steps + 3) * P * itemsize
    )


def _plan(run: _Run, P: int, sizes, main: bool, sigma2_batch) -> bool:
    """Steps, the exact check and the progress totals; returns whether this rank runs it."""
    config = run.config
    run.steps = min(config.steps, P)
    if run.steps < config.steps:
        run.notes.append(
            f"--steps {config.steps} capped at P = {P}: a Krylov space has <= P vectors"
        )
    _check_memory(config, P, run.steps)
    exact = config.exact == "yes" or (config.exact == "auto" and P <= EXACT_MAX_P)
    if config.exact == "yes" and P > EXACT_MAX_P:
        raise UsageError(f"--exact yes needs P <= {EXACT_MAX_P:,} (dense P x P), got P = {P:,}")
    if not exact:
        run.notes.append(
            f"no exact check (P = {P:,}; dense matrices only up to P = {EXACT_MAX_P:,})"
        )
    dense = exact and main  # no collective inside: the other ranks skip it
    run.totals = {
        "sigma^2": len(SIGMA2_ESTIMATORS) if sigma2_batch is not None else 1,
        "SLQ": 1 + (1 + config.batch_draws) * len(sizes),
        "exact": (1 + len(sizes)) if dense else 0,
        "curvature": 1 if config.curvature == "yes" else 0,
    }
    return dense


def _spectra(run: _Run, full_op, sizes, dense: bool) -> dict:
    """Stage 4 (and 5): every spectrum of the run, as NetworkResult fields."""
    from nnhessian import draw_batch_indices

    N = len(run.prepared.data)
    with run.timer("slq"):
        full_slq = run.slq(full_op, "slq full", (), "slq-full")
    run.step("SLQ")
    H_full, exact_full = exact_eigenvalues(run) if dense else (None, None)
    fields = dict(full=_spectrum("full", None, full_slq, exact_full), batches={}, noises={})
    fields.update(batch_indices={}, extra_batches={}, extra_indices={}, extra_noise_m2={})
    fields["curvature"] = None
    H_largest = None  # the dense H_B of the largest B, for the residual share of stage 6
    for B in sizes:
        generator = stream_generator(run.config.seed, "batch draw", B)
        idx = draw_batch_indices(N, B, generator=generator)
        fields["batch_indices"][B] = idx.numpy()
        fields["batches"][B], fields["noises"][B], H_batch = draw_zero(run, full_op, B, idx, H_full)
        if B == sizes[-1]:
            H_largest = H_batch
        del H_batch
        if B == N:
            run.notes.append(f"B = N = {N}: the batch is the whole data set, the noise is zero")
        extras = [extra_draw(run, full_op, B, d, N) for d in range(1, run.config.batch_draws)]
        if extras:
            fields["extra_batches"][B] = tuple(e[0] for e in extras)
            fields["extra_indices"][B] = [e[1] for e in extras]
            fields["extra_noise_m2"][B] = tuple(e[2] for e in extras)
    if run.config.curvature == "yes":
        largest = fields["batches"][sizes[-1]] if H_largest is not None else None
        fields["curvature"] = curvature_stage(
            run, full_op, fields["batch_indices"], dense_batch=(H_largest, largest)
        )
    return fields


def measure(
    config: NetworkConfig,
    prepared: Prepared,
    *,
    device,
    context=None,
    sharding=None,
    progress=None,
    state_dir=None,
    save_every: int = DEFAULT_SAVE_EVERY,
    setup_seconds: float = 0.0,
) -> NetworkResult:
    """Stages 2-5 on a prepared model and data; the raw result (no comparison with theory)."""
    from nnhessian.checkpoint import StateCorruptError, StateMismatchError

    run = _Run(config, prepared, progress=progress, state_dir=state_dir, save_every=save_every)
    run.timer.seconds["setup"] = setup_seconds
    N = len(prepared.data)
    sizes = sorted(set(config.batch_sizes))
    sigma2_batch = sigma2_batch_size(config, N)
    full_op = full_operator(prepared, config, device=device, context=context, sharding=sharding)
    P = full_op.dim
    dense = _plan(run, P, sizes, is_main(sharding), sigma2_batch)
    try:
        with run.timer("sigma2"):
            sigma2 = sigma2_stage(run, full_op, sigma2_batch)
        fields = _spectra(run, full_op, sizes, dense)
    except (StateMismatchError, StateCorruptError) as err:
        raise UsageError(f"--state-dir: {flat(err)}") from None
    world = context.world_size if context is not None else 1
    return NetworkResult(
        config=config,
        P=P,
        N=N,
        steps=run.steps,
        epoch=prepared.epoch,
        training=prepared.training,
        device=str(device),
        hvp_method=full_op.method,
        graph_cache=asdict(full_op.graph_cache),
        sigma2=sigma2,
        sigma2_batch=sigma2_batch,
        notes=tuple(run.notes),
        timings=run.timer.seconds,
        weights=prepared.weights,
        data_identity=prepared.identity,
        world_size=world,
        backend=context.backend if world > 1 else None,
        state_dir=str(state_dir) if state_dir is not None else None,
        **fields,
    )


def run_network(
    config: NetworkConfig,
    *,
    progress=None,
    context=None,
    state_dir=None,
    save_every: int = DEFAULT_SAVE_EVERY,
    download: bool = False,
    model=None,
    data=None,
) -> NetworkResult:
    """Every stage of :mod:`validation.network`; ``progress(stage, done, total)`` as work proceeds.

    ``context``: a :class:`nnhessian.distributed.DistContext` (None or one process: the plain
    operators). With several processes every rank calls this with the same arguments and makes
    the same collective calls in the same order (weights broadcast after on-the-spot training,
    the sharded operator's checks and products, Lanczos broadcasts, state loading); the dense
    exact check, which holds none, runs on rank 0 only, whose result is the one to write.
    ``state_dir``: resumable stages, ``save_every`` Lanczos steps between saves. ``download``:
    let the CIFAR-100 loader fetch missing files. ``model`` / ``data``: measure this
    ``torch.nn.Module`` at its weights on these data instead of those ``config`` names.

    Raises ``UsageError`` (before any output exists) for bad input found on the way: an absent
    CUDA device, B > N, more processes than samples, a checkpoint that is unreadable or does not
    fit the model or the data, NaN/inf in the weights or the loss, a model that does not fit the
    data, a state directory of another configuration or an unreadable one.
    """
    clock = time.perf_counter()
    world = context.world_size if context is not None else 1
    sharding = None
    if world > 1:
        from nnhessian.distributed import Sharding

        sharding = Sharding(context.rank, world)
        device = context.device
    else:
        device = resolve_device(config.device)
    prepared = prepare(
        config,
        device=device,
        sharding=sharding,
        state_dir=state_dir,
        download=download,
        model=model,
        data=data,
        world=world,
    )
    return measure(
        config,
        prepared,
        device=device,
        context=context,
        sharding=sharding,
        progress=progress,
        state_dir=state_dir,
        save_every=save_every,
        setup_seconds=time.perf_counter() - clock,
    )
