"""The raw result of a network run: SLQ spectra, sigma^2 estimates and the settings that made
them. No comparison with theory here (:mod:`validation.checks.network`); numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from validation.network.config import NetworkConfig


@dataclass(frozen=True)
class Spectrum:
    """SLQ of one operator, and its exact eigenvalues when the dense check ran."""

    operator: str  # "full", "batch" or "noise"
    B: int | None  # batch size (None for full)
    nodes: np.ndarray  # (probes, steps) Ritz values, ascending, NaN-padded after a breakdown
    weights: np.ndarray  # (probes, steps) Gauss weights (squared first components), 0-padded
    residuals: np.ndarray  # (probes, steps) Lanczos residual estimates, NaN-padded
    exact: np.ndarray | None  # (P,) eigenvalues of the dense matrix, ascending

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """The SLQ measure: all probes' nodes with weights / probes (total mass 1)."""
        keep = self.weights > 0
        return self.nodes[keep], self.weights[keep] / self.nodes.shape[0]

    def extreme(self, side: str) -> tuple[float, float, float]:
        """(best estimate over probes, standard error across probes, its residual).

        The best estimate of lambda_max is the largest top Ritz value (each is a lower bound by
        Cauchy interlacing); of lambda_min the smallest bottom one.
        """
        per_probe, resid = [], []
        for nodes, res in zip(self.nodes, self.residuals, strict=True):
            k = np.flatnonzero(np.isfinite(nodes))  # NaN pads a run that broke down early
            j = k[-1] if side == "max" else k[0]
            per_probe.append(nodes[j])
            resid.append(res[j])
        per_probe, resid = np.array(per_probe), np.array(resid)
        i = int(np.argmax(per_probe) if side == "max" else np.argmin(per_probe))
        n = per_probe.size
        se = float(per_probe.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return float(per_probe[i]), se, float(resid[i])


@dataclass(frozen=True)
class NetworkResult:
    config: NetworkConfig
    P: int
    N: int
    steps: int  # Lanczos steps used (config.steps capped at P)
    epoch: int | None  # from the checkpoint, else None
    training: dict | None  # the on-the-spot training run (None with a checkpoint)
    device: str
    hvp_method: str  # HVP implementation the operators resolved to
    graph_cache: dict  # nnhessian.GraphCacheInfo of the operators at the end, as a dict
    sigma2: dict  # estimator name -> nnhessian.Sigma2Estimate
    sigma2_batch: int | None  # B used by the partition and two-batch estimators
    full: Spectrum
    batches: dict  # B -> Spectrum of H_B
    noises: dict  # B -> Spectrum of N_B
    batch_indices: dict  # B -> (B,) sample indices of the fixed batch (draw 0)
    notes: tuple[str, ...]
    timings: dict  # seconds per stage
    weights: dict = field(default_factory=dict)  # where the weights came from (kind, path, ...)
    data_identity: dict = field(default_factory=dict)  # N, input shape, classes, SHA-256 of X, y
    world_size: int = 1  # torch.distributed processes that shared the full-data passes
    backend: str | None = None  # their backend (gloo, nccl), None for one process
    state_dir: str | None = None  # --state-dir of a resumable run
    # --batch-draws K > 1: B -> the extra draws 1..K-1, each a Spectrum of its H_B (one probe)
    extra_batches: dict = field(default_factory=dict)
    extra_indices: dict = field(default_factory=dict)  # B -> [(B,) indices of draws 1..K-1]
    # B -> draws 1..K-1, each a (probes,) array of ||N_B q||^2 (nnhessian.slq.second_moments)
    extra_noise_m2: dict = field(default_factory=dict)
    # stage 6 (validation.network.curvature.CurvatureStage), None with --curvature no
    curvature: object | None = None

    def draw_extremes(self, B: int, side: str) -> tuple[np.ndarray, np.ndarray]:
        """(K,) Lanczos extremes of H_B over the K draws (draw 0: the best over its SLQ probes)
        and (K,) their measurement uncertainties (draw 0: probe standard error or residual,
        the larger; the extra draws: their residual)."""
        value, se, res = self.batches[B].extreme(side)
        values, errors = [value], [max(v for v in (se, res, 0.0) if np.isfinite(v))]
        for spec in self.extra_batches.get(B, ()):
            value, _, res = spec.extreme(side)
            values.append(value)
            errors.append(max(v for v in (res, 0.0) if np.isfinite(v)))
        return np.array(values), np.array(errors)
