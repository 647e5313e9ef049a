"""Stage 6 of a network run: per-sample curvature and the exact batch GGN spectra (issue "Beyond
the GOE"), the inputs of the batch-spectrum models of :mod:`validation.checks.batch_models`.

* the top eigenvector v of H_emp: the top Ritz vector of one Lanczos run (``steps`` steps,
  stream ``top vector``; every rank takes part under torch.distributed);
* per sample i: the nonzero spectrum of its Gauss-Newton matrix ``G_i = J_i^T Lambda_i J_i``
  and the squared overlap of its top eigenvector with v
  (:func:`nnhessian.curvature.per_sample_curvature`; all samples, or ``curvature_samples`` drawn
  with the stream ``curvature subset``);
* per B, draw 0: the exact nonzero spectrum of ``G_B`` from the (B C) x (B C) Gram matrix
  (:func:`nnhessian.ggn.batch_ggn_spectrum`; no Lanczos);
* on the exact path, the share ``||H_B - G_B||_2 / ||H_B||_2`` of the non-GGN part, dense, for
  draw 0 of the largest B (the mean over B samples, a P x P eigenvalue problem each; the full data
  would cost N C P^2 for G_emp).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from validation.network.config import stream_generator


@dataclass(frozen=True)
class CurvatureStage:
    """What stage 6 measured (numpy and nnhessian's frozen tables; no tensors)."""

    table: object  # nnhessian.curvature.PerSampleCurvature (with top_overlaps)
    summary: object  # nnhessian.curvature.CurvatureSummary (quantiles, Hill tail index)
    full_top: float  # lambda_max(H_emp): the top Ritz value belonging to v

    batch_ggn: dict  # B -> (B C,) eigenvalues of G_B of draw 0, descending
    residual_share: float | None  # ||H_B - G_B||_2 / ||H_B||_2, largest B (exact path), or None


def _top_direction(run, full_op):
    """``(v, lambda_max(H_emp))``: the top Ritz vector of one Lanczos run on H_emp."""
    from nnhessian.lanczos import lanczos, ritz_vectors

    result = lanczos(
        full_op,
        run.steps,
        generator=stream_generator(run.config.seed, "top vector"),
        keep_basis=True,
        progress=False,
    )
    top = int(np.argmax(result.ritz_values))
    return ritz_vectors(result, [top])[0], float(result.ritz_values[top])


def _residual_share(model, data, indices, dtype, H, spectrum) -> float:
    """``||H_B - G_B||_2 / ||H_B||_2`` for the batch ``indices``: ``H`` its dense Hessian and
    ``spectrum`` its exact eigenvalues, both from stage 5; G_B dense (eigvalsh of H_B - G_B)."""
    import torch

    from nnhessian.ggn import ggn_matrix

    G = ggn_matrix(model, data, indices, dtype=dtype, device=H.device)
    top = float(np.abs(spectrum.exact).max())
    return float(torch.linalg.eigvalsh(H - G).abs().max()) / top


def curvature_stage(run, full_op, batch_indices: dict, *, dense_batch) -> CurvatureStage:
    """Stage 6 (module docstring); ``dense_batch``: ``(H_B, its Spectrum)`` of the largest B from
    stage 5 on the exact path, ``(None, None)`` otherwise (no residual share)."""
    import torch

    from nnhessian.curvature import curvature_summary, per_sample_curvature
    from nnhessian.ggn import batch_ggn_spectrum

    config, model, data = run.config, run.prepared.model, run.prepared.data
    dtype = getattr(torch, config.dtype)
    with run.timer("curvature"):
        v, theta = _top_direction(run, full_op)
        n = config.curvature_samples
        subset = n is not None and n < len(data)
        table = per_sample_curvature(
            model,
            data,
            subset_size=n if subset else None,
            generator=stream_generator(config.seed, "curvature subset") if subset else None,
            direction=v,
            dtype=dtype,
            device=v.device,
        )
        batch_ggn = {
            B: batch_ggn_spectrum(model, data, idx, dtype=dtype, device=v.device).eigenvalues
            for B, idx in batch_indices.items()
        }
        H, spectrum = dense_batch
        indices = batch_indices[max(batch_indices)]
        share = None if H is None else _residual_share(model, data, indices, dtype, H, spectrum)
    run.step("curvature")
    return CurvatureStage(table, curvature_summary(table), theta, batch_ggn, share)
