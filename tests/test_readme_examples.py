"""The README's Python examples run as printed (a documented call that breaks is a defect)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], flags=re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_your_own_model_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out="results/mine" lands here
    namespace: dict = {}
    exec(python_block("## Your own model"), namespace)  # noqa: S102 - our own README
    summary = namespace["comparison"].summary
    assert set(summary.check) >= {"theorem2", "sigma2", "lanczos-exact", "noise-variance"}
    assert (summary[summary.check == "lanczos-exact"].verdict == "agrees").all()
    assert (tmp_path / "results" / "mine" / "summary.csv").is_file()
    draws = namespace["comparison"].tables.batch_draws  # draw 0 of B = 16 is the SLQ batch
    assert namespace["top"][0] == draws[(draws.B == 16) & (draws.draw == 0)].lambda_max.iloc[0]


def test_property_testing_example_runs():
    pytest.importorskip("hypothesis")
    namespace: dict = {}
    exec(python_block("## Property-testing your own formula"), namespace)  # noqa: S102
    namespace["test_weyl"]()
    namespace["test_outlier_law"]()
