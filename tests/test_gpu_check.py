"""benchmarks/gpu_check.py: the GPU check script runs end to end at toy size on the CPU.

The real check (VGG16, 50,000 images, one GPU) is run by hand or with ``tox -e gpu``; here the
same code path runs on a channel-reduced VGG16 and 64 images, and the VGG16 it would build has
the paper's parameter count. Every product ``H v`` the script computes at the smoke size is
compared with a float64 reference built without nnhessian (plain autograd, double backward, on a
float64 copy of the same model and data, ``tests.helpers.flat_loss``). The script's own time limit
is set out of reach (``NO_TIME_LIMIT``): what runs must not depend on how busy the machine is.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from nnhessian.operators import HessianOperator
from tests.helpers import F64, flat_loss, rel_err
from tests.tolerances import GPU_REORDER_RTOL32, HVP_RTOL32

ROOT = Path(__file__).resolve().parents[1]
NO_TIME_LIMIT = "1e9"  # --time-limit in seconds (32 years): no stage is ever skipped for time


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
    # CPU products are bitwise reproducible; on a GPU reductions may reorder
    rtol = 0.0 if res["config"]["device"] == "cpu" else GPU_REORDER_RTOL32
    assert abs(cached["norm_Hv"] - plain["norm_Hv"]) <= rtol * plain["norm_Hv"]
    assert res["lanczos"]["graph_cache"]["hits"] > 0
    assert res["basis"]["basis_bytes"] == basis * P * 4
    lz = res["lanczos"]
    assert lz["steps"] == steps and len(lz["ritz_values"]) == steps
    assert lz["ritz_min"] <= lz["ritz_max"] and 0 <= lz["overhead_share"] < 1
    assert on_disk["provenance"]["torch"] == torch.__version__
    assert res["config"]["time_limit"] == float(NO_TIME_LIMIT)  # the option reached the run


def record_products(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every ``(v, H v)`` a HessianOperator computes from now on (the script's operators too)."""
    seen = []
    real = HessianOperator.matvec

    def recording(op, v):
        out = real(op, v)
        seen.append((v.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(HessianOperator, "matvec", recording)
    return seen


def reference_product(mod, args: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v, H v)`` for the script's vector ``v`` (float32, as the script uses it), with ``H``
    the Hessian of the mean cross-entropy of the script's model and data, in float64 by plain
    autograd: the gradient's directional derivative by a second reverse pass (eval mode)."""
    seed, images, classes = args["seed"], args["images"], args["classes"]
    g = torch.Generator().manual_seed(seed)  # the script's data, drawn as it draws them
    X = torch.randn(images, 3, 32, 32, generator=g, dtype=torch.float32)
    y = torch.randint(0, classes, (images,), generator=g)
    model, _ = mod.build_model(args["model"], classes, seed)
    f, theta0 = flat_loss(model, [(X, y)], [1.0])
    v = torch.randn(theta0.numel(), generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    v = (v / torch.linalg.vector_norm(v)).float()
    theta = theta0.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(theta), theta, create_graph=True)
    (hv,) = torch.autograd.grad(grad @ v.double(), theta)
    return v, hv


def test_cpu_smoke_run_matches_a_float64_reference_hvp(tmp_path, capsys, monkeypatch):
    out = tmp_path / "gpu_check.json"
    products = record_products(monkeypatch)
    res = gpu_check().main(
        [
            *("--device", "cpu", "--model", "vgg16-small", "--images", "64"),
            *("--batch-size", "32", "--steps", "3", "--basis", "5", "--out", str(out)),
            *("--time-limit", NO_TIME_LIMIT),
        ]
    )
    check_result(res, out, basis=5, steps=3)
    printed = capsys.readouterr().out
    assert "HVP double-backward" in printed and "Lanczos 3 steps" in printed

    v, hv_ref = reference_product(gpu_check(), res["config"])
    of_v = [hv for u, hv in products if torch.equal(u, v)]
    # at least a warm-up, --repeats timed and one repeat for each of the three operators
    assert len(of_v) >= 3 * (res["config"]["repeats"] + 2)
    errors = [rel_err(hv.double(), hv_ref) for hv in of_v]
    assert max(errors) <= HVP_RTOL32
    print(f"gpu_check smoke HVPs vs float64 autograd: max relative error {max(errors):.1e}")
    norm = float(torch.linalg.vector_norm(hv_ref))
    for label, h in res["hvp"].items():
        assert abs(h["norm_Hv"] - norm) <= HVP_RTOL32 * norm, label


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
        [
            *("--device", "cpu", "--images", "256", "--steps", "3", "--basis", "5"),
            *("--time-limit", NO_TIME_LIMIT, "--out", str(out)),
        ]
    )
    assert res["model"]["P"] == 15_291_300
    check_result(res, out, basis=5, steps=3)


@pytest.mark.gpu
def test_gpu_run_at_small_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = gpu_check().main(
        [
            *("--device", "cuda", "--images", "1000", "--steps", "3", "--basis", "10"),
            *("--time-limit", NO_TIME_LIMIT, "--out", str(out)),
        ]
    )
    check_result(res, out, basis=10, steps=3)
    assert res["basis"]["peak_bytes"] >= res["basis"]["basis_bytes"]
