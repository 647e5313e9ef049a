r"""``python -m validation network``: full-data vs mini-batch Hessian spectra of a network.

The measurement side of the paper (sections 3-4), on a real network at fixed weights w:

1. data: ``--data digits`` (scikit-learn's 8x8 digits, bundled, offline; the default) or
   ``--data cifar100`` (the CIFAR-100 training split read from ``--data-dir`` by
   :func:`nnhessian.cifar.load_cifar100`: normalised, file order, never augmented; fetched only
   with ``--download``); ``--samples n`` keeps the first n samples (N = n; for CIFAR-100 only those
   images are read into memory). The class count comes from the data (10 / 100);
2. weights: a checkpoint written by ``python -m validation train`` (read by
   :func:`nnhessian.train_checkpoint.load_checkpoint`: architecture, options and epoch from the
   file), a
   plain ``torch.save`` file (a state_dict, or a dict holding one under ``state_dict`` /
   ``model_state_dict`` / ``model``, with an optional ``epoch``) for a model built from
   ``--model`` / ``--width``, or a short deterministic SGD run from a seeded initialisation
   (:func:`nnhessian.weights.train_briefly`), so that the weights are not at initialisation;
3. operators (:mod:`nnhessian.operators`): ``H_emp`` over all N samples, and for each batch size B
   one fixed batch drawn without replacement, ``H_B`` and the noise ``N_B = H_B - H_emp`` at the
   same weights; with ``--batch-draws K`` (default 1) K independent batches per B (draw d from
   the stream keyed by (B, d); draw 0 is the batch of K = 1), each drawn without replacement;
4. spectra: stochastic Lanczos quadrature (SLQ; ``steps`` = m = 100 as in the paper, section 4,
   ``probes`` independent starts) of ``H_emp``, every ``H_B`` and every ``N_B`` of draw 0; raw
   Ritz values and Gauss weights are kept (``ritz.csv``). Draws 1..K-1 get only the extremes of
   their ``H_B``: one Lanczos run of ``steps`` steps from one probe each. ``batch_draws.csv``
   holds the extremes of every draw (draw 0: the best over its probes). The noise matrix,
   assumption 3, the densities and the dense exact check use draw 0 only;
5. sigma^2 (paper eq. 9, 1/N convention, :mod:`nnhessian.sigma2`): the per-sample estimator
   (drives every prediction), the cheap partition estimator and the two-disjoint-batch estimator,
   each with a t confidence interval over its probes, at the smallest B with ``2 B <= N``;
6. theory per B, with ``t = P f(N, B) sigma^2`` (``rmt.theory.noise_scale``; ``f`` the exact
   finite-population factor (N - B)/(B(N - 1)) by default, ``--factor paper`` for (N - B)/(BN)):

   * Theorem 2 (``rmt.theory.theorem2``, regime-aware) for lambda_max and lambda_min of H_B from
     the Lanczos extremes of H_emp, against the measured value: the extreme of draw 0 (K = 1),
     else the mean over the K draws;
   * the free-probability refinement: the extreme eigenvalue of H_B as an outlier
     ``theta + t G_mu(theta)`` of the rest ``mu`` of the full-data SLQ measure, or the edge of the
     support of ``mu boxplus semicircle(t)`` when absorbed (``rmt.freeconv``);
   * the batch density: ``(full-data SLQ measure) boxplus semicircle(t)`` against the measured
     batch SLQ measure, by the Wasserstein-1 distance (exact for the piecewise-linear CDF of the
     tabulated density, :func:`wasserstein1_measure_to_density`);
   * the noise matrix against the paper's assumption 3 (GOE): its Lanczos edges against
     ``+-2 sqrt(t)``, the asymmetry ``(lambda_max + lambda_min) / (lambda_max - lambda_min)``
     (GOE: 0), and the standardised third and fourth central moments of its SLQ measure
     (semicircle: 0 and 2);
   * the identity behind t, whatever the noise law: ``E tr(N_B^2)/P = t`` over batches (with
     the exact factor); with K > 1 the mean of tr(N_B^2)/P over the draws against t
     (:func:`noise_checks`);
   * with ``--batch-draws K > 1``, the spread of the extreme eigenvalues over the K batches
     against the theory's sd of one draw (chi-square test, :func:`spread_row`);
   * the batch-size sweep: lambda_max(B) (the mean over draws when K > 1, ``sweep.csv`` then
     also holding ``measured_*_draw_se``, the standard error over draws, and ``batch_draws``)
     against the edge law ``c sqrt(f)`` (~ B^(-1/2)) and the outlier law ``theta + c f``
     (saturates at theta as B grows), least squares over B;

7. exact check (small models, ``P <= EXACT_MAX_P``): dense Hessians of the full data and of each
   batch from ``torch.func.jacrev(jacrev(loss))`` -- a code path independent of the HVP engine --
   and their eigenvalues (``torch.linalg.eigvalsh``); the Lanczos extremes and the SLQ measures
   of H_emp, H_B and N_B are compared with them.

Uncertainties (one standard error, combined in quadrature): the sigma^2 standard error
propagated to t (t is linear in sigma^2) and through each prediction's derivative; the spread of
the extreme Ritz values across SLQ probes (standard error) or the Lanczos residual, whichever is
larger (K > 1: the mean of that over the draws, a one-probe draw counting its residual); and the
batch-draw fluctuation: with K = 1 the theory's own fluctuation of one batch draw (Gaussian
outlier, ``rmt.theory.outlier_sd``; Tracy-Widom edge, ``TW1_SD sqrt(t) P^(-2/3)``), with K > 1
the larger of that divided by sqrt(K) (the fluctuation of a K-draw mean) and the measured
standard error of lambda over the K draws (two estimates of one spread: the larger, not their
sum). In ``sweep.csv`` ``measured_*_se`` is the measurement's term, with K > 1 combined with the
standard error over draws. Density comparisons
use the SLQ resolution of a measure (:func:`slq_resolution`, split-half W1 of the probes) as
their reference scale. A row "agrees" when ``|measured - predicted| <= z_crit * uncertainty``.

Running the paper's experiment (section 4):

* epochs (the paper's Figures 3-4): ``--checkpoints DIR`` takes the output folder of
  ``python -m validation train`` and measures every saved epoch (``--epochs`` chooses some) into
  ``<out>/epoch_EEEE/`` (each a complete result folder of this command, written atomically; a
  folder already holding the same configuration is reused, so an interrupted sweep resumes),
  then ``<out>/epochs.csv`` (one row per epoch and B: sigma^2 of every estimator with its
  interval, lambda_max / lambda_min of H_emp, and of H_B measured and predicted) and
  ``<out>/epochs.png`` (sigma^2 and the extreme eigenvalues against the epoch);
* resumable runs: ``--state-dir DIR`` gives every stage its own state directory
  (``sigma2-per-sample``, ``sigma2-partition``, ``sigma2-two-batch``, ``slq-full``,
  ``slq-batch-B``, ``slq-noise-B``, with K > 1 ``slq-batch-B-draw-D`` for D = 1..K-1; weights
  trained on the spot in ``trained-weights.pt``; one ``epoch_EEEE/`` level more in a sweep)
  where :func:`nnhessian.slq` and the sigma^2 estimators save their progress every
  ``--save-every`` Lanczos steps / every probe (:mod:`nnhessian.checkpoint`). The same command
  started again after a kill resumes, with Ritz values bit-identical to an uninterrupted run on
  the CPU; a state of another configuration or an unreadable one is refused (one line);
* torch.distributed: launched by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set), every process
  loads the same data and weights, the full-data Hessian-vector products (and the per-sample and
  partition sigma^2 passes) are sharded over the processes (:func:`nnhessian.distributed.
  sharded_full_operator`; gloo on the CPU, NCCL on GPUs, one GPU per process), the Lanczos vectors
  are identical on every rank (every rank draws the same K batches per B from the same seeded
  streams), and only rank 0 writes state and results and prints. The results
  equal a single-process run's up to the order of the final summation (float64 round-off). The
  dense exact check runs on rank 0 alone (it holds no collective operation); weights trained on
  the spot are broadcast from rank 0.

Your own model: ``--model package.module:callable`` and ``--data package.module:callable``
(:mod:`validation.network.user_code`), or from Python :func:`compare_spectra`
(:mod:`validation.network.api`).

The flow, one module each: :mod:`~validation.network.config` (what to measure) ->
:mod:`~validation.network.prepare` (data, model, weights) -> :mod:`~validation.network.stages`
(operators, sigma^2, spectra, exact check) and :mod:`~validation.network.curvature` (per-sample
and batch Gauss-Newton spectra: the raw :mod:`~validation.network.result`) ->
:mod:`validation.checks.network` (theory and verdicts, pure) -> :mod:`~validation.network.write`
(result folder) ; :mod:`~validation.network.epochs` (sweeps over training checkpoints) and
:mod:`~validation.network.commandline` (the command line, torchrun).

The top level imports neither torch nor matplotlib (``python -m validation --help`` stays fast).
"""

# Public names, imported on first use (PEP 562): the checks import the raw result types of this
# package (validation.network.result), and the API imports the checks, so importing every
# submodule here would close a loop; it also keeps ``--help`` free of torch.
_EXPORTS = {
    "Comparison": "validation.network.api",
    "compare_spectra": "validation.network.api",
    "add_parser": "validation.network.commandline",
    "command": "validation.network.commandline",
    "config_from_args": "validation.network.commandline",
    "result_identity": "validation.network.commandline",
    "NetworkConfig": "validation.network.config",
    "NetworkResult": "validation.network.result",
    "Spectrum": "validation.network.result",
    "measure": "validation.network.stages",
    "run_network": "validation.network.stages",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'validation.network' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
