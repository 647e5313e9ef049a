"""End-to-end: ``python -m validation report`` writes report.html, report.md, summary.csv and
results.json at once; bad input exits 2 with one line and nothing written."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import write_fake_network
from validation.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-report")
    assert main(["paper", "--out", str(root / "paper")]) == 0
    write_fake_network(root / "network", epoch=3, sigma2=0.1)
    return root


def test_report_end_to_end(inputs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(inputs / "paper"), str(inputs / "network"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"report: {out / 'report.html'}"
    assert {"report.html", "report.md", "summary.csv", "results.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "report"
    assert [i["kind"] for i in results["inputs"]] == ["paper", "network"]
    for key in ("config", "versions", "git", "started_utc", "wall_seconds"):
        assert key in results["provenance"]
    assert set(results["files"]) == {p.name for p in out.iterdir()}
    summary = pd.read_csv(out / "summary.csv")
    counts = summary["verdict"].str.split(" (", regex=False).str[0].value_counts().to_dict()
    assert results["verdicts"] == counts
    # the paper's 2 rows give 4 tidy rows each; the fake network's summary.csv has 3
    assert len(summary) == 2 * 4 + 3


def test_rebuilding_drops_figures_of_the_earlier_report(inputs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(inputs / "network"), "--out", str(out)]) == 0
    assert len(list(out.glob("figure-*.png"))) == 4
    (out / "notes.txt").write_text("mine")
    # another report (other inputs) into the same folder is refused unless --overwrite; then the
    # folder is replaced whole: nothing of the earlier report, nor a file put there, survives
    assert main(["report", str(inputs / "paper"), "--out", str(out)]) == 2
    assert main(["report", str(inputs / "paper"), "--out", str(out), "--overwrite"]) == 0
    assert list(out.glob("figure-*.png")) == [] and not (out / "notes.txt").exists()


def _write(path, text):
    path.mkdir(parents=True)
    (path / "results.json").write_text(text)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such result folder"),
        (lambda p: p.mkdir(), "no results.json in"),
        (lambda p: _write(p, '{"kind": "synthetic", '), "corrupt JSON"),
        (lambda p: _write(p, '{"kind": "mystery"}'), "unknown kind 'mystery'; accepted"),
        (lambda p: _write(p, '"text"'), "expected a JSON object"),
    ],
)
def test_bad_input_exits_2_nothing_written(inputs, tmp_path, capsys, setup, message):
    bad = tmp_path / "bad"
    setup(bad)
    out = tmp_path / "report"
    assert main(["report", str(inputs / "paper"), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad"] if bad.exists() else [])


def test_a_run_older_than_stored_verdicts_is_one_line_rerun(inputs, tmp_path, capsys):
    import shutil

    old = shutil.copytree(inputs / "paper", tmp_path / "old-paper")
    (old / "summary.csv").unlink()
    out = tmp_path / "report"
    assert main(["report", str(old), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{old / 'summary.csv'}: missing" in err and "rerun python -m validation paper" in err
    assert not out.exists()


def test_a_folder_given_twice_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "report"
    twice = [str(inputs / "paper"), str(inputs / "paper" / ".." / "paper")]
    assert main(["report", *twice, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is given twice" in err and err.count("\n") == 1
    assert not out.exists()


def test_parent_folder_hint_and_out_among_inputs(inputs, tmp_path, capsys):
    assert main(["report", str(inputs), "--out", str(tmp_path / "r")]) == 2
    assert "sub-folders network, paper have one" in capsys.readouterr().err
    before = sorted(p.name for p in (inputs / "paper").iterdir())
    assert main(["report", str(inputs / "paper"), "--out", str(inputs / "paper")]) == 2
    assert "is one of the input folders" in capsys.readouterr().err
    assert sorted(p.name for p in (inputs / "paper").iterdir()) == before
    assert main(["report", "--out", str(tmp_path / "r")]) == 2  # no folder at all
    assert not (tmp_path / "r").exists()


def test_top_level_imports_stay_light():
    # validation.report alone pulls in none of the heavy packages; the whole parser (with the
    # other subcommands) neither torch nor matplotlib
    code = (
        "import sys, validation.report; "
        "bad = {'torch', 'matplotlib', 'pandas'} & set(sys.modules); "
        "import validation.cli; validation.cli.build_parser(); "
        "bad |= {'torch', 'matplotlib'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
