"""Set up the project in ./.venv (first call only) and run the default job or the tests.

    python3 quickstart.py run     # the default main job, offline: python -m validation run
    python3 quickstart.py test    # the default test suite:        python -m pytest

Needs only Python >= 3.11. The first call creates .venv and installs the project with its test
extra (torch and torchvision come from the package index; several GB for a CUDA build).
Extra arguments are passed on, e.g. ``python3 quickstart.py test -k theory``.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".quickstart-installed"
COMMANDS = {"run": ["-m", "validation", "run"], "test": ["-m", "pytest"]}


def ensure_environment() -> None:
    pyproject = ROOT / "pyproject.toml"
    if STAMP.exists() and STAMP.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    if sys.version_info < (3, 11):  # noqa: UP036 -- run by any python3, before the venv exists
        sys.exit(f"error: Python >= 3.11 is needed, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"quickstart: creating {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True)
    print("quickstart: installing the project and its test dependencies", file=sys.stderr)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.touch()


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python3 quickstart.py {{{','.join(COMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    ensure_environment()
    env = dict(os.environ, HYPOTHESIS_PROFILE=os.environ.get("HYPOTHESIS_PROFILE", "ci"))
    command = [str(PYTHON), *COMMANDS[sys.argv[1]], *sys.argv[2:]]
    return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
