"""End-to-end: ``python -m validation network`` at toy size against exact references.

The toy run: a 64-2-10 tanh MLP (P = 160) on the first 120 digits, weights from a checkpoint
written here, Lanczos steps capped at P (so every extreme is exact), batches B = 8 and 30. The
references never use the files' own numbers: dense Hessians of the checkpoint's weights by
:mod:`nnhessian.reference` (tests/test_nnhessian_reference.py), exact sigma^2 from dense per-sample
Hessians, Theorem 2 and the free convolution recomputed from ``rmt``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nnhessian import reference
from nnhessian.checkpoint import tensor_sha256
from nnhessian.data import load_digits
from nnhessian.models import build
from reports.schema import TIDY_COLUMNS
from rmt import spectra, theory
from rmt.freeconv import free_convolution_density
from tests.helpers import F64, assert_refused, digits, exact_sigma2
from tests.tolerances import (
    DENSITY_INPUT_RTOL64,
    DRAW_MEAN_RTOL64,
    DRAW_SE_RTOL64,
    HVP_RTOL64,
    LOGLOG_SLOPE_RTOL64,
    NETWORK_WEIGHT_SUM_ATOL,
    SHAPE_STATISTIC_RTOL64,
    SPECTRA_SUM_RTOL,
    THEORY_RTOL,
    Z_STAT,
    freeconv_density_atol,
    network_eig_atol,
)
from validation.checks.network import growth_law
from validation.checks.network_extremes import spread_row
from validation.checks.verdict import NOT_APPLICABLE, interval_verdict, spread_verdict, z_verdict
from validation.cli import main
from validation.network.config import DENSITY_CURVES, TRAINED_WEIGHTS, stream_generator

pytestmark = pytest.mark.usefixtures("single_thread")
N_TOY, WIDTH, SIZES = 120, 2, (8, 30)
FILES = {
    "results.json", "summary.csv", "ritz.csv", "density.csv", "sigma2.csv", "sweep.csv",
    "batch_draws.csv", "ritz_full_vs_batch.png", "density.png", "noise_spectrum.png",
    "batch_sweep.png", "per_sample.csv",
}  # fmt: skip


def toy_model(hidden=WIDTH, seed=3):
    return build(
        "mlp", 10, in_features=64, hidden=(hidden,), generator=torch.Generator().manual_seed(seed)
    )


def toy_data():
    """The run's data: the first N_TOY digits images (float64)."""
    return digits(True).subset(range(N_TOY))


def toy_args(out, checkpoint, *extra):
    return [
        "network",
        "--samples", str(N_TOY),
        "--width", str(WIDTH),
        "--checkpoint", str(checkpoint),
        "--batch-sizes", *map(str, SIZES),
        "--steps", "500",  # capped at P = 160: Lanczos runs to the full dimension
        "--probes", "3",
        "--sigma2-probes", "8",
        "--out", str(out),
        "--quiet",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mlp.pt"
    model = toy_model()
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, path)
    return path


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("net") / "network"
    assert main(toy_args(out, checkpoint)) == 0
    return out


@pytest.fixture(scope="module")
def exact(toy_run):
    """Dense reference Hessians of the checkpoint's weights, independent of the run."""
    results = json.loads((toy_run / "results.json").read_text())
    data = toy_data()
    model = toy_model()
    H = reference.dense_hessian(model, data, dtype=F64)
    batches = {}
    for B in SIZES:
        idx = results["batch_indices"][str(B)]
        batches[B] = reference.dense_hessian(model, data, idx, dtype=F64)
    sigma2 = exact_sigma2(reference.dense_per_sample_hessians(model, data, dtype=F64))
    return {"H": H, "batches": batches, "sigma2": sigma2, "results": results}


def expected_verdict(row, run) -> str:
    """The verdict a row's inputs determine, by validation.checks.verdict's rules: the spread
    rule on the draws in batch_draws.csv for "batch-spread", no verdict for a row the run has no
    spread for (noise-variance with one draw, free convolution with one Lanczos step), else the
    z rule on the row's own predicted, measured and uncertainty."""
    config = json.loads((run / "results.json").read_text())["provenance"]["config"]
    z = config["z_crit"]
    if row.check == "batch-spread":
        B = int(row.quantity.rsplit("B=", 1)[1])
        side = "max" if "lambda_max" in row.quantity else "min"
        draws = pd.read_csv(run / "batch_draws.csv")
        return spread_verdict(draws.loc[draws.B == B, f"lambda_{side}"], row.predicted, z)[0]
    if row.check in ("ggn-gram", "level-spacing") or "[free limit" in row.quantity:
        return NOT_APPLICABLE  # reported beside each other; no uncertainty claimed
    if row.check == "batch-model" and "quantile" in row.quantity:
        low, high = (float(v) for v in row.quantity.split("interval ")[1].rstrip("]").split(", "))
        return interval_verdict(row.predicted, low, high)
    no_spread = row.check == "noise-variance" and config["batch_draws"] == 1
    if no_spread or row.quantity.endswith("(needs --steps >= 2)"):
        return NOT_APPLICABLE
    return z_verdict(row.predicted, row.measured, row.uncertainty, z)


def assert_verdicts_follow_from_the_rows(run) -> pd.DataFrame:
    summary = pd.read_csv(run / "summary.csv")  # floats read back exactly (round trip)
    for row in summary.itertuples():
        assert row.verdict == expected_verdict(row, run), row
    return summary


def test_files_schema_and_provenance(toy_run):
    assert {p.name for p in toy_run.iterdir()} == FILES
    results = json.loads((toy_run / "results.json").read_text())
    assert set(results["files"]) == FILES
    assert results["kind"] == "network"
    for key in ("config", "versions", "git", "device", "started_utc", "wall_seconds"):
        assert key in results["provenance"]
    assert results["provenance"]["config"]["batch_sizes"] == list(SIZES)
    assert (results["model"], results["data"], results["P"], results["N"]) == (
        "mlp",
        "digits",
        64 * WIDTH + WIDTH + WIDTH * 10 + 10,
        N_TOY,
    )
    assert results["epoch"] == 7
    # the default graph budget holds every graph: one miss per batch graph, the rest hits
    cache = results["graph_cache"]
    assert cache["budget_bytes"] == 2 * 2**30 and cache["hits"] > 10 * cache["misses"] > 0
    assert results["batch_sizes"] == list(SIZES)
    assert results["steps"] == results["P"]
    assert any("capped at P" in note for note in results["notes"])
    assert set(results["sigma2"]) == {"per-sample", "partition", "two-batch"}
    sigma2_csv = pd.read_csv(toy_run / "sigma2.csv")
    assert list(sigma2_csv.columns) == ["estimator", "value", "ci_low", "ci_high", "probes"]
    for row in sigma2_csv.itertuples():
        stored = results["sigma2"][row.estimator]
        assert set(stored) == {"value", "ci_low", "ci_high", "probes"}
        assert (row.value, row.ci_low, row.ci_high, row.probes) == (
            stored["value"],
            stored["ci_low"],
            stored["ci_high"],
            8,
        )
        assert row.ci_low < row.value < row.ci_high

    summary = assert_verdicts_follow_from_the_rows(toy_run)
    assert tuple(summary.columns) == TIDY_COLUMNS
    assert (summary.source == "network").all()
    checks = set(summary.check)
    for check in (
        "sigma2", "lanczos-exact", "slq-exact", "theorem2", "free-convolution-outlier",
        "free-convolution", "noise-edge", "noise-asymmetry", "noise-skewness", "noise-kurtosis",
    ):  # fmt: skip
        assert check in checks
    # steps = P: every Lanczos extreme is exact, so these rows must agree
    assert (summary.loc[summary.check == "lanczos-exact", "verdict"] == "agrees").all()

    ritz = pd.read_csv(toy_run / "ritz.csv")
    assert list(ritz.columns) == ["operator", "B", "probe", "value", "weight"]
    assert set(ritz.operator) == {"full", "batch", "noise"}
    assert ritz.loc[ritz.operator == "full", "B"].isna().all()
    assert set(ritz.loc[ritz.operator != "full", "B"]) == set(SIZES)
    sums = ritz.groupby(["operator", "B", "probe"], dropna=False)["weight"].sum()
    assert len(sums) == 3 * (1 + 2 * len(SIZES))
    assert np.all(np.abs(sums - 1.0) <= NETWORK_WEIGHT_SUM_ATOL)

    density = pd.read_csv(toy_run / "density.csv")
    assert list(density.columns) == ["curve", "B", "x", "density"]
    assert set(density.curve) == set(DENSITY_CURVES)
    assert density.loc[density.curve == "full", "B"].isna().all()
    sweep = pd.read_csv(toy_run / "sweep.csv")
    assert list(sweep.B) == list(SIZES)
    for row in sweep.itertuples():  # the Theorem 2 rows compare the sweep's numbers
        for side in ("max", "min"):
            quantity = f"lambda_{side} batch B={row.B}"
            t2 = summary[(summary.check == "theorem2") & (summary.quantity == quantity)].iloc[0]
            assert t2.predicted == getattr(row, f"predicted_{side}")
            assert t2.measured == getattr(row, f"measured_{side}")
    # one draw per B (the default): batch_draws.csv holds the sweep's measured extremes
    assert results["batch_draws"] == 1 and "batch_draws" not in sweep
    draws = pd.read_csv(toy_run / "batch_draws.csv")
    assert list(draws.columns) == ["B", "draw", "lambda_max", "lambda_min"]
    assert list(draws.B) == list(SIZES) and (draws.draw == 0).all()
    for side in ("max", "min"):
        assert list(draws[f"lambda_{side}"]) == list(sweep[f"measured_{side}"])


DRAWS = 3


@pytest.fixture(scope="module")
def draws_run(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("net") / "draws"
    assert main(toy_args(out, checkpoint, "--batch-draws", str(DRAWS))) == 0
    return out


def test_batch_draws_match_exact_eigenvalues_and_make_the_sweep(toy_run, draws_run, exact):
    """K = 3 batches per B: each draw's extremes against the dense eigenvalues of that batch;
    the sweep and the Theorem 2 rows hold their mean and standard error over the draws."""
    results = json.loads((draws_run / "results.json").read_text())
    assert results["batch_draws"] == results["provenance"]["config"]["batch_draws"] == DRAWS
    table = pd.read_csv(draws_run / "batch_draws.csv")
    assert list(table.columns) == ["B", "draw", "lambda_max", "lambda_min"]
    assert len(table) == DRAWS * len(SIZES)
    sweep = pd.read_csv(draws_run / "sweep.csv").set_index("B")
    single = pd.read_csv(toy_run / "sweep.csv").set_index("B")
    summary = pd.read_csv(draws_run / "summary.csv")
    data = toy_data()
    model = toy_model()
    P = exact["H"].shape[0]
    for B in SIZES:
        drawn = results["batch_draw_indices"][str(B)]
        assert len(drawn) == DRAWS
        assert drawn[0] == exact["results"]["batch_indices"][str(B)]  # draw 0: the K = 1 batch
        assert len({tuple(idx) for idx in drawn}) == DRAWS  # independent batches
        rows = table[table.B == B].sort_values("draw")
        assert list(rows.draw) == list(range(DRAWS))
        for idx, row in zip(drawn, rows.itertuples(), strict=True):
            assert len(set(idx)) == B and all(0 <= i < N_TOY for i in idx)  # no replacement
            ev = torch.linalg.eigvalsh(reference.dense_hessian(model, data, idx, dtype=F64)).numpy()
            atol = network_eig_atol(np.abs(ev).max(), P)  # steps = P: every extreme is exact
            assert abs(row.lambda_max - ev[-1]) <= atol, (B, row.draw)
            assert abs(row.lambda_min - ev[0]) <= atol, (B, row.draw)
        assert sweep.loc[B, "batch_draws"] == DRAWS
        for side in ("max", "min"):
            values = rows[f"lambda_{side}"].to_numpy()
            assert values[0] == single.loc[B, f"measured_{side}"]  # draw 0 unchanged
            mean, se = values.mean(), values.std(ddof=1) / np.sqrt(DRAWS)
            assert se > 0
            assert sweep.loc[B, f"measured_{side}"] == pytest.approx(mean, rel=DRAW_MEAN_RTOL64)
            draw_se = sweep.loc[B, f"measured_{side}_draw_se"]
            assert draw_se == pytest.approx(se, rel=DRAW_SE_RTOL64)
            assert se <= sweep.loc[B, f"measured_{side}_se"]
            quantity = f"lambda_{side} batch B={B}"
            for check in ("theorem2", "free-convolution-outlier"):
                row = summary[(summary.check == check) & (summary.quantity == quantity)].iloc[0]
                assert row.measured == pytest.approx(mean, rel=DRAW_MEAN_RTOL64)
                assert row.uncertainty >= se
    assert_verdicts_follow_from_the_rows(draws_run)  # batch-spread: the spread rule on the draws
    # the noise checks and densities stay on draw 0: the same as the K = 1 run's
    for name in ("ritz.csv", "density.csv"):
        assert (draws_run / name).read_bytes() == (toy_run / name).read_bytes(), name


def test_noise_variance_row_is_the_mean_over_draws_of_tr_n2(toy_run, draws_run, exact):
    """tr(N_B^2)/P per draw: draw 0 from SLQ (the K = 1 run's value), draws 1..K-1 are
    ||N_B q||^2 on SLQ-style probes, reproduced here from dense N_B = H_B - H_emp and the
    run's named random stream; the row holds their mean against t (identity tested in
    test_rmt_theory), with the spread over draws in its uncertainty. K = 1: no verdict."""
    from nnhessian import MatrixOperator, second_moments

    results = json.loads((draws_run / "results.json").read_text())
    single = pd.read_csv(toy_run / "sweep.csv").set_index("B")
    sweep = pd.read_csv(draws_run / "sweep.csv").set_index("B")
    summary = pd.read_csv(draws_run / "summary.csv")
    summary1 = pd.read_csv(toy_run / "summary.csv")
    data = toy_data()
    model, H = toy_model(), exact["H"]
    for B in SIZES:
        stored = results["noise_second_moment_draws"][str(B)]
        assert len(stored) == DRAWS - 1
        means = [single.loc[B, "noise_m2"]]
        for draw, values in enumerate(stored, start=1):
            idx = results["batch_draw_indices"][str(B)][draw]
            HB = reference.dense_hessian(model, data, idx, dtype=F64)
            g = stream_generator(0, "noise m2", B, draw)
            ref = second_moments(MatrixOperator(HB - H), 3, generator=g)
            # each product carries <= HVP_RTOL64 (||H_B q|| + ||H q||) <= HVP_RTOL64 (||H_B|| +
            # ||H||) =: e, so ||N q + err||^2 moves by <= 2 ||N q|| e + e^2
            e = HVP_RTOL64 * float(torch.linalg.matrix_norm(HB, 2) + torch.linalg.matrix_norm(H, 2))
            assert np.abs(np.array(values) - ref).max() <= 2 * np.sqrt(ref.max()) * e + e * e
            means.append(float(np.mean(values)))
        quantity = f"tr(N^2)/P, mean of {DRAWS} batch draws noise B={B}"
        row = summary[(summary.check == "noise-variance") & (summary.quantity == quantity)].iloc[0]
        assert row.measured == pytest.approx(np.mean(means), rel=DRAW_MEAN_RTOL64)
        assert sweep.loc[B, "noise_m2_mean"] == pytest.approx(np.mean(means), rel=DRAW_MEAN_RTOL64)
        assert row.predicted == pytest.approx(sweep.loc[B, "t"], rel=THEORY_RTOL)
        assert row.uncertainty >= np.std(means, ddof=1) / np.sqrt(DRAWS)
        # the z rule on the reference mean and t: the verdict these inputs determine
        z = results["provenance"]["config"]["z_crit"]
        assert row.verdict == z_verdict(sweep.loc[B, "t"], np.mean(means), row.uncertainty, z)
        one = summary1[summary1.check == "noise-variance"]
        assert set(one.verdict) == {"not applicable"}


def test_batch_sweep_figure_has_error_bars_with_several_draws(toy_run, draws_run):
    from matplotlib.container import ErrorbarContainer

    from reports import figures

    counts = []
    for run in (toy_run, draws_run):
        fig, (ax,) = figures.new_figure()
        figures.batch_sweep(ax, pd.read_csv(run / "sweep.csv"))
        counts.append(sum(isinstance(c, ErrorbarContainer) for c in ax.containers))
    assert counts == [1, 2]  # Theorem 2's band; with K > 1 also the measured mean's


def _extreme(frame, side):
    return frame.value.max() if side == "max" else frame.value.min()


def assert_extremes_are_the_dense_ones(run, H, batches, *, exact_column=True):
    """With steps = P every Lanczos extreme in ritz.csv and sweep.csv is an eigenvalue extreme
    of the dense reference: H_emp = ``H``, H_B = ``batches[B]`` and N_B = H_B - H_emp."""
    ritz = pd.read_csv(run / "ritz.csv")
    sweep = pd.read_csv(run / "sweep.csv").set_index("B")
    P = H.shape[0]
    matrices = {("full", None): H}
    for B, H_B in batches.items():
        matrices[("batch", B)] = H_B
        matrices[("noise", B)] = H_B - H
    for (operator, B), M in matrices.items():
        ev = torch.linalg.eigvalsh(M).numpy()
        atol = network_eig_atol(np.abs(ev).max(), P)
        rows = ritz[(ritz.operator == operator) & ((ritz.B == B) if B else ritz.B.isna())]
        for side, truth in (("max", ev[-1]), ("min", ev[0])):
            assert abs(_extreme(rows, side) - truth) <= atol, (operator, B, side)
            if operator == "batch":
                assert abs(sweep.loc[B, f"measured_{side}"] - truth) <= atol
                if exact_column:
                    assert abs(sweep.loc[B, f"exact_{side}"] - truth) <= atol
            if operator == "noise":
                assert abs(sweep.loc[B, f"noise_{side}"] - truth) <= atol


def test_lanczos_extremes_match_exact_eigenvalues(toy_run, exact):
    assert_extremes_are_the_dense_ones(toy_run, exact["H"], exact["batches"])


def test_sigma2_estimators_agree_with_exact_value(exact):
    results = exact["results"]
    for name, stored in results["sigma2"].items():
        se = results["sigma2_details"][name]["standard_error"]
        assert se > 0
        assert abs(stored["value"] - exact["sigma2"]) <= Z_STAT * se, name


def test_predictions_follow_theory_from_stored_inputs(toy_run, exact):
    results = exact["results"]
    sweep = pd.read_csv(toy_run / "sweep.csv")
    sigma2 = results["sigma2"]["per-sample"]["value"]
    P, N = results["P"], results["N"]
    ev = torch.linalg.eigvalsh(exact["H"]).numpy()
    for row in sweep.itertuples():
        t = theory.noise_scale(sigma2, P, N, row.B, factor="exact")
        assert abs(row.t - t) <= THEORY_RTOL * t
        for side, lam in (("max", ev[-1]), ("min", ev[0])):
            pred = theory.theorem2(lam, sigma2, P, N, row.B, factor="exact")
            got = getattr(row, f"predicted_{side}")
            # the run predicts from its Lanczos extreme, exact to network_eig_atol
            slope = 1.0 + t / lam**2 if pred.regime == "outlier" else 0.0
            atol = slope * network_eig_atol(np.abs(ev).max(), P) + THEORY_RTOL * abs(got)
            assert abs(got - float(pred.predicted)) <= atol
            assert getattr(row, f"regime_{side}") == str(pred.regime)
        assert row.goe_edge == pytest.approx(2 * np.sqrt(t), rel=THEORY_RTOL)


def test_density_curves_are_the_stated_functions_of_stored_spectra(toy_run):
    ritz = pd.read_csv(toy_run / "ritz.csv")
    density = pd.read_csv(toy_run / "density.csv")
    sweep = pd.read_csv(toy_run / "sweep.csv").set_index("B")
    full = ritz[ritz.operator == "full"]
    probes = full.probe.nunique()
    for B in SIZES:
        t = sweep.loc[B, "t"]
        pred = density[(density.curve == "batch predicted") & (density.B == B)]
        ref = free_convolution_density(full.value, full.weight / probes, t, pred.x)
        atol = freeconv_density_atol(pred.x.to_numpy(), t, ref)
        slack = 2 * atol + DENSITY_INPUT_RTOL64 * ref.max()
        assert np.all(np.abs(pred.density.to_numpy() - ref) <= slack)
        semi = density[(density.curve == "noise semicircle") & (density.B == B)]
        np.testing.assert_allclose(
            semi.density, theory.semicircle_density(semi.x, t), rtol=THEORY_RTOL, atol=0
        )


def test_trained_cnn_bn_run_without_exact_check(tmp_path):
    """cnn_bn (P = 194 at width 1) trained on the spot, the run's own exact check off: the
    trained weights (saved in --state-dir) give dense reference Hessians (BatchNorm in eval
    mode, as the run's default policy), whose extreme eigenvalues the run's Lanczos extremes
    (steps = P) must be."""
    out, state = tmp_path / "cnn", tmp_path / "state"
    args = [
        "network", "--model", "cnn_bn", "--width", "1", "--samples", "60",
        "--train-epochs", "2", "--batch-sizes", "10", "--steps", "500", "--probes", "2",
        "--sigma2-probes", "2", "--exact", "no", "--state-dir", str(state),
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epoch"] is None and not results["exact_check"]
    assert results["P"] == results["steps"] == 194
    training = results["training"]
    assert training["sgd_steps"] == 2 and training["loss_after"] < training["loss_at_init"]
    summary = assert_verdicts_follow_from_the_rows(out)
    assert "lanczos-exact" not in set(summary.check)
    assert len(pd.read_csv(out / "sweep.csv")) == 1

    trained = torch.load(state / TRAINED_WEIGHTS, map_location="cpu", weights_only=True)
    model = build("cnn_bn", 10, in_channels=1, image_size=8, width=1).double()
    model.load_state_dict(trained["state"])  # float64, as trained by the run: no rounding
    data = digits(True).subset(range(60))
    digest = hashlib.sha256((tensor_sha256(data.X) + tensor_sha256(data.y)).encode())
    assert results["data_identity"]["sha256"] == digest.hexdigest()  # the run's data
    H = reference.dense_hessian(model, data, dtype=F64)
    idx = results["batch_indices"]["10"]
    batches = {10: reference.dense_hessian(model, data, idx, dtype=F64)}
    assert_extremes_are_the_dense_ones(out, H, batches, exact_column=False)


# ---- the comparison helpers -----------------------------------------------------------------


def test_weighted_w1_reproduces_the_equal_weight_version():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=300)
    grid = np.linspace(-5, 5, 801)
    density = np.exp(-0.5 * grid**2)
    expected = spectra.wasserstein1_to_density(samples, grid, density)
    got = spectra.wasserstein1_measure_to_density(samples, np.full(300, 1 / 300), grid, density)
    assert abs(got - expected) <= SPECTRA_SUM_RTOL * expected
    # weights matter: all mass on the largest sample is farther from N(0, 1)
    heavy = np.where(samples == samples.max(), 1.0, 0.0)
    assert spectra.wasserstein1_measure_to_density(samples, heavy, grid, density) > 2 * got


def test_discrete_w1_and_slq_resolution():
    assert spectra.wasserstein1_discrete([0.0], [1.0], [2.5], [1.0]) == 2.5
    # half the mass moved by 1: W1 = 0.5
    assert spectra.wasserstein1_discrete([0.0, 1.0], [1, 1], [1.0], [1.0]) == 0.5
    same = np.tile(np.linspace(0, 1, 5), (4, 1))
    weights = np.full((4, 5), 0.2)
    assert spectra.slq_resolution(same, weights) == 0.0
    assert np.isnan(spectra.slq_resolution(same[:1], weights[:1]))


def test_shape_statistics_of_a_semicircle_and_a_point_pair():
    # semicircle of variance t: m2 = t, m4 = 2 t^2 (Catalan numbers), odd moments 0
    skew, kurt = spectra.shape_statistics(np.array([0.0, 1.5, 0.0, 2 * 1.5**2]))
    assert (skew, kurt) == (0.0, 2.0)
    # two atoms at 0 (weight 3/4) and 1 (1/4): skewness (1 - 2p)/sqrt(p(1-p)) with p = 1/4
    m = np.array([0.25, 0.25, 0.25, 0.25])
    skew, _ = spectra.shape_statistics(m)
    assert skew == pytest.approx(0.5 / np.sqrt(0.1875), rel=SHAPE_STATISTIC_RTOL64)


# ---- bad input: one line, exit status 2, nothing written ------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.pt").write_bytes(b"this is not a torch.save file")
    torch.save(toy_model(hidden=3).state_dict(), folder / "wrong.pt")
    nan = toy_model()
    with torch.no_grad():
        nan.net[1].weight[0, 0] = float("nan")
    torch.save(nan.state_dict(), folder / "nan.pt")
    huge = toy_model()
    with torch.no_grad():
        for p in huge.parameters():
            p.fill_(3e38)  # finite in float32, but the logits overflow
    torch.save(huge.state_dict(), folder / "huge.pt")
    return folder


BAD = [
    (["--batch-sizes", "0"], "B must be >= 1"),
    (["--batch-sizes", "8", "-4"], "B must be >= 1"),
    (["--batch-sizes", "5000"], "B = 5000 exceeds the data set size N = 1,797"),
    (["--batch-sizes", "16", "8", "16"], "--batch-sizes: 16 given more than once"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--probes", "0"], "--probes must be >= 1"),
    (["--graph-cache-gb", "-1"], "--graph-cache-gb must be a number >= 0"),
    (["--batch-draws", "0"], "--batch-draws must be >= 1 (independent batches per B), got 0"),
    (["--device", "tpu"], "unknown device 'tpu'; accepted: auto, cpu, cuda, cuda:N"),
    (["--data", "imagenet"], "unknown data set 'imagenet'; accepted: digits, cifar100"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--dtype", "float16"], "unknown dtype 'float16'; accepted: float64, float32"),
    (["--model", "cnn_bn", "--policy", "batch-stats"], "use --policy eval"),
    (["--checkpoint", "{bad}/missing.pt"], "missing.pt not found"),
    (["--checkpoint", "{bad}/corrupt.pt"], "is not a readable torch.save file"),
    (["--checkpoint", "{bad}/wrong.pt", "--width", "2"], "does not fit model MLP"),
    (["--checkpoint", "{bad}/nan.pt", "--width", "2"], "NaN or inf (in net.1.weight)"),
    (
        ["--checkpoint", "{bad}/huge.pt", "--width", "2", "--dtype", "float32"],
        "the loss at these weights is not finite",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path, capsys, bad_checkpoints, args, message
):
    out = tmp_path / "network"
    args = [a.replace("{bad}", str(bad_checkpoints)) for a in args]
    assert_refused(capsys, ["network", *args, "--out", str(out), "--quiet"], message, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_is_refused(tmp_path, capsys):
    out = tmp_path / "network"
    argv = ["network", "--device", "cuda", "--out", str(out), "--quiet"]
    assert_refused(capsys, argv, "CUDA is not available", out)


def test_model_data_shape_mismatch_is_refused(tmp_path, capsys, monkeypatch):
    def flat_digits(*, data_dir, dtype, **_):
        return load_digits(images=False, dtype=dtype)  # (N, 64): not images for a CNN

    from nnhessian import datasets

    monkeypatch.setitem(datasets.DATASETS, "digits", flat_digits)
    out = tmp_path / "network"
    argv = ["network", "--model", "cnn", "--out", str(out), "--quiet"]
    assert_refused(capsys, argv, "model 'cnn' does not fit data 'digits'", out)


def test_module_imports_neither_torch_nor_matplotlib():
    code = (
        "import argparse, sys, validation.network;"
        "validation.network.add_parser(argparse.ArgumentParser().add_subparsers());"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batch_spread_row_is_a_chi_square_test_of_the_theory_sd():
    from scipy import stats

    rng = np.random.default_rng(5)
    sd, K = 0.3, 6
    agreeing = 1.0 + sd * rng.standard_normal(K)
    row = spread_row(agreeing, sd, "q", "outlier", 4.0)
    assert row["check"] == "batch-spread" and row["predicted"] == sd
    assert row["measured"] == agreeing.std(ddof=1)  # the same numpy call on the same draws
    statistic = (K - 1) * agreeing.std(ddof=1) ** 2 / sd**2
    alpha = 2 * stats.norm.sf(4.0)
    inside = stats.chi2.ppf(alpha / 2, K - 1) <= statistic <= stats.chi2.isf(alpha / 2, K - 1)
    assert row["verdict"] == ("agrees" if inside else "disagrees") == "agrees"
    assert spread_row(1.0 + 30 * sd * rng.standard_normal(K), sd, "q", "-", 4.0)["verdict"] == (
        "disagrees"
    )
    assert spread_row(np.full(K, 1.0), sd, "q", "-", 4.0)["verdict"] == "disagrees"  # too tight
    assert spread_row(agreeing, 0.0, "q", "-", 4.0)["verdict"] == "not applicable"


def test_growth_law_skips_b_equal_n_in_the_log_log_slope():
    """B = N has f = 0 (no noise): it stays in the least-squares laws but not on the log-log
    line, whose slope is then exact for lambda_max = c sqrt(f) on the other sizes."""
    f = np.array([0.04, 0.01, 0.0025, 0.0])
    lam = 3.0 * np.sqrt(f) + np.array([0, 0, 0, 1.0])
    sweep = pd.DataFrame({"f": f, "measured_max": lam, "lambda_full_max": 1.0})
    law = growth_law(sweep, sigma2=1e-4, P=100)
    assert law["loglog_slope_vs_f"] == pytest.approx(0.5, rel=LOGLOG_SLOPE_RTOL64)
    assert np.isnan(growth_law(sweep.iloc[2:], sigma2=1e-4, P=100)["loglog_slope_vs_f"])


def test_batch_size_equal_to_n_runs_to_the_end(tmp_path, checkpoint):
    """B = N: the batch is the data set and the noise is zero; the run says so and finishes."""
    out = tmp_path / "bn"
    argv = toy_args(out, checkpoint, "--batch-draws", "2")
    argv[argv.index("--batch-sizes") + 1 : argv.index("--batch-sizes") + 1 + len(SIZES)] = [
        "30",
        str(N_TOY),
    ]
    argv[argv.index("--steps") + 1] = "20"
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert any(f"B = N = {N_TOY}" in note for note in results["notes"])
    assert results["sweep_law"]["loglog_slope_vs_f"] is None  # NaN (one size with B < N)


def test_one_lanczos_step_runs_and_skips_the_free_convolution(tmp_path, checkpoint):
    """m = 1: one Ritz value per probe, so no measure is left once the extreme is taken out;
    the free-convolution rows say so instead of failing."""
    out = tmp_path / "m1"
    argv = toy_args(out, checkpoint)
    argv[argv.index("--steps") + 1] = "1"
    assert main(argv) == 0
    summary = pd.read_csv(out / "summary.csv")
    rows = summary[summary.check == "free-convolution-outlier"]
    assert len(rows) == 2 * len(SIZES) and set(rows.verdict) == {"not applicable"}
    assert rows.quantity.str.endswith("(needs --steps >= 2)").all()


def test_batch_models_are_the_rmt_models_of_the_stored_curvature(draws_run):
    """batch_models.csv holds, per B, M2 = rmt.extreme_model applied to the stored per-sample
    table and H_emp's lambda_max, the measured law of the stored draws, and summary rows whose
    verdicts the one rule gives for their numbers."""
    from rmt.extreme_model import extreme_value_model
    from validation.checks.batch_models import MODELS, measured_law
    from validation.checks.verdict import interval_verdict, z_verdict

    results = json.loads((draws_run / "results.json").read_text())
    per_sample = pd.read_csv(draws_run / "per_sample.csv")
    assert len(per_sample) == results["N"] == results["curvature"]["samples"]
    table = pd.read_csv(draws_run / "batch_models.csv")
    draws = pd.read_csv(draws_run / "batch_draws.csv")
    assert set(table.model) == set(MODELS) and tuple(sorted(set(table.B))) == tuple(SIZES)
    theta = results["curvature"]["full_top"]
    for B in SIZES:
        m2 = table[(table.B == B) & (table.model == "M2")].iloc[0]
        ref = extreme_value_model(theta, per_sample.top_ggn, per_sample.top_overlap, B)
        assert m2.predicted_mean == pytest.approx(ref.mean, rel=1e-12)
        assert m2.predicted_sd == pytest.approx(ref.sd, rel=1e-12)
        law = measured_law(draws[draws.B == B].lambda_max.to_numpy())
        assert m2.measured_mean == pytest.approx(law["mean"], rel=1e-12)
        assert m2.measured_sd == pytest.approx(law["sd"], rel=1e-12)
    summary = pd.read_csv(draws_run / "summary.csv")
    rows = summary[summary.check == "batch-model"]
    assert len(rows) == 4 * len(table)  # mean, sd, two quantiles per (B, model)
    for r in rows.itertuples():
        if r.quantity.startswith(("mean", "sd")) and "free limit" not in r.quantity:
            assert r.verdict == z_verdict(r.predicted, r.measured, r.uncertainty, 4.0)
        elif "quantile" in r.quantity:
            low, high = (float(v) for v in r.quantity.split("interval ")[1].rstrip("]").split(", "))
            assert r.verdict == interval_verdict(r.predicted, low, high)
    assert set(results["batch_model_goal"]) == set(MODELS)
    assert (draws_run / "batch_models.png").is_file()
