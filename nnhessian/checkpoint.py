"""Resumable state for long Lanczos, SLQ and sigma^2 runs: atomic files and configuration checks.

A run given a state directory saves, every ``save_every`` steps (Lanczos) or probes (sigma^2),
everything it needs to continue: the Lanczos basis, the coefficients alpha/beta, the step index,
the state of the caller's ``torch.Generator`` after the probe seeds were drawn, the seeds and the
results of completed probes. A run killed at any point and started again with the same arguments
loads the last state and continues; on the CPU it then produces the same numbers, bit for bit, as
an uninterrupted run (every later operation sees the same inputs in the same order).

Layout of a state directory::

    state.pt                       small: format, fingerprint, payload, list of basis segments
    basis-<tag>-<start>-<stop>.pt  rows start..stop-1 of the current run's Lanczos basis (m, P)

Segments are append-only (a Lanczos row never changes once computed), so a save writes only the
rows computed since the previous one: O(P * save_every) bytes, not O(P m). Every file is written
to a temporary file in the same directory, flushed, fsync'ed and renamed over the target
(``os.replace`` is atomic on POSIX and Windows): a kill during a save leaves the previous state
intact, and ``state.pt`` names only segments that were completely written before it.

The fingerprint (:func:`config_fingerprint`) holds the operator dimension and dtype, the run's
settings (steps, probes, probe law, breakdown threshold), a hash of the caller's generator state on
entry (the seed) and a hash of the operator's weights and data (:func:`operator_fingerprint`). A
state written under a different fingerprint is refused with :class:`StateMismatchError` naming
the fields that differ; an unreadable state raises :class:`StateCorruptError`. Neither is ever
overwritten silently.

Distributed runs (:mod:`nnhessian.distributed`): every rank holds the same Lanczos vectors, so only
rank 0 reads and writes the directory; on resume it broadcasts the loaded state (or the error) to
the other ranks, so the directory need not be on a shared file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "ProbeLoop",
    "RunState",
    "StateCorruptError",
    "StateMismatchError",
    "atomic_save",
    "atomic_write_bytes",
    "check_save_every",
    "config_fingerprint",
    "generator_state_hash",
    "operator_fingerprint",
    "tensor_sha256",
]

FORMAT = 1  # version of the state layout; a different version is refused
META = "state.pt"
_SEGMENT = re.compile(r"^basis-[A-Za-z0-9_]+-\d{6}-\d{6}\.pt$")
# Lanczos steps between saves: at m = 100 (the paper) a kill loses at most 10 products, and a
# save costs one append of 10 basis rows (600 MB for VGG16 in float32) plus a small file.
DEFAULT_SAVE_EVERY = 10


class StateMismatchError(ValueError):
    """The state directory holds a run of another configuration (operator, settings or seed)."""


class StateCorruptError(ValueError):
    """The state directory cannot be read (truncated, foreign or of another format version)."""


# ---------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / file system
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    _atomic_write(Path(path), lambda fh: fh.write(data))


# ---------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (moved to the CPU)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def generator_state_hash(generator) -> str:
    """Hash of a ``torch.Generator``'s state (its seed and position); an int seed is hashed too."""
    if isinstance(generator, torch.Generator):
        return tensor_sha256(generator.get_state())
    return hashlib.sha256(f"int-seed:{int(generator)}".encode()).hexdigest()


def operator_fingerprint(op) -> dict[str, Any]:
    """What identifies an operator's matrix: dimension, dtype and hashes of weights and data.

    * :class:`~nnhessian.operators.HessianOperator`: kind, policy, N, batching, hashes of the
      weight snapshot (trainable parameters and buffers), of the data set (features and labels,
      when held in memory) and of the fixed batch indices;
    * an object with a ``matrix`` tensor (:class:`~nnhessian.operators.MatrixOperator`): its hash;
    * anything else with a ``fingerprint()`` method: its dict; otherwise dimension and dtype only.

    The number of processes is deliberately not part of it: a run may resume on another world
    size (the products then differ by round-off, so bit-identity holds only on the same layout).
    """
    fp: dict[str, Any] = {"dim": int(op.dim), "dtype": str(op.dtype)}
    engine = getattr(op, "engine", None)
    if engine is not None and hasattr(engine, "params"):
        h = hashlib.sha256()
        for name in engine.names:
            h.update(name.encode())
            h.update(tensor_sha256(engine.params[name]).encode())
        for name in sorted(engine.consts):
            h.update(name.encode())
            h.update(tensor_sha256(engine.consts[name]).encode())
        fp["params_sha256"] = h.hexdigest()
        fp["kind"] = op.kind
        fp["policy"] = op.policy
        fp["num_samples"] = op.num_samples
        fp["batch_size"] = op.batch_size
        if op.dataset is not None:
            fp["data_sha256"] = hashlib.sha256(
                (tensor_sha256(op.dataset.X) + tensor_sha256(op.dataset.y)).encode()
            ).hexdigest()
        if op.batch_indices is not None:
            fp["batch_sha256"] = tensor_sha256(op.batch_indices)
    elif isinstance(getattr(op, "matrix", None), torch.Tensor):
        fp["matrix_sha256"] = tensor_sha256(op.matrix)
    elif callable(getattr(op, "fingerprint", None)):
        fp.update(op.fingerprint())
    return fp


def config_fingerprint(kind: str, op, **settings) -> dict[str, Any]:
    """The fingerprint of a run: its kind, the operator's fingerprint and the run's settings."""
    return {"run": kind, **operator_fingerprint(op), **settings}


def check_save_every(save_every) -> int:
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise ValueError(f"save_every must be an integer >= 1, got {save_every!r}")
    return save_every


# ---------------------------------------------------------------------------------------------
# the state directory
# ---------------------------------------------------------------------------------------------


def _is_digest(s) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def _differences(saved: dict, wanted: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<absent>"), wanted.get(key, "<absent>")
        if a != b:
            short = [s[:12] + "..." if _is_digest(s) else s for s in (a, b)]
            out.append(f"{key}: saved {short[0]!r}, now {short[1]!r}")
    return out


class RunState:
    """A run's state directory (see the module docstring): load, append basis rows, save.

    ``sharding`` (an :class:`nnhessian.distributed.Sharding` or None): only its rank 0 touches
    the files; :meth:`load` broadcasts what rank 0 found.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], *, sharding=None):
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.sharding = sharding
        self.writer = sharding is None or sharding.rank == 0
        self._error: Exception | None = None
        if self.writer:
            try:
                if self.path.exists() and not self.path.is_dir():
                    raise ValueError(f"state path {self.path} exists and is not a directory")
                self.path.mkdir(parents=True, exist_ok=True)
            except (OSError, ValueError) as err:
                if sharding is None:
                    raise
                self._error = ValueError(f"state directory {self.path}: {err}")  # see load()

    # -- reading ----------------------------------------------------------------------------
    def _read(self) -> tuple[dict | None, torch.Tensor | None]:
        meta_path = self.path / META
        if not meta_path.exists():
            return None, None
        try:
            meta = torch.load(meta_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file
            raise StateCorruptError(
                f"state file {meta_path} cannot be read ({type(err).__name__}: {err}); delete "
                f"{self.path} to start the run afresh"
            ) from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StateCorruptError(
                f"{meta_path} is not a state file of format {FORMAT} (found "
                f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__}); "
                f"delete {self.path} to start afresh"
            )
        diff = _differences(meta["fingerprint"], self.fingerprint)
        if diff:
            raise StateMismatchError(
                f"the state in {self.path} belongs to another run configuration ("
                + "; ".join(diff)
                + "): use another state directory, or delete this one to start afresh"
            )
        names = meta.get("basis", [])
        rows = []
        for name in names:
            try:
                rows.append(torch.load(self.path / name, map_location="cpu", weights_only=True))
            except Exception as err:  # noqa: BLE001
                raise StateCorruptError(
                    f"basis segment {self.path / name} named by {meta_path} cannot be read "
                    f"({type(err).__name__}: {err}); delete {self.path} to start afresh"
                ) from err
        basis = torch.cat(rows) if rows else None
        return meta["payload"], basis

    def load(self) -> tuple[dict | None, torch.Tensor | None]:
        """``(payload, basis rows)`` of the saved run, or ``(None, None)`` when there is none.

        Raises :class:`StateMismatchError` / :class:`StateCorruptError` (on every rank; so does
        a state path rank 0 cannot create).
        """
        found: Any
        if self._error is not None:
            found = self._error
        elif self.writer:
            try:
                found = self._read()
            except (StateMismatchError, StateCorruptError) as err:
                if self.sharding is None:
                    raise
                found = err
        else:
            found = None
        if self.sharding is not None:
            found = self.sharding.broadcast_object(found)
        if isinstance(found, Exception):
            raise type(found)(str(found))
        return found

    # -- writing ----------------------------------------------------------------------------
    @staticmethod
    def segment_name(tag: str, start: int, stop: int) -> str:
        return f"basis-{tag}-{start:06d}-{stop:06d}.pt"

    def write_segment(self, tag: str, start: int, rows: torch.Tensor) -> str:
        """Save basis rows ``start .. start + len(rows) - 1`` (rank 0 only); returns the name."""
        name = self.segment_name(tag, start, start + int(rows.shape[0]))
        if self.writer:
            atomic_save(rows.detach().to("cpu").clone(), self.path / name)
        return name

    def save(self, payload: dict, basis: list[str]) -> None:
        """Atomically replace ``state.pt``; then delete basis segments it no longer names."""
        if not self.writer:
            return
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "payload": payload,
            "basis": list(basis),
        }
        atomic_save(meta, self.path / META)
        keep = set(basis)
        for p in self.path.iterdir():
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
            if (_SEGMENT.match(p.name) and p.name not in keep) or stale_tmp:
                with contextlib.suppress(OSError):
                    p.unlink()


# ---------------------------------------------------------------------------------------------
# resumable loop over independent probes (sigma^2 estimators)
# ---------------------------------------------------------------------------------------------


class ProbeLoop:
    """Independent probes ``p = 0..probes-1``, each with its own seed; resumable.

    On entry the caller's generator state is hashed into the fingerprint, then the probe seeds are
    drawn with ``draw_seeds()`` -- or, when ``state_dir`` holds a matching run, taken from it
    with the generator set to the state it had after the original draw. :meth:`pending` yields
    the probes still to do; :meth:`record` stores a probe's value (and extra fields) and saves
    every ``save_every`` probes and after the last one.
    """

    def __init__(
        self,
        state_dir,
        *,
        kind: str,
        op,
        generator: torch.Generator,
        draw_seeds: Callable[[], tuple[int, ...]],
        settings: dict[str, Any],
        save_every: int = 1,
    ) -> None:
        self.save_every = check_save_every(save_every)
        self.store: RunState | None = None
        payload = None
        if state_dir is not None:
            fp = config_fingerprint(kind, op, generator=generator_state_hash(generator), **settings)
            self.store = RunState(state_dir, fp, sharding=getattr(op, "sharding", None))
            payload, _ = self.store.load()
        if payload is not None:
            self.seeds = tuple(int(s) for s in payload["seeds"])
            generator.set_state(payload["generator_after"])
            self.values = [float(v) for v in payload["values"]]
            self.extra = dict(payload["extra"])
            self.resumed = len(self.values)
        else:
            self.seeds = tuple(draw_seeds())
            sharding = getattr(op, "sharding", None)
            if sharding is not None:  # rank 0's probes on every rank, however they were seeded
                self.seeds = tuple(sharding.broadcast_object(self.seeds))
            self.values = []
            self.extra = {}
            self.resumed = 0
        self._generator_after = generator.get_state()

    def pending(self) -> Iterator[tuple[int, int]]:
        for p in range(len(self.values), len(self.seeds)):
            yield p, self.seeds[p]

    def record(self, value: float, **extra) -> None:
        self.values.append(float(value))
        self.extra.update(extra)
        done = len(self.values)
        if self.store is not None and (done % self.save_every == 0 or done == len(self.seeds)):
            self.store.save(
                {
                    "seeds": list(self.seeds),
                    "generator_after": self._generator_after,
                    "values": list(self.values),
                    "extra": dict(self.extra),
                },
                basis=[],
            )
