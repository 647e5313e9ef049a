"""The report: one self-contained HTML file and a Markdown twin, built from result folders.

Content is assembled once as a list of blocks (headings, paragraphs, tables, figures, notes,
preformatted text) and rendered twice:

* HTML: every figure embedded as a base64 PNG data URI, styles inline in the head, no script, no
  external resource (a Content-Security-Policy meta tag forbids fetching any); every piece of text
  goes through ``html.escape``.
* Markdown: the same sections; figures are referenced by file name (``Report.figures`` holds the
  PNG bytes to write beside it), tables are hand-written (``reports.tables.markdown_table``).

Sections, always present in this order (a section without input says so):

1. Summary of verdicts: counts per source and check, then every disagreement.
2. The paper's table re-derived (``paper`` runs).
3. Synthetic checks (``synthetic`` runs): BBP transition, spectrum vs semicircle and free
   convolution, Weyl bounds, extreme eigenvalues (Theorem 2 outliers and the Tracy-Widom edge).
4. Network spectra (``network`` runs): Ritz values full vs batch, predicted vs measured batch
   density, noise spectrum vs semicircle, batch-size sweep, sigma^2 estimates.
5. Which model explains the batch spectrum (network runs with several batch draws): the measured
   lambda_max(H_B) over batches against the models M0-M4 (``batch_models.csv``), the per-sample
   curvature behind them, and one sentence per model (stored by the run in ``results.json``).
6. sigma^2 over epochs: drawn here from the ``sigma2`` values of network runs at two or more
   epochs.
7. Provenance of every run: configuration, versions, git commit, device, times.

A file a run should have written but did not is named in a note; the report does not fail on it.
The verdicts are those each run stored with its tidy rows (``summary.csv``, read by
``reports.tables.tidy``); the report recomputes none. Its tables of raw data (extremes, sweep,
Weyl, the paper's table) come from the runs' other CSV files.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import re

import numpy as np
import pandas as pd

from reports import tables
from reports.blocks import (  # noqa: F401 - the block types are part of this module's API
    PNG_SIGNATURE,
    SECTIONS,
    TITLE,
    Heading,
    Image,
    Note,
    Paragraph,
    Preformatted,
    Report,
    Table,
)
from reports.render import render_html, render_markdown  # noqa: F401 - re-exported
from reports.tables import Run, RunFolderError

TIDY_HEADERS = list(tables.TIDY_COLUMNS)


# ---------------------------------------------------------------------------------------------
# building


def build(runs: list[Run], *, title: str = TITLE, created: _dt.datetime | None = None) -> Report:
    """The report of ``runs`` (``reports.tables.load_runs``). A file whose content the report
    cannot use (a column missing, a value of the wrong type) raises ``RunFolderError`` naming
    the file last read (one line), never a traceback."""
    try:
        return _build(runs, title=title, created=created)
    except RunFolderError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        path = tables.last_read(runs)
        where = str(path) if path is not None else "results.json of the input folders"
        detail = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise RunFolderError(
            f"{where}: content the report cannot use ({detail[:160]}); rerun that run"
        ) from None


def _build(runs: list[Run], *, title: str, created: _dt.datetime | None) -> Report:
    created = created or _dt.datetime.now(_dt.UTC)
    summary = tables.combined(runs)
    blocks: list = [
        Paragraph(
            f"Built {created.astimezone(_dt.UTC).isoformat(timespec='seconds')} from "
            f"{len(runs)} result folder{'s' if len(runs) != 1 else ''}. Each comparison of "
            "theory with measurement is one row: predicted, measured, one standard error where "
            "the measurement has one, the regime of the theory that applies, and a verdict "
            "(agrees within the run's z threshold / disagrees / not applicable; words after "
            "the verdict, or in brackets after the quantity, say why)."
        ),
    ]
    blocks += _summary_section(summary)
    blocks += _paper_section([r for r in runs if r.kind == "paper"])
    blocks += _synthetic_section([r for r in runs if r.kind == "synthetic"])
    networks = [r for r in runs if r.kind == "network"]
    blocks += _network_section(networks)
    blocks += _batch_models_section(networks)
    blocks += _sigma2_section(networks)
    blocks += _stability_section([r for r in runs if r.kind == "stability"])
    blocks += _provenance_section(runs)
    figures = {}
    for i, block in enumerate(blocks):
        if isinstance(block, Image):
            name, n = block.name, 1
            while name in figures:  # two labels with the same file-name slug
                n += 1
                name = block.name.removesuffix(".png") + f"-{n}.png"
            blocks[i] = Image(name, block.png, block.caption)
            figures[name] = block.png
    return Report(
        html=render_html(blocks, title=title),
        markdown=render_markdown(blocks, title=title),
        summary=summary,
        figures=figures,
    )


def _section(key: str) -> Heading:
    return Heading(2, dict(SECTIONS)[key], anchor=key)


def _summary_section(summary: pd.DataFrame) -> list:
    blocks = [_section("summary")]
    if summary.empty:
        return blocks + [Note("No comparisons: the inputs hold no tables with verdicts.")]
    words = summary["verdict"].map(tables.verdict_word).value_counts()
    blocks.append(
        Paragraph(
            f"{len(summary)} comparisons: "
            + ", ".join(f"{int(words.get(v, 0))} {v}" for v in tables.VERDICTS)
            + "."
        )
    )
    blocks.append(Table(tables.verdict_counts(summary), caption="Verdicts per source and check"))
    bad = tables.disagreements(summary)
    if bad.empty:
        blocks.append(Paragraph("No disagreements."))
    else:
        blocks.append(Table(bad, caption="Disagreements", verdict_column="verdict"))
    return blocks


def _paper_section(runs: list[Run]) -> list:
    blocks = [_section("paper")]
    if not runs:
        return blocks + [Note("No paper run among the inputs (python -m validation paper)")]
    blocks.append(
        Paragraph(
            "Theorem 2 re-derived from the paper's printed inputs: the printed prediction fixes "
            "the noise scale t = P (N - B)/(B N) sigma^2 on the branch whose own condition holds "
            "(outlier: |lambda| > sqrt(t), prediction lambda + t/lambda; edge: 2 sqrt(t)). The "
            "paper prints no uncertainty, so no z-type verdict is possible; the theorem's own "
            "inequalities are applied strictly instead (a measurement inside the edge 2 sqrt(t) "
            "disagrees with Theorem 2 whatever the noise)."
        )
    )
    inputs = [
        "name", "P", "N", "B", "lambda_full", "predicted_printed", "measured", "implied_t",
        "implied_sigma2", "threshold", "regime", "predicted", "edge", "overlap",
    ]  # fmt: skip
    checks = [
        "name", "t_if_outlier_branch", "outlier_branch_consistent", "t_if_edge_branch",
        "edge_branch_consistent", "weyl_envelope_low", "weyl_envelope_high",
        "measured_in_weyl_envelope", "eq7_bound", "measured_within_eq7", "t_to_match_measured",
        "branch_to_match_measured", "sigma2_ratio_to_match", "verdict", "flags",
    ]  # fmt: skip
    for run in runs:
        if len(runs) > 1:
            blocks.append(Heading(3, run.label))
        table = run.table("paper_table.csv")
        if table is None:
            blocks.append(_missing_note(run, "paper_table.csv"))
            continue
        blocks.append(Table(_columns(table, inputs), caption="Inputs and Theorem 2's prediction"))
        blocks.append(
            Table(_columns(table, checks), caption="The theorem's conditions, strictly applied")
        )
        blocks.append(_tidy_table(run, caption="Comparisons (tidy rows)"))
    return blocks


def _synthetic_section(runs: list[Run]) -> list:
    blocks = [_section("synthetic")]
    if not runs:
        return blocks + [Note("No synthetic run among the inputs (python -m validation synthetic)")]
    for run in runs:
        if len(runs) > 1:
            blocks.append(Heading(3, run.label))
        config = run.config
        blocks.append(
            Paragraph(
                f"Low rank + GOE of noise scale t, method {config.get('method', '?')}, "
                f"{config.get('trials', '?')} draws per configuration, seed "
                f"{config.get('seed', '?')}; verdict 'agrees' when |z| <= "
                f"{tables.z_crit_of(run):g} standard errors."
            )
        )
        level = 4 if len(runs) > 1 else 3
        for part in (_bbp_blocks, _spectrum_blocks, _weyl_blocks, _extremes_blocks):
            blocks += part(run, level)
        blocks.append(_tidy_table(run, caption="Comparisons (tidy rows)"))
    return blocks


def _bbp_blocks(run: Run, level: int) -> list:
    """The BBP transition: figure and sweep table."""
    blocks = []
    blocks.append(Heading(level, "BBP transition"))
    blocks += _figure(
        run,
        "bbp_transition.png",
        "Largest eigenvalue against the spike size across the BBP threshold sqrt(t); "
        "Theorem 2 in red, Monte-Carlo mean +- sd in blue.",
    )
    sweep = run.table("bbp_sweep.csv")
    if sweep is None:
        blocks.append(_missing_note(run, "bbp_sweep.csv"))
    else:
        sweep = sweep.assign(spike_over_sqrt_t=sweep["spike"] / np.sqrt(sweep["t"]))
        blocks.append(
            Table(
                _columns(
                    sweep,
                    [
                        "P",
                        "t",
                        "spike",
                        "spike_over_sqrt_t",
                        "regime",
                        "predicted_mean",
                        "measured_mean",
                        "measured_se",
                        "z_score",
                    ],
                ),  # fmt: skip
                caption="Top eigenvalue across the transition (verdicts in the tidy rows below)",
            )
        )
    return blocks


def _spectrum_blocks(run: Run, level: int) -> list:
    """One draw against the semicircle and a bulk against the free convolution."""
    blocks = []
    blocks.append(Heading(level, "Spectrum against the semicircle and the free convolution"))
    blocks += _figure(
        run,
        "spectrum_histogram.png",
        "Left: one draw of low rank + GOE against the semicircle, predicted outliers dashed. "
        "Right: a matrix with a bulk (two atoms) plus GOE against the free additive "
        "convolution with the semicircle.",
    )
    free = run.table("free_convolution.csv")
    if free is None:
        blocks.append(_missing_note(run, "free_convolution.csv"))
    else:
        blocks.append(
            Paragraph(
                "Wasserstein-1 distance between the empirical spectrum and the free "
                "convolution, with the distance between two independent draws as the "
                "Monte-Carlo reference (the 'uncertainty')."
            )
        )
        blocks.append(Table(free, caption="Free convolution"))
    return blocks


def _weyl_blocks(run: Run, level: int) -> list:
    """Both Weyl bounds over the draws."""
    blocks = []
    blocks.append(Heading(level, "Weyl bounds"))
    blocks += _figure(
        run,
        "weyl_slack.png",
        "Per draw: the largest eigenvalue shift against ||W||_2 (Weyl, exact) and against the "
        "paper's eq. 7 expression.",
    )
    weyl = run.results.get("weyl")
    if isinstance(weyl, list) and weyl:
        blocks.append(
            Table(pd.DataFrame(weyl), caption="Fraction of draws within each bound, per grid")
        )
    elif run.table("weyl.csv") is None:
        blocks.append(_missing_note(run, "weyl.csv"))
    return blocks


def _extremes_blocks(run: Run, level: int) -> list:
    """Extreme eigenvalues and eigenvector overlaps against Theorem 2."""
    blocks = []
    blocks.append(Heading(level, "Extreme eigenvalues: Theorem 2 outliers, Tracy-Widom edge"))
    extremes = run.table("extremes.csv")
    if extremes is None:
        blocks.append(_missing_note(run, "extremes.csv"))
    else:
        blocks.append(
            Paragraph(
                "Outliers are compared with theta + t/theta (Gaussian fluctuation); "
                "eigenvalues at the edge with 2 sqrt(t) + sqrt(t) P^(-2/3) E[TW_1] "
                "(Tracy-Widom, beta = 1). 'predicted' is the limit, 'predicted_mean' the "
                "finite-P mean the z-score uses."
            )
        )
        cols = [
            "P", "t", "spikes", "side", "index", "spike", "regime", "predicted",
            "predicted_mean", "predicted_sd", "measured_mean", "measured_sd", "measured_se",
            "z_score",
        ]  # fmt: skip
        for regime, caption in (("outlier", "Outliers"), ("edge", "Tracy-Widom edge")):
            part = extremes[extremes["regime"] == regime]
            if len(part):
                blocks.append(Table(_columns(part, cols), caption=caption))
        overlap = extremes[np.isfinite(extremes["overlap_measured"].astype(float))]
        if len(overlap):
            blocks.append(
                Table(
                    _columns(
                        overlap,
                        [
                            "P",
                            "t",
                            "spikes",
                            "side",
                            "index",
                            "spike",
                            "regime",
                            "overlap_predicted",
                            "overlap_measured",
                            "overlap_se",
                        ],
                    ),  # fmt: skip
                    caption="Squared eigenvector overlaps (1 - t/theta^2 above threshold)",
                )
            )
    return blocks


NETWORK_FIGURES = (
    (
        "ritz_full_vs_batch.png",
        "Ritz values full data vs batch",
        "Lanczos Ritz values weighted by their squared first components, full-data Hessian "
        "against the batch Hessian at the same weights (as the paper's Figures 1-2).",
    ),
    (
        "density.png",
        "Predicted vs measured batch density",
        "Batch spectral density predicted by free convolution of the full-data spectrum with a "
        "semicircle of the measured sigma^2, against the measured batch density.",
    ),
    (
        "noise_spectrum.png",
        "Noise spectrum vs semicircle",
        "Spectrum of the noise matrix H_B - H_emp against the GOE semicircle (assumption 3).",
    ),
    (
        "batch_sweep.png",
        "Batch-size sweep",
        "Predicted and measured lambda_max(B) against the batch size.",
    ),
)


def _network_section(runs: list[Run]) -> list:
    blocks = [_section("network")]
    if not runs:
        return blocks + [Note("No network run among the inputs (python -m validation network)")]
    for run in sorted(runs, key=_epoch_key):
        r = run.results
        blocks.append(Heading(3, run.label))
        blocks.append(
            Paragraph(
                f"Model {r.get('model', '?')} on {r.get('data', '?')}, P = "
                f"{tables.format_value(r.get('P'))}, N = {tables.format_value(r.get('N'))}, "
                f"epoch {r.get('epoch') if r.get('epoch') is not None else 'not recorded'}, "
                f"batch sizes {', '.join(str(b) for b in r.get('batch_sizes') or []) or '?'}."
            )
        )
        for note in r.get("notes") or []:
            blocks.append(Note(str(note)))
        for name, heading, caption in NETWORK_FIGURES:
            blocks.append(Heading(4, heading))
            blocks += _figure(run, name, caption)
            if name == "noise_spectrum.png":
                blocks += _assumption3(r.get("assumption3"))
            if name == "batch_sweep.png":
                law = r.get("sweep_law")
                if isinstance(law, dict) and law.get("law"):
                    slope = law.get("loglog_slope_vs_f")
                    blocks.append(
                        Paragraph(
                            f"lambda_max(B) growth: {law['law']}"
                            + (
                                f" (log-log slope against (N - B)/(B N): {slope:.3g}; edge law "
                                "0.5, saturation toward the outlier 0)."
                                if isinstance(slope, int | float)
                                else "."
                            )
                        )
                    )
                sweep = run.table("sweep.csv")
                if sweep is None:
                    blocks.append(_missing_note(run, "sweep.csv"))
                else:
                    blocks.append(Table(sweep, caption="Batch-size sweep"))
        blocks.append(Heading(4, "sigma^2 estimates"))
        sigma2 = _sigma2_frame(run)
        if sigma2.empty:
            blocks.append(_missing_note(run, "sigma2.csv"))
        else:
            blocks.append(Table(sigma2, caption="sigma^2 (paper, eq. 9) per estimator"))
        blocks.append(Heading(4, "Comparisons"))
        if run.has("summary.csv"):
            blocks.append(_tidy_table(run, caption="Comparisons (tidy rows)"))
        else:
            blocks.append(_missing_note(run, "summary.csv"))
    return blocks


BATCH_MODEL_COLUMNS = [
    "B", "model", "name", "predicted_mean", "measured_mean", "measured_mean_se", "predicted_sd",
    "measured_sd", "predicted_q10", "measured_q10", "predicted_q90", "measured_q90",
    "mean_rel_error", "sd_rel_error",
]  # fmt: skip


def _curvature_paragraph(stored) -> list:
    if not isinstance(stored, dict):
        return [Note("This run stored no per-sample curvature (results.json 'curvature').")]
    q = stored.get("top_ggn_quantiles") or []
    share = stored.get("residual_share")
    text = (
        f"Per-sample curvature over {stored.get('samples')} samples: the top eigenvalue of each "
        f"sample's Gauss-Newton matrix has median {tables.format_value(q[0] if q else None)}, "
        f"99% quantile {tables.format_value(q[-1] if q else None)} and maximum "
        f"{tables.format_value(stored.get('top_ggn_max'))} (H_emp's lambda_max: "
        f"{tables.format_value(stored.get('full_top'))}); Hill tail index "
        f"{tables.format_value(stored.get('hill_alpha'))} (95% interval "
        f"{', '.join(tables.format_value(v) for v in stored.get('hill_interval') or [])})."
    )
    if share is not None:
        text += (
            f" The non-Gauss-Newton part is {tables.format_value(share)} of ||H_B||_2 (dense, "
            "largest B): models built on per-sample GGN pieces cannot see it."
        )
    return [Paragraph(text)]


def _batch_models_section(runs: list[Run]) -> list:
    blocks = [_section("batch-models")]
    runs = [r for r in sorted(runs, key=_epoch_key) if r.has("batch_models.csv")]
    if not runs:
        return blocks + [
            Note("No network run with --batch-draws K >= 2 and --curvature yes among the inputs.")
        ]
    for run in runs:
        blocks.append(Heading(3, run.label))
        blocks += _curvature_paragraph(run.results.get("curvature"))
        for sentence in (run.results.get("batch_model_goal") or {}).values():
            blocks.append(Paragraph(str(sentence)))
        blocks += _figure(
            run,
            "batch_models.png",
            "lambda_max of H_B over random batches (mean and 10-90% band of the draws) against "
            "each model's mean and predicted 10-90% band.",
        )
        table = run.table("batch_models.csv")
        blocks.append(Table(_columns(table, BATCH_MODEL_COLUMNS), caption="Models per batch size"))
    return blocks


def _assumption3(stored) -> list:
    """The network run's verdict on assumption 3 (noise matrix GOE) per batch size."""
    if not isinstance(stored, dict) or not stored:
        return [Note("This run stored no assumption 3 verdict (results.json 'assumption3').")]
    lines = [
        str(v["summary"]) for _, v in sorted(stored.items(), key=lambda kv: _number_key(kv[0]))
        if isinstance(v, dict) and v.get("summary")
    ]  # fmt: skip
    return [Paragraph(line + ".") for line in lines]


def _number_key(text):
    try:
        return (0, float(text), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(text))


def _sigma2_frame(run: Run) -> pd.DataFrame:
    """sigma^2 per estimator: from results.json, else from sigma2.csv."""
    stored = run.results.get("sigma2")
    rows = []
    if isinstance(stored, dict):
        for estimator, v in stored.items():
            if isinstance(v, dict):
                rows.append({"estimator": estimator, **{k: v.get(k) for k in _SIGMA2_FIELDS}})
            else:
                rows.append({"estimator": estimator, "value": v})
    if rows:
        frame = pd.DataFrame(rows, columns=["estimator", *_SIGMA2_FIELDS])
    else:
        frame = run.table("sigma2.csv")
        if frame is None:
            return pd.DataFrame()
    for column in ("value", "ci_low", "ci_high"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


_SIGMA2_FIELDS = ("value", "ci_low", "ci_high", "probes")


def _epoch_key(run: Run):
    epoch = run.results.get("epoch")
    return (epoch is None, epoch if isinstance(epoch, int | float) else 0, run.label)


def sigma2_epochs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per (network run with an epoch, estimator): series, epoch, value, interval."""
    rows = []
    for run in runs:
        epoch = run.results.get("epoch")
        if not isinstance(epoch, int | float) or isinstance(epoch, bool):
            continue
        model = f"{run.results.get('model', '?')} / {run.results.get('data', '?')}"
        for r in _sigma2_frame(run).to_dict(orient="records"):
            rows.append(
                {
                    "series": f"{model}, {r.get('estimator', '?')}",
                    "epoch": epoch,
                    "value": r.get("value"),
                    "ci_low": r.get("ci_low", float("nan")),
                    "ci_high": r.get("ci_high", float("nan")),
                    "source": run.label,
                }
            )
    frame = pd.DataFrame(rows, columns=["series", "epoch", "value", "ci_low", "ci_high", "source"])
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame.sort_values(["series", "epoch"], kind="stable").reset_index(drop=True)


def _sigma2_section(runs: list[Run]) -> list:
    blocks = [_section("sigma2-epochs")]
    frame = sigma2_epochs_table(runs)
    epochs = sorted(set(frame["epoch"]))
    if len(epochs) < 2:
        found = ", ".join(str(e) for e in epochs) or "none"
        return blocks + [
            Note(
                "Needs network runs at two or more epochs (results.json 'epoch'); epochs among "
                f"the inputs: {found}."
            )
        ]
    from reports import figures

    fig, (ax,) = figures.new_figure(width=6.5)
    figures.sigma2_over_epochs(ax, frame)
    blocks.append(
        Image(
            "figure-sigma2_over_epochs.png",
            figure_png(fig),
            "sigma^2 per estimator at each checkpoint, with the interval each run stored.",
        )
    )
    blocks.append(Table(frame, caption="sigma^2 over epochs"))
    return blocks


STABILITY_COLUMNS = ["B", "momentum", "prediction", "predicted", "measured", "measured_se",
                     "rel_error"]  # fmt: skip


def _stability_section(runs: list[Run]) -> list:
    """``validation stability`` runs: the goal sentences, the figure, the table as stored."""
    blocks = [_section("stability")]
    if not runs:
        return blocks + [Note("No run of python -m validation stability among the inputs.")]
    for run in runs:
        blocks.append(Heading(3, run.label))
        for sentence in run.results.get("goal") or []:
            blocks.append(Paragraph(str(sentence)))
        blocks += _figure(
            run,
            "stability.png",
            "eta_max(B) of SGD (median and range over seeds; left plain, right with momentum) "
            "against each prediction; B = N is gradient descent.",
        )
        table = run.table("predictions.csv")
        caption = "Predicted and measured eta_max per batch size"
        blocks.append(Table(_columns(table, STABILITY_COLUMNS), caption=caption))
        blocks.append(_tidy_table(run, caption="Stability rows"))
    return blocks


def _provenance_section(runs: list[Run]) -> list:
    blocks = [_section("provenance")]
    inputs = pd.DataFrame(
        {
            "source": [r.label for r in runs],
            "kind": [r.kind for r in runs],
            "folder": [str(r.folder) for r in runs],
        }
    )
    blocks.append(Table(inputs, caption="Result folders read"))
    for run in runs:
        p = run.provenance
        blocks.append(Heading(3, run.label))
        if not p:
            blocks.append(Note(f"{run.folder / 'results.json'} records no provenance."))
            continue
        git = p.get("git") if isinstance(p.get("git"), dict) else {}
        commit = git.get("commit") or "not recorded (outside git)"
        if git.get("dirty"):
            commit += " (with uncommitted changes)"
        versions = p.get("versions") if isinstance(p.get("versions"), dict) else {}
        command = p.get("command")
        rows = [
            ("kind", run.kind),
            ("folder", str(run.folder)),
            ("started (UTC)", p.get("started_utc")),
            ("wall time (s)", p.get("wall_seconds")),
            ("device", p.get("device")),
            ("platform", p.get("platform")),
            ("git commit", commit),
            ("command", " ".join(map(str, command)) if isinstance(command, list) else command),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)),
            ("files", ", ".join(map(str, run.results.get("files") or []))),
        ]
        frame = pd.DataFrame(
            [(k, tables.format_value(v)) for k, v in rows], columns=["field", "value"]
        )
        blocks.append(Table(frame))
        blocks.append(Paragraph("Configuration:"))
        blocks.append(Preformatted(json.dumps(p.get("config"), indent=2, sort_keys=True)))
    return blocks


def _tidy_table(run: Run, *, caption: str) -> Table:
    return Table(tables.tidy(run), caption=caption, verdict_column="verdict")


def _columns(frame: pd.DataFrame, columns) -> pd.DataFrame:
    return frame[[c for c in columns if c in frame.columns]]


def _missing_note(run: Run, name: str) -> Note:
    listed = name in (run.results.get("files") or [])
    why = "listed in its results.json but missing" if listed else "not written by this run"
    return Note(f"{name}: {why} ({run.folder}); this part is left out.")


def _figure(run: Run, name: str, caption: str) -> list:
    path = run.folder / name
    if not path.is_file():
        return [_missing_note(run, name)]
    png = path.read_bytes()
    if not png.startswith(PNG_SIGNATURE):
        return [Note(f"{name}: not a PNG file ({run.folder}); this figure is left out.")]
    return [Image(f"figure-{_slug(run.label)}-{name}", png, f"{caption} [{run.label}]")]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def figure_png(fig, *, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (no file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
