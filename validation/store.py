"""Result folders with provenance: one folder is one unit, swapped in whole.

Writing (:func:`result_folder`). A run stages its whole ``--out`` folder beside it
(``.NAME.partial-XXXX``), writes every file there, fsyncs every file and folder, then swaps the
stage in: ``renameat2(RENAME_EXCHANGE)`` where Linux offers it (one atomic step), else old folder
aside (``.NAME.aside-XXXX``), new folder in, old folder removed. A reader of ``--out`` therefore
sees the old complete folder or the new complete folder, never a mix; stale files of an earlier
run cannot survive a rerun. Leftovers of a run of the same ``--out`` that was killed (stage and
aside folders) are removed by the next run of that ``--out`` (an aside folder with no ``--out``
beside it is the old complete folder, and is moved back first). One run per ``--out`` at a time.

``results.json`` lists every file of the folder under ``files``: relative path -> SHA-256 (hex),
``results.json`` itself -> null (it cannot hold its own hash). ``reports.tables.load_run``
verifies them and refuses a folder whose files are missing or differ.

Folders filled incrementally. Two kinds grow over several runs and keep what earlier runs made:

* ``train``: ``checkpoints/epoch_EEEE.pt`` are written one by one into ``--out`` (each atomic,
  by ``nnhessian.train_checkpoint.save_atomic``) so that a rerun resumes; after each epoch the
  folder is swapped as above with ``checkpoints/`` *carried*: hard-linked into the stage (copied
  where the file system has no hard links), so nothing is copied or lost, and listed with hashes;
* network epoch sweeps (``network --checkpoints``): each ``epoch_EEEE/`` is itself a complete
  network result folder written by this mechanism inside ``--out`` (reused by a rerun of the
  same configuration); the sweep's top level (``epochs.csv``, ``epochs.png``, ``results.json``)
  is then swapped in with the epoch folders carried.

A carried entry appears in ``--out`` before the swap that lists it (a checkpoint just saved, an
epoch folder just measured): a reader then sees the old complete folder plus an entry it does not
list yet. A folder holding only such entries (a first run killed before its first swap) counts as
a partial run of that kind.

Refusing (:func:`check_out`, called by ``validation.cli.main`` before any work): an existing
``--out`` that holds another kind of run, a run of another configuration (``results.json``'s
``kind`` and ``provenance.config``), or files but no ``results.json`` is refused in one line
unless ``--overwrite``; a rerun of the same kind and configuration replaces the folder silently.

``results.json`` also carries the provenance of the run: configuration, seeds, package versions,
device, git commit and dirty flag, UTC start time and wall time.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as _dt
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

PACKAGES = ("numpy", "scipy", "pandas", "matplotlib", "torch", "torchvision", "hypothesis")
# Entries of a result folder that later runs extend rather than replace (see the module
# docstring), by kind; a folder holding only these is a partial run of that kind.
INCREMENTAL = {"train": ("checkpoints",), "network-epochs": ("epoch_*",)}


def package_versions(names=PACKAGES) -> dict:
    """Installed versions of the packages that shape the numbers (None when absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path | None = None) -> dict:
    """Commit hash and dirty flag of the repository holding this package (None outside git)."""
    root = Path(path) if path is not None else Path(__file__).resolve().parent.parent

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def provenance(config, *, started: _dt.datetime, wall_seconds: float, device: str = "cpu") -> dict:
    """The provenance block of ``results.json``."""
    return {
        "config": to_jsonable(config),
        "versions": package_versions(),
        "git": git_state(),
        "device": device,
        "platform": platform.platform(),
        "command": sys.argv,
        "started_utc": started.astimezone(_dt.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 3),
    }


def to_jsonable(obj):
    """Dataclasses, numpy scalars and arrays, tuples and paths as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# writing


class ResultWriter:
    """The staging folder of one run: files written (``path``, ``json``, ``csv``, ``figure``)
    or carried from the folder being replaced (``carry``), and their manifest."""

    def __init__(self, staging: Path, out: Path, known: dict | None = None):
        self.staging = staging
        self.out = out
        self.files: list[str] = []  # relative paths (POSIX) of the files written or carried
        self.known = dict(known or {})  # hashes recorded by the folder being replaced
        self.carried: set[str] = set()

    def path(self, name: str) -> Path:
        """Where to write the file ``name`` (a relative path; its folders are created)."""
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(Path(name).as_posix())
        return target

    def json(self, name: str, payload) -> None:
        with open(self.path(name), "w") as fh:
            json.dump(to_jsonable(payload), fh, indent=2, allow_nan=False)
            fh.write("\n")

    def csv(self, name: str, frame) -> None:
        frame.to_csv(self.path(name), index=False)

    def figure(self, name: str, fig) -> None:
        fig.savefig(self.path(name), dpi=120)

    def carry(self, name: str) -> None:
        """Bring the entry ``name`` (a file or folder) of ``out`` into the stage, hard-linked
        (copied where links are not possible); hidden temporary files are left behind."""
        source = self.out / name
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                rel = path.relative_to(self.out)
                if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                    self._link(path, rel)
        elif source.is_file():
            self._link(source, Path(name))

    def _link(self, source: Path, rel: Path) -> None:
        target = self.path(rel.as_posix())
        self.carried.add(rel.as_posix())
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    def manifest(self) -> dict:
        """``{relative path: SHA-256}`` of every file so far, plus ``results.json: None`` (last
        written; it cannot hold its own hash). A carried file keeps the hash its old folder
        recorded, so a growing folder of checkpoints is hashed once per file."""
        from reports.tables import file_sha256

        listed = {}
        for name in sorted(set(self.files) - {"results.json"}):
            known = self.known.get(name) if name in self.carried else None
            listed[name] = known if isinstance(known, str) else file_sha256(self.staging / name)
        listed["results.json"] = None
        return listed


def staging_leftovers(out: Path) -> list[Path]:
    """Stage and aside folders of earlier runs of ``out`` (beside it)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(
        p
        for pattern in (f".{out.name}.partial-*", f".{out.name}.aside-*")
        for p in out.parent.glob(pattern)
    )


def clean_leftovers(out: Path) -> None:
    """Remove what a killed run of ``out`` left beside it. An aside folder while ``out`` is
    missing is the old complete folder (killed between the two renames): it is moved back."""
    out = Path(out)
    if not out.exists():
        for aside in Path(out.parent).glob(f".{out.name}.aside-*") if out.parent.is_dir() else ():
            if (aside / "results.json").is_file():
                os.rename(aside, out)
                fsync_folder(out.parent)
                break
    for path in staging_leftovers(out):
        shutil.rmtree(path, ignore_errors=True)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (its renames and new names) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (and ``root``) to disk."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(Path(dirpath))


RENAME_EXCHANGE = 2  # linux/fs.h


def exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the system or file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    return done == 0


def swap_in(staging: Path, out: Path) -> None:
    """Put the complete folder ``staging`` at ``out``; the folder there before is removed."""
    if not out.exists():
        os.rename(staging, out)
    elif exchange(staging, out):
        shutil.rmtree(staging)  # now the old folder
    else:
        aside = out.parent / f".{out.name}.aside-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(out, aside)
        os.rename(staging, out)
        fsync_folder(out.parent)
        shutil.rmtree(aside)
    fsync_folder(out.parent)


def read_manifest(folder: Path) -> dict:
    """The ``files`` hashes recorded by ``folder/results.json`` (empty when there are none)."""
    try:
        files = read_results(folder).get("files")
    except (OSError, ValueError, AttributeError):
        return {}
    return files if isinstance(files, dict) else {}


@contextmanager
def result_folder(out: Path, *, carry=()):
    """Stage the whole folder ``out``, then swap it in if the block succeeds (see the module
    docstring). ``carry``: entries of the current ``out`` (names; ``*`` patterns allowed) that
    the new folder keeps, hard-linked. The block writes ``results.json`` last, with
    ``"files": writer.manifest()``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        writer = ResultWriter(staging, out, known=read_manifest(out))
        if out.is_dir():
            for name in sorted({e.name for pattern in carry for e in out.glob(pattern)}):
                writer.carry(name)
        yield writer
        unlisted = sorted(set(writer.files) - set(read_manifest(staging)))
        if unlisted:
            raise RuntimeError(f"results.json of {out} does not list {', '.join(unlisted)}")
        fsync_tree(staging)
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def discard(out: Path) -> None:
    """Remove the folder ``out`` (renamed aside first, so it vanishes in one step)."""
    out = Path(out)
    if out.exists():
        aside = out.parent / f".{out.name}.aside-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(out, aside)
        fsync_folder(out.parent)
        shutil.rmtree(aside)


# ---------------------------------------------------------------------------------------------
# reading and refusing


def check_writable(out: Path) -> None:
    """Raise ``UsageError`` (one line) unless a result folder can be written at ``out``: it is a
    folder or does not exist yet, and its nearest existing ancestor accepts a new folder (probed
    by creating and removing one, so nothing is left behind)."""
    from validation.errors import UsageError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {out}: {ancestor} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=ancestor))
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UsageError(f"--out {out}: cannot write into {ancestor} ({reason})") from None


def read_results(folder: Path) -> dict:
    """Load ``results.json`` of a result folder."""
    with open(Path(folder) / "results.json") as fh:
        return json.load(fh)


def config_differences(recorded, config) -> list[str]:
    """``"key: there -> here"`` for each key of ``config`` (made JSON-like) that ``recorded``
    holds otherwise; keys ``recorded`` has beyond ``config``'s are not compared."""
    here = to_jsonable(config)
    if not isinstance(here, dict) or not isinstance(recorded, dict):
        return [] if recorded == here else [f"{recorded!r} there, {here!r} here"]
    missing = object()
    return [
        f"{key} {recorded.get(key)!r} there, {value!r} here"
        for key, value in here.items()
        if recorded.get(key, missing) != value
    ]


def out_state(out: Path, kind: str, config) -> tuple[str, str]:
    """What ``out`` holds compared with a run of ``kind`` and ``config``: ``("new", "")``
    (absent or empty), ``("rerun", "")`` (the same kind and configuration, or a partial run of an
    incremental kind) or ``("foreign", reason)`` with a one-line reason."""
    out = Path(out)
    entries = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    if not entries:
        return "new", ""
    if "results.json" not in entries:
        patterns = INCREMENTAL.get(kind, ())
        if all(any(fnmatch.fnmatch(e, p) for p in patterns) for e in entries):
            return "rerun", ""
        return "foreign", "holds files but no results.json (it is not a result folder)"
    try:
        stored = read_results(out)
    except (OSError, ValueError):
        return "foreign", "has an unreadable results.json"
    stored = stored if isinstance(stored, dict) else {}
    if stored.get("kind") != kind:
        return "foreign", f"holds a {stored.get('kind')!r} run, not a {kind!r} run"
    recorded = (
        stored.get("provenance", {}).get("config")
        if isinstance(stored.get("provenance"), dict)
        else None
    )
    diffs = config_differences(recorded, config)
    if diffs:
        shown = "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
        return "foreign", f"holds a {kind} run of another configuration ({shown})"
    return "rerun", ""


def check_out(out: Path, kind: str, config, *, overwrite: bool, flag="--overwrite") -> str:
    """Refuse (``UsageError``, one line) an ``out`` that holds another run, unless
    ``overwrite``; return :func:`out_state`'s verdict. Leftovers of a killed run of ``out`` are
    cleaned first."""
    from validation.errors import UsageError

    clean_leftovers(out)
    state, reason = out_state(out, kind, config)
    if state == "foreign" and not overwrite:
        raise UsageError(
            f"--out {out} {reason}; choose another folder or pass {flag} to replace it"
        )
    return state


def same_config(folder: Path, config) -> bool:
    """Whether ``folder`` holds a complete result of exactly this configuration: its recorded
    configuration is ``config`` and every file it lists is there with its recorded hash."""
    from reports.tables import RunFolderError, verify_files

    try:
        stored = read_results(folder)
        verify_files(Path(folder), stored.get("files"))
    except (OSError, ValueError, AttributeError, RunFolderError):
        return False
    return stored.get("provenance", {}).get("config") == to_jsonable(config)
