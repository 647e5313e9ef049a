"""Result folders with provenance, written all at once or not at all.

Every run writes into a fresh temporary folder beside ``--out`` and moves its files into place
only after everything succeeded, so an interrupted or failed run leaves ``--out`` as it was.
``results.json`` carries the provenance of the run: configuration, seeds, package versions,
device, git commit and dirty flag, UTC start time and wall time.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
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


class ResultWriter:
    """Collects the files of one run in a staging folder; ``commit`` moves them into ``out``."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.files: list[str] = []

    def path(self, name: str) -> Path:
        self.files.append(name)
        return self.staging / name

    def json(self, name: str, payload) -> None:
        with open(self.path(name), "w") as fh:
            json.dump(to_jsonable(payload), fh, indent=2, allow_nan=False)
            fh.write("\n")

    def csv(self, name: str, frame) -> None:
        frame.to_csv(self.path(name), index=False)

    def figure(self, name: str, fig) -> None:
        fig.savefig(self.path(name), dpi=120)


@contextmanager
def result_folder(out: Path):
    """Stage a run's files beside ``out`` and move them in only if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        writer = ResultWriter(staging)
        yield writer
        out.mkdir(exist_ok=True)
        for name in writer.files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def same_config(folder: Path, config) -> bool:
    """Whether ``folder`` holds a complete result of exactly this configuration."""
    try:
        stored = read_results(folder)
    except (OSError, ValueError):
        return False
    recorded = stored.get("provenance", {}).get("config")
    complete = all((Path(folder) / name).exists() for name in stored.get("files", []))
    return complete and recorded == to_jsonable(config)
