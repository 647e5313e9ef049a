"""nnhessian.models: registry, sizes, shapes, reproducible initialisation."""

from __future__ import annotations

import pytest
import torch

from nnhessian.models import available, build, num_parameters

# P for the defaults on 8x8 digits with 10 classes (documented in the module docstring):
# mlp 64*32+32 + 32*10+10; cnn 1*8*9+8 + 8*8*9+8 + 128*10+10; cnn_bn adds 2 * (8 + 8).
EXPECTED_P = {"mlp": 2410, "cnn": 1954, "cnn_bn": 1986}


@pytest.mark.parametrize("name", sorted(EXPECTED_P))
def test_registry_builds_small_models(name):
    model = build(name, 10)
    assert num_parameters(model) == EXPECTED_P[name]
    x = torch.zeros(5, 64) if name == "mlp" else torch.zeros(5, 1, 8, 8)
    assert model(x).shape == (5, 10)


def test_unknown_name_lists_known_models():
    known = "cnn, cnn_bn, mlp, preresnet110, vgg16, vgg16bn"
    with pytest.raises(ValueError, match=f"unknown model 'resnet18'; known models: {known}"):
        build("resnet18", 100)
    assert available() == ("cnn", "cnn_bn", "mlp", "preresnet110", "vgg16", "vgg16bn")


@pytest.mark.parametrize("bad", [1, 0, 2.0, True])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        build("mlp", bad)


def test_generator_makes_initialisation_reproducible():
    a = build("cnn_bn", 10, generator=torch.Generator().manual_seed(4))
    b = build("cnn_bn", 10, generator=torch.Generator().manual_seed(4))
    c = build("cnn_bn", 10, generator=torch.Generator().manual_seed(5))
    for (n, p), (_, q), (_, r) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), n
        if "weight" in n and p.ndim > 1:
            assert not torch.equal(p, r), n
            bound = p[0].numel() ** -0.5  # uniform on +-1/sqrt(fan_in)
            assert float(p.detach().abs().max()) <= bound


def test_options_reach_the_constructor():
    model = build("cnn_bn", 7, width=3, dropout=0.2)
    assert num_parameters(model) == (9 * 3 + 3) + (27 * 3 + 3) + 4 * 3 + (3 * 16 * 7 + 7)
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    mlp = build("mlp", 3, in_features=5, hidden=(4, 2))
    assert num_parameters(mlp) == (5 * 4 + 4) + (4 * 2 + 2) + (2 * 3 + 3)
