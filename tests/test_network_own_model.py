"""A researcher's own model through the Python API (``compare_spectra``) and the command line
(``--model package.module:callable``, ``--data package.module:callable``), checked against the
dense reference Hessian; bad specifications give one line and exit status 2."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from nnhessian.data import InMemoryDataset
from nnhessian.reference import dense_hessian
from tests.helpers import TwoLayer, assert_refused, two_layer_data
from tests.tolerances import network_eig_atol
from validation.cli import main
from validation.errors import UsageError
from validation.network import compare_spectra

N, D, C = 90, TwoLayer.in_features, TwoLayer.num_classes
OPTIONS = dict(batch_sizes=(10, 30), steps=200, probes=2, sigma2_probes=2, exact="yes", threads=1)


def toy_data():
    return two_layer_data(N)


def own_model(seed=0):
    torch.manual_seed(seed)
    return TwoLayer()


def _exact(model, X, y, idx=None):
    H = dense_hessian(model, InMemoryDataset(X, y, C), idx)
    return torch.linalg.eigvalsh(H).numpy(), float(torch.linalg.matrix_norm(H, 2))


@pytest.fixture(scope="module")
def api_run():
    X, y = toy_data()
    return own_model(), X, y, compare_spectra(own_model(), (X, y), **OPTIONS)


def test_api_lanczos_extremes_equal_the_dense_reference(api_run):
    model, X, y, comparison = api_run
    result = comparison.result
    assert result.P == 81 and result.N == N and result.steps == 81
    eig, norm = _exact(model, X, y)
    tol = network_eig_atol(norm, result.P)
    assert abs(result.full.extreme("max")[0] - eig[-1]) <= tol
    assert abs(result.full.extreme("min")[0] - eig[0]) <= tol
    for B, idx in result.batch_indices.items():
        eig_b, norm_b = _exact(model, X, y, idx)
        assert abs(result.batches[B].extreme("max")[0] - eig_b[-1]) <= network_eig_atol(norm_b, 81)


def test_api_returns_the_tidy_table_and_leaves_the_model_alone(api_run):
    model, _, _, comparison = api_run
    summary = comparison.summary
    theorem2 = summary[summary.check == "theorem2"]
    assert len(theorem2) == 4  # lambda_max and lambda_min for each of the two B
    lanczos = summary[summary.check == "lanczos-exact"]
    assert (lanczos.verdict == "agrees").all() and len(lanczos) == 2 * (1 + 2 * 2)
    # the caller's module is measured on a copy: weights and mode unchanged
    fresh = own_model()
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert comparison.result.weights == {"kind": "given module"}


def test_api_refuses_unknown_options_and_shuffled_loaders():
    X, y = toy_data()
    with pytest.raises(UsageError, match="unknown option"):
        compare_spectra(own_model(), (X, y), batchsizes=(10,))
    shuffled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), 30, shuffle=True)
    with pytest.raises(UsageError, match="two passes over the loader gave different samples"):
        compare_spectra(own_model(), shuffled, **OPTIONS)


def test_api_reads_a_deterministic_loader_like_tensors(api_run):
    _, X, y, comparison = api_run
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=32)
    again = compare_spectra(own_model(), loader, **OPTIONS)
    assert np.array_equal(again.result.full.nodes, comparison.result.full.nodes, equal_nan=True)


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "ownmodels.py").write_text(
        textwrap.dedent(
            f"""
            import torch
            from tests.helpers import TwoLayer, two_layer_data

            def make(num_classes, input_shape):
                assert num_classes == {C} and input_shape == ({D},)
                return TwoLayer()

            def data():
                return two_layer_data({N})

            def not_a_module(num_classes, input_shape):
                return 42

            def broken():
                raise RuntimeError("disk on fire")

            VALUE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_cli_model_and_data_callables_equal_the_api(tmp_path, user_module, api_run):
    _, _, _, comparison = api_run
    out = tmp_path / "run"
    args = ["network", "--model", "ownmodels:make", "--data", "ownmodels:data", "--out", str(out)]
    args += ["--train-epochs", "0", "--batch-sizes", "10", "30", "--steps", "200", "--probes", "2"]
    args += ["--sigma2-probes", "2", "--exact", "yes", "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "ownmodels:make" and results["P"] == 81
    # seed 0 -> torch.manual_seed(0) before the callable: the API's model, the same numbers
    ritz = pd.read_csv(out / "ritz.csv")
    full = ritz[ritz.operator == "full"].sort_values(["probe", "value"])
    expected = comparison.tables.ritz
    expected = expected[expected.operator == "full"].sort_values(["probe", "value"])
    np.testing.assert_array_equal(full.value.to_numpy(), expected.value.to_numpy())


BAD_SPECS = [
    (["--model", "no_such_module_xyz:make"], "cannot import no_such_module_xyz"),
    (["--model", "ownmodels:missing"], "has no attribute 'missing'"),
    (["--model", "ownmodels:VALUE"], "VALUE is a int, not callable"),
    (["--model", "ownmodels:not_a_module"], "returned a int; expected a torch.nn.Module"),
    (["--model", "ownmodels:"], "expected package.module:callable"),
    (["--data", "ownmodels:broken"], "raised RuntimeError: disk on fire"),
    (["--data", "ownmodels:make"], "--data ownmodels:make() raised TypeError"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SPECS)
def test_bad_callables_are_one_line_exit_2(tmp_path, capsys, user_module, args, message):
    out = tmp_path / "network"
    data = [] if "--data" in args else ["--data", "ownmodels:data"]
    argv = ["network", *args, *data, "--batch-sizes", "10", "--out", str(out), "--quiet"]
    assert_refused(capsys, argv, message, out)
