"""Scale-out of the full-data Hessian-vector product over a torch.distributed process group.

The full-data product is a sample-weighted sum over batches, ``H_emp v = (1/N) sum_b n_b H_b v``
(paper eq. 2), so it splits exactly over processes: rank r evaluates a contiguous block of the
batches, ``s_r = sum_{b in block r} n_b H_b v`` and ``N_r``; one all-reduce (SUM) of ``s_r`` and of
``N_r`` gives ``sum_b n_b H_b v`` and ``N`` on every rank, divided by ``N`` on every rank. The
batches are those of the single-process operator (same boundaries, same per-batch products), so
the two differ only in the order of the final summation: by at most ``nb eps sum_b n_b |H_b v| /
N`` elementwise for ``nb`` batches (Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed., eq. 4.4, applied to both orders). The per-sample and partition sigma^2 passes split the
same way (:mod:`nnhessian.sigma2`). k products in one pass (``matvec_many``, SLQ probes in
lockstep) evaluate each rank's shard once for all k and all-reduce the k products as one
``(k, P)`` tensor; with two processes each element is the same two-term sum as with k separate
reductions, so lockstep and one-at-a-time runs agree bit for bit there too (tested).

Every rank keeps the whole data set in memory (fixed batches, noise operators and random
partitions index all of it) but evaluates only its block. The Lanczos loop runs redundantly on
every rank; the start vector and each new Lanczos vector are broadcast from rank 0
(:func:`nnhessian.lanczos.lanczos`), so all ranks hold identical vectors. Only rank 0 writes
resumable state (:mod:`nnhessian.checkpoint`).

Launch with torchrun, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` reads them (single process when they are absent). Backend:
NCCL when the device is CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from nnhessian.data import BatchSource, InMemoryDataset, PassResult
from nnhessian.hvp import has_batchnorm
from nnhessian.operators import HessianOperator, resolve_device

__all__ = [
    "DistContext",
    "ShardedBatchSource",
    "Sharding",
    "init_from_env",
    "shard_plan",
    "sharded_full_operator",
]

_ENV = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, backend and its device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # "gloo", "nccl" or None (single process)
    device: torch.device
    initialized_here: bool  # init_from_env created the process group (close() destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes state and results."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if :func:`init_from_env` created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(
    *, device=None, backend: str | None = None, timeout_s: float = 1800.0
) -> DistContext:
    """Initialise torch.distributed from torchrun's environment, or run as a single process.

    Without ``RANK``/``WORLD_SIZE`` in the environment, or with ``WORLD_SIZE=1``, nothing is
    initialised and the context is rank 0 of 1 on ``resolve_device(device)``. Otherwise the
    device is ``cuda:LOCAL_RANK`` when ``device`` is None or "cuda" and CUDA is present (and is
    made current), else the CPU; the backend is NCCL on CUDA and gloo on the CPU unless given.
    ``timeout_s`` bounds every collective (a rank that died shows up as a timeout, not a hang).
    An already initialised default group is used as it is.
    """
    if not all(k in os.environ for k in _ENV):
        return DistContext(0, 1, 0, None, resolve_device(device), False)
    world, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if world < 1 or not (0 <= rank < world):
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    if world == 1:
        return DistContext(0, 1, 0, None, resolve_device(device), False)
    want = None if device is None else torch.device(device)
    if want is None:
        want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        index = want.index if want.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} needs cuda:{index}, but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist on this node: launch at most "
                "that many processes per node (--nproc_per_node)"
            )
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = resolve_device(want)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown backend {backend!r}; accepted: gloo, nccl")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the NCCL backend needs CUDA devices; use gloo on the CPU")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(
                f"{key} is not set: launch with torchrun, or set MASTER_ADDR and MASTER_PORT"
            )
    here = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        here = True
    return DistContext(rank, world, local_rank, dist.get_backend(), dev, here)


def current_context(device=None) -> DistContext:
    """The context of an initialised default group, else a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank = dist.get_rank()
        return DistContext(
            rank,
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", rank)),
            dist.get_backend(),
            resolve_device(device),
            False,
        )
    return DistContext(0, 1, 0, None, resolve_device(device), False)


# ---------------------------------------------------------------------------------------------
# sharding
# ---------------------------------------------------------------------------------------------


def _blocks(n: int, world: int) -> list[tuple[int, int]]:
    """``world`` contiguous blocks of ``range(n)``; sizes differ by at most one, larger first."""
    q, r = divmod(n, world)
    out, start = [], 0
    for k in range(world):
        stop = start + q + (1 if k < r else 0)
        out.append((start, stop))
        start = stop
    return out


def shard_plan(
    N: int, batch_size: int, world_size: int
) -> tuple[list[list[tuple[int, int]]], bool]:
    """Per rank, the ``(start, stop)`` sample ranges of its batches; and whether batching is kept.

    The single-process batches ``[k b, min((k + 1) b, N))`` are dealt out in contiguous blocks of
    whole batches (block sizes differ by at most one batch) -- the batching, hence every
    per-batch product, is that of the single-process operator. With fewer batches than processes
    the N samples are split into ``world_size`` contiguous shards of one batch each (sizes differ
    by at most one; ``kept`` is False: the batching changes, which matters only for BatchNorm on
    batch statistics). More processes than samples is an error.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world size must be a positive integer, got {world_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if world_size > N:
        raise ValueError(
            f"world size {world_size} exceeds the number of samples N = {N}: every process needs "
            f"at least one sample; launch at most {N} processes"
        )
    batches = [(s, min(s + batch_size, N)) for s in range(0, N, batch_size)]
    if len(batches) >= world_size:
        return [batches[a:b] for a, b in _blocks(len(batches), world_size)], True
    return [[blk] for blk in _blocks(N, world_size)], False


@dataclass(frozen=True, eq=False)
class Sharding:
    """This process's place in a group, and the collectives the Hessian passes use."""

    rank: int
    world_size: int
    group: Any = None  # None: the default group

    def split(self, items: Sequence, *, what: str = "items") -> list:
        """This rank's contiguous block of ``items`` (block sizes differ by at most one)."""
        if self.world_size > len(items):
            raise ValueError(
                f"{len(items)} {what} cannot be split over {self.world_size} processes: use "
                "fewer processes or more, smaller batches"
            )
        a, b = _blocks(len(items), self.world_size)[self.rank]
        return list(items[a:b])

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        dist.broadcast(t, src=src, group=self.group)
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def reduce_pass(self, res: PassResult) -> PassResult:
        """All-reduce (SUM) a data pass's sums, sample count and batch count."""
        sums = tuple(self.all_reduce_(s.clone()) for s in res.sums)
        device = sums[0].device if sums else torch.device("cpu")
        counts = torch.tensor([res.count, res.batches], dtype=torch.int64, device=device)
        self.all_reduce_(counts)
        count, batches = (int(c) for c in counts.tolist())
        return PassResult(sums, count, batches)


class ShardedBatchSource(BatchSource):
    """A :class:`~nnhessian.data.BatchSource` over this rank's batches, reduced over the group.

    ``num_samples`` is the global N; :func:`nnhessian.hvp.reduce_pass` calls
    ``sharding.reduce_pass`` after each pass over it.
    """

    sharding: Sharding

    @classmethod
    def shard(
        cls,
        dataset: InMemoryDataset,
        ranges: list[tuple[int, int]],
        sharding: Sharding,
        *,
        device,
        dtype,
        batch_size: int,
    ) -> ShardedBatchSource:
        src = cls.from_indices(
            dataset, [torch.arange(a, b) for a, b in ranges], device=device, dtype=dtype
        )
        src.sharding = sharding
        src.num_samples = len(dataset)
        lo, hi = ranges[0][0], ranges[-1][1]
        src.description = (
            f"rank {sharding.rank}/{sharding.world_size}: samples [{lo}, {hi}) of {len(dataset)} "
            f"in batches of {batch_size}"
        )
        return src


def sharded_full_operator(
    model: torch.nn.Module,
    data: InMemoryDataset,
    *,
    batch_size: int,
    context: DistContext | None = None,
    verify: bool = True,
    **kwargs,
) -> HessianOperator:
    """``H_emp`` with its data passes sharded over the process group of ``context``.

    Same arguments as :meth:`HessianOperator.full` (``loss``, ``policy``, ``dtype``, ``method``,
    ``progress``; ``device`` defaults to the context's). With one process this *is*
    ``HessianOperator.full``. Every rank must pass the same model weights and data: a check at
    construction compares N, P and a weight checksum across ranks and raises on all of them.
    Operators derived with ``batch_operator`` / ``noise_operator`` evaluate their fixed batch on
    every rank and share the sharded ``H_emp`` term.
    """
    ctx = context if context is not None else current_context(kwargs.get("device"))
    kwargs.setdefault("device", ctx.device)
    if ctx.world_size == 1:
        return HessianOperator.full(model, data, batch_size=batch_size, verify=verify, **kwargs)
    if not isinstance(data, InMemoryDataset):
        raise TypeError(
            "a sharded operator needs an InMemoryDataset (every rank selects its block of "
            f"samples), got {type(data).__name__}"
        )
    plan, kept = shard_plan(len(data), batch_size, ctx.world_size)
    base = HessianOperator.full(model, data, batch_size=batch_size, verify=False, **kwargs)
    if ctx.backend == "nccl" and base.device.type != "cuda":
        raise ValueError("the NCCL backend reduces CUDA tensors: build the operator on the GPU")
    if not kept and base.policy == "batch-stats" and has_batchnorm(model):
        raise ValueError(
            f"{ctx.world_size} processes exceed the {-(-len(data) // batch_size)} batches of "
            f"{batch_size}; re-batching would change the BatchNorm batch statistics under policy "
            "'batch-stats': use a smaller batch_size or fewer processes"
        )
    sharding = Sharding(ctx.rank, ctx.world_size)
    _check_same_problem(base, sharding)
    source = ShardedBatchSource.shard(
        base.dataset,
        plan[ctx.rank],
        sharding,
        device=base.device,
        dtype=base.dtype,
        batch_size=batch_size,
    )
    return HessianOperator(
        base.engine,
        [(1.0, source)],
        kind="full",
        progress=base.progress,
        dataset=base.dataset,
        batch_size=batch_size,
        full_source=source,
        verify=verify,
    )


def _check_same_problem(op: HessianOperator, sharding: Sharding) -> None:
    """Raise on every rank unless all ranks hold the same N, P, weights and labels."""
    w = op.parameters().to(torch.float64)
    mine = torch.tensor(
        [
            float(len(op.dataset)),
            float(op.dim),
            float(w.sum()),
            float((w * w).sum()),
            float(op.dataset.y.to(torch.float64).sum()),
        ],
        dtype=torch.float64,
        device=op.device,
    )
    ref = sharding.broadcast_(mine.clone())
    bad = torch.tensor([0.0 if torch.equal(mine, ref) else 1.0], device=op.device)
    sharding.all_reduce_(bad)
    if float(bad) > 0:
        raise ValueError(
            "the ranks of the process group hold different problems (N, P, weight or label "
            "checksums differ from rank 0's): every process must load the same weights and data"
        )
