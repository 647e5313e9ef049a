"""The report builder and the tidy tables: sections, embedded figures, well-formed self-contained
HTML, escaping, and the paper's tidy rows against values computed by hand."""

import base64
import json
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from reports import report, tables
from reports.schema import TIDY_COLUMNS
from reports.tables import RunFolderError, load_run, load_runs, markdown_table
from tests.helpers import write_fake_network
from validation.cli import main

TOY_SYNTHETIC = [
    "synthetic", "--P", "60", "--spikes", "3,0.4,-2", "--trials", "6", "--sweep-points", "3",
    "--histogram-P", "60", "--method", "dense", "--quiet",
]  # fmt: skip
HOSTILE_MODEL = "<script>alert('x')</script> & <b>co</b>"


# -------------------------------------------------------------------------------------------
# fixtures: a toy synthetic run, the paper run, and two FAKE network folders (test fixtures that
# follow the network spec: results.json, summary.csv, ritz.csv, density.csv, sigma2.csv,
# sweep.csv and four PNGs)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-inputs")
    assert main([*TOY_SYNTHETIC, "--out", str(root / "synthetic")]) == 0
    assert main(["paper", "--out", str(root / "paper")]) == 0
    write_fake_network(root / "epoch_010", epoch=10, sigma2=0.5, model=HOSTILE_MODEL)
    write_fake_network(
        root / "epoch_200", epoch=200, sigma2=0.25, omit=("density.png", "sweep.csv")
    )
    return root


@pytest.fixture(scope="module")
def built(folders, tmp_path_factory):
    from validation.report import build_report

    out = tmp_path_factory.mktemp("report") / "report"
    names = ("synthetic", "paper", "epoch_010", "epoch_200")
    path = build_report([folders / n for n in names], out)
    return path


# -------------------------------------------------------------------------------------------
# HTML structure


class _Collector(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.headings, self.images, self.urls = [], [], [], [], []
        self.tags = set()
        self._heading = None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        for name in ("src", "href", "action", "data", "poster"):
            if name in attrs:
                self.urls.append(attrs[name])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag in ("h1", "h2", "h3", "h4"):
            self._heading = [tag, ""]

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if self._heading and self._heading[0] == tag:
            self.headings.append(tuple(self._heading))
            self._heading = None

    def handle_data(self, data):
        if self._heading:
            self._heading[1] += data


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    parser.close()
    return parser


def test_report_has_every_section_and_subsection(built):
    parsed = _parse(built.read_text(encoding="utf-8"))
    h2 = [text for tag, text in parsed.headings if tag == "h2"]
    assert h2 == [title for _, title in report.SECTIONS]
    lower = {text for tag, text in parsed.headings if tag in ("h3", "h4")}
    for heading in (
        "BBP transition",
        "Spectrum against the semicircle and the free convolution",
        "Weyl bounds",
        "Extreme eigenvalues: Theorem 2 outliers, Tracy-Widom edge",
        "Ritz values full data vs batch",
        "Predicted vs measured batch density",
        "Noise spectrum vs semicircle",
        "Batch-size sweep",
        "sigma^2 estimates",
    ):
        assert heading in lower, heading


def test_html_is_well_formed_and_self_contained(built):
    text = built.read_text(encoding="utf-8")
    parsed = _parse(text)
    assert parsed.errors == [] and parsed.stack == []
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe", "object", "embed"} & parsed.tags
    # every reference is an embedded image or an anchor inside the page
    for url in parsed.urls:
        assert url.startswith("data:image/png;base64,") or url.startswith("#"), url[:40]
    assert "Content-Security-Policy" in text


def test_figures_are_embedded_pngs(built):
    images = _parse(built.read_text(encoding="utf-8")).images
    # 3 synthetic + 4 network (epoch 10) + 3 network (epoch 200, density.png omitted) + sigma^2
    assert len(images) == 11
    for src in images:
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_text_is_escaped(built):
    text = built.read_text(encoding="utf-8")
    assert "<script" not in text and "<b>co</b>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in text
    markdown = (built.parent / "report.md").read_text(encoding="utf-8")
    # Markdown passes raw HTML through, except inside fenced code blocks (the provenance JSON)
    prose = "".join(markdown.split("```")[::2])
    assert "<script" not in prose and "&lt;script>" in prose


def test_network_verdicts_on_assumption3_and_growth_law(built):
    text = built.read_text(encoding="utf-8")
    network = text[text.index('id="network"') : text.index('id="sigma2-epochs"')]
    assert network.count("assumption 3 violated at B=32: edges 1.5x.") == 2
    assert "lambda_max(B) growth: saturates toward the outlier (log-log slope" in network


def test_missing_optional_files_are_named_not_fatal(built):
    text = built.read_text(encoding="utf-8")
    assert "density.png: listed in its results.json but missing" in text
    assert "sweep.csv: listed in its results.json but missing" in text


def test_summary_first_with_counts_and_disagreements(built, folders):
    text = built.read_text(encoding="utf-8")
    summary = pd.read_csv(built.parent / "summary.csv")
    assert list(summary.columns) == list(TIDY_COLUMNS)
    # the stored rows of every input, in order, relabelled: the report decides nothing
    stored = []
    for name, source in (
        ("synthetic", "synthetic"),
        ("paper", "paper"),
        ("epoch_010", "network: epoch_010"),
        ("epoch_200", "network: epoch_200"),
    ):
        rows = pd.read_csv(folders / name / "summary.csv").assign(source=source)
        stored.append(rows)
    pd.testing.assert_frame_equal(summary, pd.concat(stored, ignore_index=True))
    # the summary section precedes all others
    assert text.index('id="summary"') < min(
        text.index(f'id="{key}"') for key, _ in report.SECTIONS[1:]
    )
    n_disagree = int((summary["verdict"].map(tables.verdict_word) == "disagrees").sum())
    # the fake network's noise-edge row (one per network run) and the PreResNet row are there
    assert n_disagree >= 3
    summary_html = text[text.index('id="summary"') : text.index('id="paper"')]
    assert "assumption 3 violated by 50%" in summary_html
    assert "inside the edge" in summary_html


def test_markdown_twin_has_sections_and_figure_files(built):
    markdown = (built.parent / "report.md").read_text(encoding="utf-8")
    for _, title in report.SECTIONS:
        assert f"\n## {title}\n" in markdown
    linked = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if "![" in line]
    assert len(linked) == 11
    for name in linked:
        assert (built.parent / name).read_bytes().startswith(b"\x89PNG")
    assert "http://" not in markdown and "https://" not in markdown


def test_sigma2_over_epochs_from_results_json(folders):
    runs = load_runs([folders / "epoch_200", folders / "epoch_010"])
    frame = report.sigma2_epochs_table(runs)
    assert list(frame["epoch"]) == [10, 200]
    assert list(frame["value"]) == [0.5, 0.25]
    assert frame["ci_high"].tolist() == pytest.approx([0.55, 0.275])
    one = report.build(load_runs([folders / "epoch_010"]))
    assert "Needs network runs at two or more epochs" in one.html
    assert "figure-sigma2_over_epochs.png" not in one.figures


# -------------------------------------------------------------------------------------------
# tidy conversion against hand-computed values


def test_paper_tidy_rows_by_hand(folders):
    rows = tables.tidy(load_run(folders / "paper"))
    assert list(rows.columns) == list(TIDY_COLUMNS)
    vgg = rows[rows["quantity"].str.contains("VGG16")].set_index("check")
    P, N, B, lam, printed, measured = 15_291_300, 50_000, 128, 10.35, 28.19, 36.09
    # outlier branch would need t = lam (printed - lam) = 184.644 with threshold 13.59 > lam:
    # inconsistent; edge branch: 2 sqrt(t) = 28.19 -> t = 14.095^2, threshold 14.095 >= lam.
    assert math.sqrt(lam * (printed - lam)) > lam
    t = (printed / 2) ** 2
    assert t == pytest.approx(198.669025, rel=1e-15)
    assert vgg.loc["theorem2", "predicted"] == pytest.approx(2 * math.sqrt(t), rel=1e-12)
    assert vgg.loc["theorem2", "measured"] == 36.09
    assert vgg.loc["theorem2", "regime"] == "edge"
    assert math.isnan(vgg.loc["theorem2", "uncertainty"])
    # no uncertainty printed and 36.09 is outside the edge 28.19: not applicable, reason kept
    assert vgg.loc["theorem2", "verdict"] == "not applicable"
    assert "measured larger than predicted" in vgg.loc["theorem2", "quantity"]
    # Weyl envelope 2 sqrt(t) = 28.19 holds the shift |36.09 - 10.35| = 25.74
    assert vgg.loc["weyl", "predicted"] == pytest.approx(28.19, rel=1e-12)
    assert vgg.loc["weyl", "measured"] == pytest.approx(25.74, rel=1e-12)
    assert vgg.loc["weyl", "verdict"].startswith("agrees")
    # eq. 7 as printed: t / P = 1.2992e-5, far below 25.74
    assert vgg.loc["weyl-eq7", "predicted"] == pytest.approx(198.669025 / 15_291_300, rel=1e-12)
    assert vgg.loc["weyl-eq7", "verdict"].startswith("disagrees")
    # sigma^2 = t / (P (N - B) / (B N)); the measurement (> 2 lam: edge) needs t = 18.045^2
    f = (N - B) / (B * N)
    assert vgg.loc["sigma2", "predicted"] == pytest.approx(t / (P * f), rel=1e-12)
    assert vgg.loc["sigma2", "measured"] == pytest.approx((measured / 2) ** 2 / (P * f), rel=1e-12)

    resnet = rows[rows["quantity"].str.contains("PreResNet")].set_index("check")
    # outlier branch: t = 13.38 * (24.41 - 13.38) = 147.5814, threshold 12.148 < 13.38
    t = 13.38 * (24.41 - 13.38)
    assert math.sqrt(t) < 13.38
    assert resnet.loc["theorem2", "predicted"] == pytest.approx(13.38 + t / 13.38, rel=1e-12)
    assert resnet.loc["theorem2", "regime"] == "outlier"
    # the measured 20.78 lies inside the edge 2 sqrt(147.5814) = 24.297: Theorem 2 is violated
    assert 20.78 < 2 * math.sqrt(t)
    assert resnet.loc["theorem2", "verdict"].startswith("disagrees (inside the edge")
    assert resnet.loc["weyl", "predicted"] == pytest.approx(2 * math.sqrt(t), rel=1e-12)


def test_synthetic_tidy_rows_are_the_stored_rows(folders):
    rows = tables.tidy(load_run(folders / "synthetic"))
    stored = pd.read_csv(folders / "synthetic" / "summary.csv")
    pd.testing.assert_frame_equal(rows, tables.tidy_frame(stored.to_dict(orient="records")))
    assert set(rows["check"]) == {
        "theorem2", "overlap", "bbp-sweep", "weyl", "weyl-eq7", "free-convolution",
    }  # fmt: skip
    # the theorem2 rows carry the raw table's numbers
    extremes = pd.read_csv(folders / "synthetic" / "extremes.csv")
    theorem2 = rows[rows["check"] == "theorem2"]
    np.testing.assert_array_equal(theorem2["predicted"], extremes["predicted_mean"])
    np.testing.assert_array_equal(theorem2["measured"], extremes["measured_mean"])


def test_the_report_recomputes_no_verdict(folders, tmp_path):
    # a stored verdict the numbers would not give is reported as stored
    import shutil

    copy = shutil.copytree(folders / "synthetic", tmp_path / "synthetic")
    stored = pd.read_csv(copy / "summary.csv")
    stored["verdict"] = "disagrees (edited by hand)"
    stored.to_csv(copy / "summary.csv", index=False)
    # edited by hand with its hash recorded, so the folder is consistent (see test_result_folders)
    results = json.loads((copy / "results.json").read_text())
    results["files"]["summary.csv"] = tables.file_sha256(copy / "summary.csv")
    (copy / "results.json").write_text(json.dumps(results))
    rows = tables.tidy(load_run(copy))
    assert set(rows["verdict"]) == {"disagrees (edited by hand)"}


def test_a_run_without_summary_csv_says_rerun(folders, tmp_path):
    import shutil

    for kind in ("synthetic", "paper"):
        copy = shutil.copytree(folders / kind, tmp_path / kind)
        (copy / "summary.csv").unlink()
        with pytest.raises(RunFolderError) as info:
            tables.tidy(load_run(copy))
        message = str(info.value)
        assert str(copy / "summary.csv") in message and "\n" not in message
        assert f"rerun python -m validation {kind}" in message


def test_network_summary_is_read_and_relabelled(tmp_path):
    folder = write_fake_network(tmp_path / "net", epoch=None, sigma2=1.0)
    rows = tables.tidy(load_run(folder))
    assert set(rows["source"]) == {"network: net"}
    assert rows.set_index("check").loc["noise-edge", "measured"] == 4.5
    bad = pd.read_csv(folder / "summary.csv")
    bad.loc[0, "verdict"] = "fine"
    bad.to_csv(folder / "summary.csv", index=False)
    with pytest.raises(RunFolderError, match="unknown verdicts"):
        tables.tidy(load_run(folder))


def test_verdict_counts_by_hand():
    frame = tables.tidy_frame(
        [
            {"source": "a", "check": "x", "verdict": "agrees"},
            {"source": "a", "check": "x", "verdict": "disagrees (by a lot)"},
            {"source": "a", "check": "y", "verdict": "not applicable"},
            {"source": "b", "check": "x", "verdict": "agrees"},
        ]
    )
    counts = tables.verdict_counts(frame)
    assert counts.values.tolist() == [
        ["a", "x", 1, 1, 0, 2],
        ["a", "y", 0, 0, 1, 1],
        ["b", "x", 1, 0, 0, 1],
    ]
    assert tables.disagreements(frame)["verdict"].tolist() == ["disagrees (by a lot)"]
    with pytest.raises(ValueError, match="unknown verdicts"):
        tables.tidy_frame([{"verdict": "maybe"}])


def test_markdown_table_escapes_and_formats():
    frame = pd.DataFrame(
        {"name": ["a|b", "<i>x</i>"], "P": [15_291_300, 3], "value": [0.000123456, float("nan")]}
    )
    assert markdown_table(frame) == (
        "| name | P | value |\n"
        "| --- | ---: | ---: |\n"
        "| a\\|b | 15,291,300 | 0.0001235 |\n"
        "| &lt;i>x&lt;/i> | 3 | n/a |\n"
    )
    assert tables.csv_text(frame).splitlines()[0] == "name,P,value"


def test_html_table_cells_marked_by_verdict():
    frame = tables.tidy_frame(
        [{"source": "s", "check": "c", "quantity": "q", "predicted": 1.0, "measured": 2.0,
          "uncertainty": 0.1, "regime": "edge", "verdict": "disagrees (far)"}]
    )  # fmt: skip
    html = report.render_html([report.Table(frame, caption="t", verdict_column="verdict")])
    assert '<td class="disagrees">disagrees (far)</td>' in html
    assert '<td class="num">2</td>' in html


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such result folder"),
        (lambda p: p.mkdir(), "no results.json"),
        (lambda p: (p.mkdir(), (p / "results.json").write_text("{oops")), "corrupt JSON"),
        (lambda p: (p.mkdir(), (p / "results.json").write_text("[1]")), "expected a JSON object"),
        (
            lambda p: (p.mkdir(), (p / "results.json").write_text('{"kind": "train"}')),
            "unknown kind 'train'",
        ),
    ],
)
def test_load_run_rejects_bad_folders(tmp_path, setup, message):
    folder = tmp_path / "run"
    setup(folder)
    with pytest.raises(RunFolderError, match=message):
        load_run(folder)


def test_duplicate_folder_names_get_distinct_labels(tmp_path):
    a = write_fake_network(tmp_path / "a" / "network", epoch=1, sigma2=1.0)
    b = write_fake_network(tmp_path / "b" / "network", epoch=2, sigma2=1.0)
    assert [r.label for r in load_runs([a, b])] == ["network: a/network", "network: b/network"]


def test_figure_names_stay_distinct_when_labels_slug_alike(tmp_path):
    a = write_fake_network(tmp_path / "x y", epoch=1, sigma2=1.0)
    b = write_fake_network(tmp_path / "x_y", epoch=2, sigma2=1.0)
    built = report.build(load_runs([a, b]))
    # 4 figures per run plus sigma^2 over epochs, each its own file, each linked once
    assert len(built.figures) == 9
    for name in built.figures:
        assert built.markdown.count(f"]({name})") == 1


def test_an_epoch_sweep_folder_stands_for_its_epoch_folders(tmp_path):
    sweep = tmp_path / "sweep"
    for epoch, sigma2 in ((200, 2.0e-3), (10, 5.0e-3)):
        write_fake_network(sweep / f"epoch_{epoch:04d}", epoch=epoch, sigma2=sigma2)
    (sweep / "results.json").write_text(
        json.dumps(
            {
                "kind": "network-epochs",
                "folders": {"200": "epoch_0200", "10": "epoch_0010"},
                "files": ["results.json"],
            }
        )
    )
    runs = load_runs([sweep])
    assert [r.folder.name for r in runs] == ["epoch_0010", "epoch_0200"]  # by epoch
    assert {r.kind for r in runs} == {"network"}
    (sweep / "results.json").write_text(json.dumps({"kind": "network-epochs", "folders": {}}))
    with pytest.raises(RunFolderError, match="epoch sweep without folders"):
        load_runs([sweep])
