"""Layering: rmt imports without torch, matplotlib or the packages above it (DESIGN.md, imports
point one way), and ``import rmt`` does not pull in hypothesis (rmt.testing is on demand)."""

import subprocess
import sys
import textwrap
from pathlib import Path

# A meta-path finder that refuses the blocked packages makes any ``import name`` raise ImportError
# (even inside a function called at import time). Not ``sys.modules[name] = None``: scipy's
# array-API helpers look torch up in sys.modules and fail on a None entry (scipy 1.17).
BLOCKED = ("torch", "torchvision", "matplotlib", "nnhessian", "validation", "reports")
PRELUDE = f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
BLOCKED = {BLOCKED!r}
"""


def run_blocked(body: str, blocked=BLOCKED) -> subprocess.CompletedProcess:
    script = PRELUDE.replace(repr(BLOCKED), repr(tuple(blocked))) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],  # the repository root, where rmt lives
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_rmt_spectra_and_testing_import_without_torch_or_matplotlib():
    done = run_blocked(
        """
        import rmt
        assert "hypothesis" not in sys.modules, "import rmt pulled in hypothesis"
        import rmt.spectra
        assert "hypothesis" not in sys.modules, "import rmt.spectra pulled in hypothesis"
        import rmt.testing
        assert rmt.wasserstein1_to_density is rmt.spectra.wasserstein1_to_density
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_block_is_effective():
    """The same harness fails on a module that needs a blocked package: the test can fail."""
    done = run_blocked("import nnhessian.lanczos\n")
    assert done.returncode != 0
    assert "nnhessian is blocked in this test" in done.stderr


def test_validation_checks_import_without_torch_or_matplotlib():
    """The checks are pure: raw results + rmt theory -> tidy rows, no torch (DESIGN.md)."""
    done = run_blocked(
        """
        import validation.checks.verdict, validation.checks.network
        import validation.checks.synthetic, validation.checks.paper
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
        """,
        blocked=("torch", "torchvision", "matplotlib", "nnhessian"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
