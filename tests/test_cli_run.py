"""``python -m validation run`` end to end at toy size: every stage, the report, reuse, --force."""

import json

from validation import cli
from validation import run as run_command

TOY_STAGES = {
    "synthetic": (
        "--P", "50", "--trials", "3", "--sweep-points", "2", "--histogram-P", "40",
        "--method", "dense",
    ),
    "network": (
        "--samples", "120", "--width", "2", "--train-epochs", "1", "--batch-sizes", "8", "30",
        "--steps", "20", "--probes", "2", "--sigma2-probes", "4",
    ),
    "paper": (),
}  # fmt: skip


def _json(path):
    return json.loads(path.read_text())


def test_run_writes_every_stage_and_the_report_then_reuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_command, "RUN_STAGES", TOY_STAGES)
    assert cli.main(["run", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"done: report in {tmp_path / 'report' / 'report.html'}"
    kinds = {name: _json(tmp_path / name / "results.json")["kind"] for name in TOY_STAGES}
    assert kinds == {name: name for name in TOY_STAGES}
    report = _json(tmp_path / "report" / "results.json")
    assert report["kind"] == "report"
    html = (tmp_path / "report" / "report.html").read_text()
    for heading in ("paper", "Synthetic", "Network", "Provenance"):
        assert heading in html
    # the network stage's toy options reached it
    network = _json(tmp_path / "network" / "results.json")
    assert network["N"] == 120 and network["batch_sizes"] == [8, 30]

    first = {name: (tmp_path / name / "results.json").read_text() for name in TOY_STAGES}
    assert cli.main(["run", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "synthetic: reusing" in out and "network: reusing" in out
    for name in ("synthetic", "network"):
        assert (tmp_path / name / "results.json").read_text() == first[name]

    # a stage folder without tidy rows (written before runs stored verdicts) is not reused
    (tmp_path / "synthetic" / "summary.csv").unlink()
    assert cli.main(["run", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "synthetic: reusing" not in out and "network: reusing" in out
    assert (tmp_path / "synthetic" / "summary.csv").is_file()

    assert cli.main(["run", "--out", str(tmp_path), "--quiet", "--force"]) == 0
    assert "reusing" not in capsys.readouterr().out
    for name in ("synthetic", "network"):
        assert (tmp_path / name / "results.json").read_text() != first[name]  # new timings
