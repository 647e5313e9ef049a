"""benchmarks/gpu_check.py: the GPU check script runs end to end at toy size on the CPU.

The real check (VGG16, 50,000 images, one GPU) is run by hand or with ``tox -e gpu``; here the
same code path runs on a channel-reduced VGG16 and 64 images, and the VGG16 it would build has
the paper's parameter count.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.tolerances import EPS32

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_vgg16_has_the_papers_parameter_count():
    mod = gpu_check()
    model, _ = mod.build_model("vgg16", 100, seed=0)
    assert num_params(model) == mod.P_VGG16_100 == 15_291_300
    assert num_params(mod.LocalVGG(mod.VGG16_CFG, 100)) == 15_291_300  # the fallback too


def check_result(res: dict, out: Path, *, basis: int, steps: int) -> None:
    on_disk = json.loads(out.read_text())
    assert on_disk["model"] == res["model"] and not res["skipped"]
    P = res["model"]["P"]
    assert res["grad"]["seconds"] > 0 and math.isfinite(res["grad"]["loss"])
    for method in ("double-backward", "forward-over-reverse"):
        h = res["hvp"][method]
        assert h["seconds"] > 0 and h["ratio_to_grad"] > 0 and h["norm_Hv"] > 0, h
    # the default operator keeps every batch graph (small sizes) and gives the same product
    mod = gpu_check()
    cached, plain = res["hvp"][mod.CACHED], res["hvp"]["double-backward"]
    batches = -(-res["config"]["images"] // res["config"]["batch_size"])
    assert cached["graph_cache"]["graphs"] == batches and cached["graph_cache"]["used_bytes"] > 0
    assert plain["graph_cache"]["graphs"] == 0
    # CPU products are bitwise reproducible; on a GPU reductions may reorder (1e3 eps, as in
    # HessianOperator.check_determinism)
    rtol = 0.0 if res["config"]["device"] == "cpu" else 1e3 * EPS32
    assert abs(cached["norm_Hv"] - plain["norm_Hv"]) <= rtol * plain["norm_Hv"]
    assert res["lanczos"]["graph_cache"]["hits"] > 0
    assert res["basis"]["basis_bytes"] == basis * P * 4
    lz = res["lanczos"]
    assert lz["steps"] == steps and len(lz["ritz_values"]) == steps
    assert lz["ritz_min"] <= lz["ritz_max"] and 0 <= lz["overhead_share"] < 1
    assert on_disk["provenance"]["torch"] == torch.__version__


def test_cpu_smoke_run_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    res = gpu_check().main(
        [
            *("--device", "cpu", "--model", "vgg16-small", "--images", "64"),
            *("--batch-size", "32", "--steps", "3", "--basis", "5", "--out", str(out)),
        ]
    )
    check_result(res, out, basis=5, steps=3)
    printed = capsys.readouterr().out
    assert "HVP double-backward" in printed and "Lanczos 3 steps" in printed


@pytest.mark.parametrize(
    "bad", [["--images", "0"], ["--graph-cache-gb", "-1"], ["--graph-cache-gb", "inf"]]
)
def test_bad_arguments_exit_with_status_2(tmp_path, bad):
    with pytest.raises(SystemExit) as err:
        gpu_check().parse_args([*bad, "--out", str(tmp_path / "x.json")])
    assert err.value.code == 2


@pytest.mark.slow
def test_cpu_run_of_full_vgg16_at_256_images(tmp_path):
    """The real model at the brief's smoke size: ~2-3 minutes on 2 CPU cores."""
    out = tmp_path / "gpu_check.json"
    res = gpu_check().main(
        ["--device", "cpu", "--images", "256", "--steps", "3", "--basis", "5", "--out", str(out)]
    )
    assert res["model"]["P"] == 15_291_300
    check_result(res, out, basis=5, steps=3)


@pytest.mark.gpu
def test_gpu_run_at_small_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = gpu_check().main(
        ["--device", "cuda", "--images", "1000", "--steps", "3", "--basis", "10", "--out", str(out)]
    )
    check_result(res, out, basis=10, steps=3)
    assert res["basis"]["peak_bytes"] >= res["basis"]["basis_bytes"]
