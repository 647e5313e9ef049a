"""Writing a network run: tables, figures and ``results.json`` with provenance, atomically; and
the console summary."""

from __future__ import annotations

import math

from validation.checks.network import Tables
from validation.network.result import NetworkResult


def write_network(result: NetworkResult, tables: Tables, out, *, started, wall_seconds) -> None:
    """Write tables, figures and ``results.json`` (with provenance) into ``out``, atomically."""
    from validation.store import result_folder

    with result_folder(out) as w:
        w.csv("summary.csv", tables.summary)
        w.csv("ritz.csv", tables.ritz)
        w.csv("density.csv", tables.density)
        w.csv("sigma2.csv", tables.sigma2)
        w.csv("sweep.csv", tables.sweep)
        w.csv("batch_draws.csv", tables.batch_draws)
        beyond = tables.beyond_goe
        if beyond is not None:
            w.csv("per_sample.csv", beyond.per_sample)
            if len(beyond.batch_models):
                w.csv("batch_models.csv", beyond.batch_models)
        _figures(w, tables, sorted(result.batches))
        files = w.manifest()
        w.json(
            "results.json",
            results_record(result, tables, files, started=started, wall_seconds=wall_seconds),
        )


def _figures(w, tables: Tables, sizes) -> None:
    """Ritz values, densities and noise spectra per B, and the batch-size sweep."""
    from reports import figures

    fig, axes = figures.new_figure(len(sizes), width=4.5)
    for ax, B in zip(axes, sizes, strict=True):
        figures.ritz_full_vs_batch(ax, tables.ritz, B=B)
    w.figure("ritz_full_vs_batch.png", fig)

    fig, axes = figures.new_figure(len(sizes), width=4.5)
    for ax, B in zip(axes, sizes, strict=True):
        figures.batch_density(ax, tables.density, B=B)
    w.figure("density.png", fig)

    fig, axes = figures.new_figure(len(sizes), width=4.5)
    for ax, B in zip(axes, sizes, strict=True):
        t = float(tables.sweep.loc[tables.sweep.B == B, "t"].iloc[0])
        figures.noise_spectrum(ax, tables.density, B=B, t=t)
    w.figure("noise_spectrum.png", fig)

    fig, (ax,) = figures.new_figure()
    figures.batch_sweep(ax, tables.sweep)
    w.figure("batch_sweep.png", fig)

    if tables.beyond_goe is not None and len(tables.beyond_goe.batch_models):
        fig, (ax,) = figures.new_figure()
        figures.batch_models(ax, tables.beyond_goe.batch_models)
        w.figure("batch_models.png", fig)


def results_record(result: NetworkResult, tables: Tables, files, *, started, wall_seconds) -> dict:
    """``results.json``: provenance, the raw settings and numbers a report needs, the files."""
    from validation.store import provenance

    config = result.config
    sizes = sorted(result.batches)
    return {
        "kind": "network",
        "provenance": provenance(
            config, started=started, wall_seconds=wall_seconds, device=result.device
        ),
        "model": config.model,
        "data": config.data,
        "P": result.P,
        "N": result.N,
        "epoch": result.epoch,
        "weights": result.weights,
        "data_identity": result.data_identity,
        "distributed": {"world_size": result.world_size, "backend": result.backend},
        "state_dir": result.state_dir,
        "batch_sizes": sizes,
        "sigma2": {
            name: {
                "value": e.estimate,
                "ci_low": e.ci_low,
                "ci_high": e.ci_high,
                "probes": e.probes,
            }
            for name, e in result.sigma2.items()
        },
        "sigma2_details": {
            name: {
                "standard_error": e.standard_error,
                "confidence": e.confidence,
                "batch_size": e.B,
                "factor": e.factor,
                "convention": e.convention,
            }
            for name, e in result.sigma2.items()
        },
        "batch_indices": {str(B): idx for B, idx in result.batch_indices.items()},
        "batch_draws": config.batch_draws,
        # draws 1..K-1: per probe ||N_B q||^2, q as SLQ's probes (tr(N^2)/P estimates)
        "noise_second_moment_draws": {
            str(B): [m.tolist() for m in draws] for B, draws in result.extra_noise_m2.items()
        },
        "batch_draw_indices": {  # every draw, draw 0 first (= batch_indices)
            str(B): [idx, *result.extra_indices.get(B, [])]
            for B, idx in result.batch_indices.items()
        },
        "steps": result.steps,
        "probes": config.probes,
        "hvp_method": result.hvp_method,
        "graph_cache": result.graph_cache,
        "lockstep": lockstep_record(result),
        "exact_check": result.full.exact is not None,
        "training": result.training,
        "verdicts": tables.summary["verdict"].value_counts().to_dict(),
        "assumption3": {str(B): v for B, v in tables.assumption3.items()},
        "sweep_law": tables.sweep_law,
        "curvature": tables.beyond_goe.summary if tables.beyond_goe is not None else None,
        "batch_model_goal": tables.beyond_goe.goal if tables.beyond_goe is not None else {},
        "notes": list(result.notes),
        "timings_seconds": {k: round(v, 3) for k, v in result.timings.items()},
        "files": files,
    }


def lockstep_record(result: NetworkResult) -> dict:
    """``--lockstep-gb`` and the probes it advances together (SLQ; sigma^2 per-sample centres)."""
    from nnhessian.slq import lockstep_probes

    config = result.config
    budget = int(config.lockstep_gb * 2**30)
    return {
        "gb": config.lockstep_gb,
        "slq_probes": lockstep_probes(config.probes, result.steps, result.P, config.dtype, budget),
        "sigma2_per_sample_probes": lockstep_probes(
            config.sigma2_probes, 2, result.P, config.dtype, budget
        ),
    }


def _beyond_goe_lines(beyond) -> list[str]:
    """The per-sample curvature and one sentence per batch-spectrum model."""
    if beyond is None:
        return []
    s = beyond.summary
    return [
        f"per-sample curvature ({s['samples']} samples): top GGN eigenvalue median "
        f"{s['top_ggn_quantiles'][0]:.3g}, max {s['top_ggn_max']:.3g}, Hill tail index "
        f"{s['hill_alpha']:.3g} [{s['hill_interval'][0]:.3g}, {s['hill_interval'][1]:.3g}]",
        *(f"model {sentence}" for sentence in beyond.goal.values()),
    ]


def console_report(result: NetworkResult, tables: Tables) -> list[str]:
    """A short table of predicted vs measured extreme eigenvalues with verdicts."""
    lines = []
    c = result.config
    weights = (
        f"checkpoint {c.checkpoint}"
        + (f" (epoch {result.epoch})" if result.epoch is not None else "")
        if c.checkpoint
        else f"trained {c.train_epochs} epochs from seed {c.seed}"
    )
    processes = (
        f" x {result.world_size} processes ({result.backend})" if result.world_size > 1 else ""
    )
    lines.append(
        f"network: {c.model} on {c.data}, P = {result.P:,}, N = {result.N:,}, {weights}; "
        f"{c.dtype} on {result.device}{processes}, {result.steps} Lanczos steps x {c.probes} "
        "probes"
    )
    for note in result.notes:
        lines.append(f"note: {note}")
    s2 = "; ".join(
        f"{name} {e.estimate:.4g} [{e.ci_low:.4g}, {e.ci_high:.4g}]"
        for name, e in result.sigma2.items()
    )
    level = next(iter(result.sigma2.values())).confidence
    lines.append(f"sigma^2 ({100 * level:g}% CI): {s2}")
    header = (
        f"{'B':>5} {'t':>9} {'side':>4} {'regime':>7} {'full':>9} {'Thm 2':>9} {'+-':>7}"
        f" {'free conv':>9} {'Lanczos':>9} {'exact':>9}  verdict (Thm 2)"
    )
    lines.append(header)
    summary = tables.summary
    for row in tables.sweep.itertuples():
        for side in ("max", "min"):
            verdict = summary.loc[
                (summary.check == "theorem2")
                & (summary.quantity == f"lambda_{side} batch B={row.B}"),
                "verdict",
            ].iloc[0]
            get = lambda k, side=side, row=row: getattr(row, f"{k}_{side}")  # noqa: E731
            lines.append(
                f"{row.B:>5} {row.t:>9.4g} {side:>4} {get('regime'):>7} "
                f"{get('lambda_full'):>9.4g} {get('predicted'):>9.4g} "
                f"{getattr(row, f'predicted_{side}_se'):>7.2g} {get('fc_predicted'):>9.4g} "
                f"{get('measured'):>9.4g} {get('exact'):>9.4g}  {verdict}"
            )
    if c.batch_draws > 1:
        lines.append(
            f"batch draws: {c.batch_draws} batches per B; 'Lanczos' is their mean, 'exact' "
            "draw 0's; lambda_max mean +- SE over draws: "
            + ", ".join(
                f"B={row.B} {row.measured_max:.4g} +- {row.measured_max_draw_se:.2g}"
                for row in tables.sweep.itertuples()
            )
        )
    for B in sorted(tables.assumption3):
        a3 = tables.assumption3[B]
        if a3:
            lines.append(a3["summary"])
    law = tables.sweep_law
    if "rss_edge" in law:
        n = len(tables.sweep)
        key = "edge" if law["law"].startswith("edge") else "outlier"
        lines.append(
            f"batch sweep: lambda_max(B) {law['law']}: rms residual "
            f"{math.sqrt(law['rss_edge'] / n):.3g} (edge law c sqrt(f)) vs "
            f"{math.sqrt(law['rss_outlier'] / n):.3g} (outlier law theta + c f), fitted c = "
            f"{law[f'{key}_constant_fitted'] / law[f'{key}_constant_predicted']:.3g}x Theorem 2's; "
            f"log-log slope vs f {law['loglog_slope_vs_f']:.3g} (edge 0.5, saturation 0)"
        )
    lines += _beyond_goe_lines(tables.beyond_goe)
    counts = summary["verdict"].value_counts().to_dict()
    lines.append(
        "all checks: " + ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    )
    return lines
