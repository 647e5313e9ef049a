"""End-to-end: ``python -m validation network`` at toy size against exact references.

The toy run: a 64-2-10 tanh MLP (P = 160) on the first 120 digits, weights from a checkpoint
written here, Lanczos steps capped at P (so every extreme is exact), batches B = 8 and 30. The
references never use the files' own numbers: dense Hessians of the checkpoint's weights by
:mod:`nnhessian.reference` (tests/test_nnhessian_reference.py), exact sigma^2 from dense per-sample
Hessians, Theorem 2 and the free convolution recomputed from ``rmt``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nnhessian import reference
from nnhessian.data import load_digits
from nnhessian.models import build
from reports.schema import TIDY_COLUMNS, VERDICTS
from rmt import spectra, theory
from rmt.freeconv import free_convolution_density
from tests.helpers import F64, assert_refused, digits, exact_sigma2
from tests.tolerances import (
    HVP_RTOL64,
    NETWORK_WEIGHT_SUM_ATOL,
    THEORY_RTOL,
    Z_STAT,
    freeconv_density_atol,
    network_eig_atol,
)
from validation.checks.network import growth_law
from validation.checks.network_extremes import spread_row
from validation.cli import main
from validation.network.config import DENSITY_CURVES, stream_generator

pytestmark = pytest.mark.usefixtures("single_thread")
N_TOY, WIDTH, SIZES = 120, 2, (8, 30)
FILES = {
    "results.json", "summary.csv", "ritz.csv", "density.csv", "sigma2.csv", "sweep.csv",
    "batch_draws.csv", "ritz_full_vs_batch.png", "density.png", "noise_spectrum.png",
    "batch_sweep.png",
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

    summary = pd.read_csv(toy_run / "summary.csv")
    assert tuple(summary.columns) == TIDY_COLUMNS
    assert (summary.source == "network").all()
    assert all(v.split(" (")[0] in VERDICTS for v in summary.verdict)
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
            assert sweep.loc[B, f"measured_{side}"] == pytest.approx(mean, rel=1e-13)
            assert sweep.loc[B, f"measured_{side}_draw_se"] == pytest.approx(se, rel=1e-12)
            assert se <= sweep.loc[B, f"measured_{side}_se"]
            quantity = f"lambda_{side} batch B={B}"
            for check in ("theorem2", "free-convolution-outlier"):
                row = summary[(summary.check == check) & (summary.quantity == quantity)].iloc[0]
                assert row.measured == pytest.approx(mean, rel=1e-13)
                assert row.uncertainty >= se
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
        assert row.measured == pytest.approx(np.mean(means), rel=1e-13)
        assert sweep.loc[B, "noise_m2_mean"] == pytest.approx(np.mean(means), rel=1e-13)
        assert row.predicted == pytest.approx(sweep.loc[B, "t"], rel=THEORY_RTOL)
        assert row.uncertainty >= np.std(means, ddof=1) / np.sqrt(DRAWS)
        assert row.verdict in ("agrees", "disagrees")
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


def test_lanczos_extremes_match_exact_eigenvalues(toy_run, exact):
    ritz = pd.read_csv(toy_run / "ritz.csv")
    sweep = pd.read_csv(toy_run / "sweep.csv").set_index("B")
    P = exact["H"].shape[0]
    matrices = {("full", None): exact["H"]}
    for B, H_B in exact["batches"].items():
        matrices[("batch", B)] = H_B
        matrices[("noise", B)] = H_B - exact["H"]
    for (operator, B), M in matrices.items():
        ev = torch.linalg.eigvalsh(M).numpy()
        atol = network_eig_atol(np.abs(ev).max(), P)
        rows = ritz[(ritz.operator == operator) & ((ritz.B == B) if B else ritz.B.isna())]
        for side, truth in (("max", ev[-1]), ("min", ev[0])):
            assert abs(_extreme(rows, side) - truth) <= atol, (operator, B, side)
            if operator == "batch":
                assert abs(sweep.loc[B, f"measured_{side}"] - truth) <= atol
                assert abs(sweep.loc[B, f"exact_{side}"] - truth) <= atol
            if operator == "noise":
                assert abs(sweep.loc[B, f"noise_{side}"] - truth) <= atol


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
        assert np.all(np.abs(pred.density.to_numpy() - ref) <= 2 * atol + 1e-12 * ref.max())
        semi = density[(density.curve == "noise semicircle") & (density.B == B)]
        np.testing.assert_allclose(
            semi.density, theory.semicircle_density(semi.x, t), rtol=THEORY_RTOL, atol=0
        )


def test_trained_cnn_bn_run_without_exact_check(tmp_path):
    out = tmp_path / "cnn"
    args = [
        "network", "--model", "cnn_bn", "--width", "2", "--samples", "60",
        "--train-epochs", "2", "--batch-sizes", "10", "--steps", "12", "--probes", "2",
        "--sigma2-probes", "2", "--exact", "no", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["epoch"] is None and not results["exact_check"]
    training = results["training"]
    assert training["sgd_steps"] == 2 and training["loss_after"] < training["loss_at_init"]
    summary = pd.read_csv(out / "summary.csv")
    assert "lanczos-exact" not in set(summary.check)
    assert len(pd.read_csv(out / "sweep.csv")) == 1


# ---- the comparison helpers -----------------------------------------------------------------


def test_weighted_w1_reproduces_the_equal_weight_version():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=300)
    grid = np.linspace(-5, 5, 801)
    density = np.exp(-0.5 * grid**2)
    expected = spectra.wasserstein1_to_density(samples, grid, density)
    got = spectra.wasserstein1_measure_to_density(samples, np.full(300, 1 / 300), grid, density)
    assert abs(got - expected) <= 1e3 * np.finfo(float).eps * expected
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
    assert skew == pytest.approx(0.5 / np.sqrt(0.1875), rel=1e-14)


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
    assert row["measured"] == pytest.approx(agreeing.std(ddof=1))
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
    assert law["loglog_slope_vs_f"] == pytest.approx(0.5, rel=1e-12)
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
