"""``python -m validation paper``: the paper's numbers against values computed by hand."""

import json

import pandas as pd
import pytest

from reports.schema import TIDY_COLUMNS
from validation.cli import main
from validation.paper import PAPER_ROWS, PaperRow, noise_scale_for, paper_table


def test_paper_rows_by_hand():
    table = paper_table(PAPER_ROWS).set_index("name")
    vgg, resnet = table.loc["VGG16, epoch 200"], table.loc["PreResNet-110"]
    # VGG16: 10.35 + t / 10.35 = 28.19 needs t = 10.35 * 17.84 = 184.644, whose threshold
    # sqrt(184.644) = 13.59 exceeds 10.35: the outlier branch is inconsistent; the edge branch
    # 2 sqrt(t) = 28.19 gives t = 14.095^2 = 198.669025 with 10.35 below its threshold 14.095.
    assert vgg.t_if_outlier_branch == pytest.approx(184.644, rel=1e-12)
    assert not vgg.outlier_branch_consistent and vgg.edge_branch_consistent
    assert vgg.implied_t == pytest.approx(198.669025, rel=1e-12)
    assert vgg.regime == "edge" and vgg.predicted == pytest.approx(28.19, rel=1e-12)
    # sigma^2 = t / (P (N - B) / (B N)) = 198.669025 / (15,291,300 * 49,872 / 6,400,000)
    assert vgg.implied_sigma2 == pytest.approx(198.669025 / (15_291_300 * 49_872 / 6_400_000))
    # 36.09 > 2 * 10.35: edge branch, t = 18.045^2 = 325.622025; ratio 325.622025 / 198.669025
    assert vgg.t_to_match_measured == pytest.approx(325.622025, rel=1e-12)
    assert vgg.sigma2_ratio_to_match == pytest.approx(325.622025 / 198.669025, rel=1e-12)
    # no uncertainty printed and 36.09 outside the edge 28.19: no verdict, the side kept
    assert vgg.verdict == "not applicable" and vgg["flags"] == "none"
    assert vgg.measured_vs_predicted == "larger"
    # PreResNet-110: outlier branch t = 13.38 * 11.03 = 147.5814, threshold 12.148 < 13.38.
    assert resnet.implied_t == pytest.approx(147.5814, rel=1e-12)
    assert resnet.regime == "outlier"
    assert resnet.overlap == pytest.approx(1 - 147.5814 / 13.38**2, rel=1e-12)
    # the edge 2 sqrt(147.5814) = 24.2966 lies above the measured 20.78: Theorem 2 is violated;
    # matching needs t = 13.38 * (20.78 - 13.38) = 99.012, i.e. sigma^2 x 0.6709.
    assert resnet.edge == pytest.approx(2 * 147.5814**0.5, rel=1e-12)
    assert resnet["flags"] == "measured below the edge"
    assert resnet.verdict == "disagrees (inside the edge: |measured| 20.78 < 2 sqrt(t) = 24.3)"
    assert resnet.measured_vs_predicted == "smaller"
    assert resnet.sigma2_ratio_to_match == pytest.approx(99.012 / 147.5814, rel=1e-12)
    # eq. 7 read as printed is s^2 = t / P, far below the measured shifts
    assert not vgg.measured_within_eq7 and vgg.eq7_bound == pytest.approx(198.669025 / 15_291_300)


def test_inverting_theorem2_round_trips():
    for lam, value in ((2.0, 2.5), (2.0, 4.0), (2.0, 7.0), (-3.0, -6.5), (-3.0, -3.1)):
        t, branch = noise_scale_for(lam, value)
        if branch == "outlier":
            assert lam + t / lam == pytest.approx(value, rel=1e-12)
            assert abs(lam) > t**0.5
        else:
            assert 2 * t**0.5 == pytest.approx(abs(value), rel=1e-12)
            assert abs(lam) <= t**0.5 * (1 + 1e-12)
    assert noise_scale_for(2.0, 1.5)[1] == "none"
    assert noise_scale_for(2.0, -3.0)[1] == "none"


def test_user_rows_csv_in_csv_out(tmp_path):
    rows = tmp_path / "rows.csv"
    pd.DataFrame(
        [{"name": "mine", "P": 1000, "N": 100, "B": 10, "lambda_full": -3.0,
          "predicted_printed": -3.5, "measured": -2.0}]
    ).to_csv(rows, index=False)  # fmt: skip
    out = tmp_path / "out"
    assert main(["paper", "--rows", str(rows), "--factor", "exact", "--out", str(out)]) == 0
    table = pd.read_csv(out / "paper_table.csv")
    assert table.loc[0, "implied_t"] == pytest.approx(-3.0 * (-0.5))
    assert table.loc[0, "factor"] == "exact"
    assert "measured below lambda" in table.loc[0, "flags"]
    # t = 1.5: the edge 2 sqrt(1.5) = 2.449 lies beyond |-2|, and |-2| < |lambda| = 3
    verdict = (
        "disagrees (inside the edge: |measured| 2 < 2 sqrt(t) = 2.449; "
        "below the full-data value: no sigma^2 >= 0 reproduces it)"
    )
    assert table.loc[0, "verdict"] == verdict
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["config"]["factor"] == "exact"
    summary = pd.read_csv(out / "summary.csv").set_index("check")
    assert list(summary.index) == ["theorem2", "weyl", "weyl-eq7", "sigma2"]
    assert summary.loc["theorem2", "verdict"] == verdict
    # |-2 - (-3)| = 1 within 2 sqrt(1.5) = 2.449; beyond t / P = 0.0015
    assert summary.loc["weyl", "verdict"] == "agrees (within the Weyl envelope 2 sqrt(t))"
    assert summary.loc["weyl-eq7", "verdict"] == "disagrees (shift exceeds eq. 7 (t / P))"
    assert summary.loc["sigma2", "verdict"] == "not applicable"
    assert "summary.csv" in results["files"]


def test_paper_summary_rows_by_hand(tmp_path):
    out = tmp_path / "paper"
    assert main(["paper", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == list(TIDY_COLUMNS) and set(summary.source) == {"paper"}
    assert list(summary.check) == ["theorem2", "weyl", "weyl-eq7", "sigma2"] * 2
    assert list(summary.verdict) == [
        # VGG16: 36.09 beyond the edge 28.19; |36.09 - 10.35| = 25.74 <= 28.19; >> t / P
        "not applicable",
        "agrees (within the Weyl envelope 2 sqrt(t))",
        "disagrees (shift exceeds eq. 7 (t / P))",
        "not applicable",
        # PreResNet-110: 20.78 inside 2 sqrt(147.5814) = 24.30; |20.78 - 13.38| = 7.4 <= 24.30
        "disagrees (inside the edge: |measured| 20.78 < 2 sqrt(t) = 24.3)",
        "agrees (within the Weyl envelope 2 sqrt(t))",
        "disagrees (shift exceeds eq. 7 (t / P))",
        "not applicable",
    ]
    assert summary.quantity[0] == (
        "batch lambda_max, VGG16, epoch 200, B=128 "
        "[no uncertainty printed; measured larger than predicted]"
    )
    assert summary.quantity[3].endswith(f"[x{325.622025 / 198.669025:.3g} to match]")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,P,N\nx,1,2\n", "missing columns B, lambda_full"),
        ("name,P,N,B,lambda_full,predicted_printed,measured\nx,10,100,200,1,2,3\n", "exceeds N"),
        ("name,P,N,B,lambda_full,predicted_printed,measured\nx,10,100,0,1,2,3\n", "B must be"),
        ("name,P,N,B,lambda_full,predicted_printed,measured\nx,10,100,5,nan,2,3\n", "finite"),
        ("name,P,N,B,lambda_full,predicted_printed,measured\nx,1.5,100,5,1,2,3\n", "P must be"),
        ("name,P,N,B,lambda_full,predicted_printed,measured\n", "no rows"),
    ],
)
def test_bad_rows_exit_2_nothing_written(tmp_path, capsys, content, message):
    rows = tmp_path / "rows.csv"
    rows.write_text(content)
    out = tmp_path / "out"
    assert main(["paper", "--rows", str(rows), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_rows_file(tmp_path, capsys):
    assert main(["paper", "--rows", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_paper_row_is_frozen():
    with pytest.raises(AttributeError):
        PaperRow("x", 1, 2, 1, 1.0, 2.0, 3.0).P = 3
