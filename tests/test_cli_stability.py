"""``python -m validation stability`` end to end at toy size, bad input, and the predictions
against independent computations (dense Hessians, rmt.theory)."""

import json

import numpy as np
import pandas as pd
import pytest

from rmt import theory
from validation.cli import main

TOY = [
    "stability", "--samples", "60", "--width", "4", "--batch-sizes", "16", "--train-epochs", "1",
    "--sgd-steps", "20", "--seeds", "2", "--batch-draws", "3", "--lanczos-steps", "40",
    "--probes", "1", "--curvature", "no", "--device", "cpu", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stability") / "out"
    assert main([*TOY, "--out", str(out)]) == 0
    return out


def dense_reference():
    """H_emp and the per-sample Hessians at the run's weights (prepared again: deterministic)."""
    from nnhessian.reference import dense_hessian, dense_per_sample_hessians
    from validation.network.prepare import prepare, resolve_device
    from validation.stability import StabilityConfig, network_config

    config = StabilityConfig(samples=60, width=4, batch_sizes=(16,), train_epochs=1,
                             sgd_steps=20, seeds=2, batch_draws=3, lanczos_steps=40, probes=1,
                             curvature="no", device="cpu")  # fmt: skip
    prepared = prepare(network_config(config), device=resolve_device("cpu"), sharding=None,
                       state_dir=None, download=False)  # fmt: skip
    H = dense_hessian(prepared.model, prepared.data)
    H_i = dense_per_sample_hessians(prepared.model, prepared.data)
    return H.numpy(), H_i.numpy()


def test_outputs_and_predictions_equal_independent_computations(toy_run):
    results = json.loads((toy_run / "results.json").read_text())
    assert results["kind"] == "stability"
    for name in ("eta_max.csv", "measured.csv", "predictions.csv", "summary.csv", "stability.png"):
        assert name in results["files"]
    table = pd.read_csv(toy_run / "predictions.csv")
    measured = pd.read_csv(toy_run / "measured.csv")
    N, P = results["N"], results["P"]
    assert sorted(measured.B.unique()) == [16, N]
    H, H_i = dense_reference()
    w, U = np.linalg.eigh(H)
    lam, v = w[-1], U[:, -1]
    for mu in (0.0, 0.9):
        gd = table[(table.prediction == "gd") & (table.momentum == mu)].predicted
        np.testing.assert_allclose(gd, 2 * (1 + mu) / lam, rtol=1e-6)  # Lanczos top vs eigh
    a = v @ H @ v
    s2 = np.mean(np.sum((H_i @ v) ** 2, axis=1)) - a * a
    f = (N - 16) / (16 * (N - 1))
    wme = table[(table.prediction == "wu-ma-e") & (table.momentum == 0.0)].set_index("B")
    assert wme.predicted[16] == pytest.approx(2 * a / (a * a + f * s2), rel=1e-5)
    assert wme.predicted[N] == pytest.approx(2 / lam, rel=1e-6)
    t2 = theory.theorem2(results["lambda_max_full"], results["sigma2"], P, N, 16, factor="exact")
    row = table[(table.prediction == "theorem2") & (table.momentum == 0.9)].predicted.item()
    assert row == pytest.approx(3.8 / float(t2.predicted), rel=1e-12)
    seeds = pd.read_csv(toy_run / "eta_max.csv")
    assert ((seeds.hi / seeds.lo) <= 1.1 + 1e-12).all() and len(seeds) == 2 * 2 * 2
    median = seeds.assign(e=np.sqrt(seeds.lo * seeds.hi)).groupby(["B", "momentum"]).e.median()
    np.testing.assert_allclose(measured.set_index(["B", "momentum"]).eta_max, median)
    summary = pd.read_csv(toy_run / "summary.csv")
    assert set(summary.source) == {"stability"}
    assert summary.quantity.str.contains("scaling exponent").sum() == 4


def test_rerun_is_bit_identical(toy_run, tmp_path):
    out = tmp_path / "again"
    assert main([*TOY, "--out", str(out)]) == 0
    first = pd.read_csv(toy_run / "eta_max.csv")
    pd.testing.assert_frame_equal(first, pd.read_csv(out / "eta_max.csv"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--factor", "1"], "--factor"),
        (["--seeds", "0"], "--seeds"),
        (["--momentum", "1.5"], "--momentum"),
        (["--batch-draws", "1"], "--batch-draws"),
        (["--batch-sizes", "60"], "every B must be < N"),
        (["--batch-sizes", "61"], "exceeds the data set size"),
        (["--model", "nope"], "nope"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main([*TOY, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()
