"""End-to-end: ``python -m validation synthetic`` and ``run`` at toy size; bad input exits 2."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from reports.schema import TIDY_COLUMNS
from validation.cli import main

TOY = [
    "synthetic",
    "--P", "80", "200",
    "--spikes", "3,0.4,-2", "none",
    "--trials", "6",
    "--sweep-points", "4",
    "--histogram-P", "60",
    "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "synthetic"
    assert main([*TOY, "--method", "dense", "--out", str(out)]) == 0
    return out


def test_synthetic_writes_tables_figures_and_provenance(toy_run):
    files = {p.name for p in toy_run.iterdir()}
    expected = {
        "results.json", "extremes.csv", "weyl.csv", "bbp_sweep.csv", "free_convolution.csv",
        "summary.csv", "bbp_transition.png", "spectrum_histogram.png", "weyl_slack.png",
    }  # fmt: skip
    assert expected <= files
    results = json.loads((toy_run / "results.json").read_text())
    prov = results["provenance"]
    for key in ("config", "versions", "git", "device", "started_utc", "wall_seconds"):
        assert key in prov
    assert prov["config"]["P"] == [80, 200]
    assert prov["config"]["spikes"] == [[3.0, 0.4, -2.0], []]
    assert set(results["files"]) == files
    table = pd.read_csv(toy_run / "extremes.csv")
    for column in (
        "predicted", "regime", "measured_mean", "measured_se", "overlap_predicted",
        "overlap_measured", "z_score",
    ):  # fmt: skip
        assert column in table.columns
    assert "verdict" not in table.columns  # raw measurements; verdicts live in summary.csv
    # 2 P x (4 rows for 3,0.4,-2 + 2 edge rows for no spike)
    assert len(table) == 2 * (4 + 2)
    weyl = pd.read_csv(toy_run / "weyl.csv")
    assert len(weyl) == 2 * 2 * 6 and weyl.exact_holds.all()
    assert len(pd.read_csv(toy_run / "bbp_sweep.csv")) == 4


def _z_rule(predicted, measured, se, z_crit=4.0):
    """The verdict the numbers determine (the z rule, written out here)."""
    if not (np.isfinite(predicted) and np.isfinite(measured) and np.isfinite(se) and se > 0):
        return "not applicable"
    return "agrees" if abs(measured - predicted) <= z_crit * se else "disagrees"


def test_summary_holds_the_verdicts_the_raw_tables_determine(toy_run):
    summary = pd.read_csv(toy_run / "summary.csv")
    assert list(summary.columns) == list(TIDY_COLUMNS)
    assert set(summary.source) == {"synthetic"}
    extremes = pd.read_csv(toy_run / "extremes.csv")
    theorem2 = summary[summary.check == "theorem2"]
    np.testing.assert_array_equal(theorem2.predicted, extremes.predicted_mean)
    np.testing.assert_array_equal(theorem2.measured, extremes.measured_mean)
    np.testing.assert_array_equal(theorem2.uncertainty, extremes.measured_se)
    expected = [
        _z_rule(r.predicted_mean, r.measured_mean, r.measured_se) for r in extremes.itertuples()
    ]
    assert list(theorem2.verdict) == expected
    # overlaps: rows matched to a spike; the z rule for outliers, not applicable otherwise
    spiked = extremes[extremes.spike.notna()]
    overlap = summary[summary.check == "overlap"]
    assert len(overlap) == len(spiked)
    expected = [
        _z_rule(r.overlap_predicted, r.overlap_measured, r.overlap_se)
        if r.regime == "outlier"
        else "not applicable"
        for r in spiked.itertuples()
    ]
    assert list(overlap.verdict) == expected
    sweep = pd.read_csv(toy_run / "bbp_sweep.csv")
    expected = [
        _z_rule(r.predicted_mean, r.measured_mean, r.measured_se) for r in sweep.itertuples()
    ]
    assert list(summary[summary.check == "bbp-sweep"].verdict) == expected
    # Weyl: every one of the 6 draws per grid point within ||W||_2 (weyl.csv says so above)
    assert list(summary[summary.check == "weyl"].verdict) == ["agrees (all 6 draws)"] * 4
    weyl = pd.read_csv(toy_run / "weyl.csv")
    eq7 = summary[summary.check == "weyl-eq7"]
    groups = [weyl.P, weyl.spikes]  # spikes "" (none) reads back as NaN: keep its group
    failed = (~weyl.paper_holds).groupby(groups, sort=False, dropna=False).sum().tolist()
    assert list(eq7.verdict) == [
        "agrees (all 6 draws)" if k == 0 else f"disagrees ({k} of 6 draws exceed eq. 7 (s^2))"
        for k in failed
    ]
    # free convolution: W1 against 4 x the two-draw distance
    (free,) = pd.read_csv(toy_run / "free_convolution.csv").itertuples()
    (row,) = summary[summary.check == "free-convolution"].itertuples()
    assert row.measured == free.measured and row.uncertainty == free.uncertainty
    assert row.verdict == ("agrees" if free.measured <= 4.0 * free.uncertainty else "disagrees")
    # the run's message and results.json count the theorem2 verdicts
    counts = json.loads((toy_run / "results.json").read_text())["verdicts"]
    assert counts == theorem2.verdict.value_counts().to_dict()


def test_band_method_runs_the_same_grid(tmp_path):
    out = tmp_path / "band"
    assert main([*TOY, "--method", "band", "--out", str(out)]) == 0
    table = pd.read_csv(out / "extremes.csv")
    assert (table.method == "band").all() and len(table) == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--P", "0"], "P must be an integer >= 1"),
        (["--P", "2.5"], "expected an integer"),
        (["--t", "-1"], "--t must lie in [1e-100, 1e+100]"),
        (["--t", "nan"], "finite number"),
        (["--spikes", "1,inf"], "comma-separated finite numbers"),
        (["--P", "3", "--spikes", "1,2,3,4", "--histogram-P", "20"], "rank 4 exceeds"),
        (["--method", "qr"], "unknown method 'qr'; accepted: dense, band"),
        (["--method", "dense", "--P", "5000"], "--method dense supports P <= 4,000"),
        (["--trials", "1"], "--trials must be >= 2"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["synthetic", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_reports_bad_input_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "validation",
            "synthetic",
            "--t",
            "-2",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sigma2", "1", "--N", "100", "--B", "200"], "--B must be between 1 and N = 100"),
        (["--sigma2", "1", "--N", "100", "--B", "0"], "--B must be between 1 and N"),
        (["--sigma2", "-1", "--N", "100", "--B", "10"], "--sigma2 must be a finite number >= 0"),
        (["--sigma2", "1", "--N", "100"], "missing --B"),
        (["--sigma2", "1", "--N", "100", "--B", "10", "--factor", "x"], "accepted: paper, exact"),
    ],
)
def test_paper_parametrisation_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["synthetic", *args, "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_paper_parametrisation_sets_t_per_dimension(tmp_path):
    out = tmp_path / "paper"
    # f = (100 - 10) / (10 * 100) = 0.09, sigma^2 = 1 / (0.09 * 100): t = P / 100
    args = ["--P", "100", "200", "--sigma2", str(1 / 9), "--N", "100", "--B", "10"]
    toy = ["--trials", "3", "--sweep-points", "0", "--histogram-P", "50", "--quiet"]
    assert main(["synthetic", *args, *toy, "--method", "dense", "--out", str(out)]) == 0
    table = pd.read_csv(out / "extremes.csv")
    assert sorted(set(zip(table.P, table.t.round(12), strict=True))) == [(100, 1.0), (200, 2.0)]


def test_tiny_histogram_dimension_whose_eigenvalues_leave_the_support(tmp_path):
    # at P = 10 sampled eigenvalues fall outside the limiting support; the W1 grid must cover them
    out = tmp_path / "tiny"
    args = ["synthetic", "--P", "10", "--trials", "2", "--method", "dense"]
    args += ["--sweep-points", "0", "--histogram-P", "10", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert (out / "free_convolution.csv").exists()
