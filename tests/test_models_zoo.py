"""nnhessian.models zoo: the paper's CIFAR-100 networks (exact P, structure, initialisation)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nnhessian.models import INPUT_SHAPES, PreActBottleneck, available, build, num_parameters
from tests.tolerances import HVP_SYMMETRY_RTOL64, Z_STAT

# VGG16 convolutions, (in, out) per 3x3 layer with bias: sum of (9 in + 1) out.
VGG16_CONV = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
              (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]  # fmt: skip
VGG16_CONV_P = sum((9 * i + 1) * o for i, o in VGG16_CONV)  # 14,714,688
VGG16_BN_P = sum(2 * o for _, o in VGG16_CONV)  # 8,448: BatchNorm weight + bias per channel


def vgg16_P(classes: int, bn: bool = False) -> int:
    """Convolutions + two hidden 512x512 linear layers + the (512 + 1) x classes output."""
    return VGG16_CONV_P + 2 * (512 * 512 + 512) + 513 * classes + (VGG16_BN_P if bn else 0)


def preresnet110_P(classes: int) -> int:
    """Itemised: stem conv, 3 stages x 12 bottlenecks (1x1, 3x3, 1x1 convs, 3 BNs on their
    inputs), a 1x1 projection in each stage's first block, final BN(256), Linear(256, classes)."""
    total = 3 * 16 * 9  # stem conv3x3, no bias
    inplanes = 16
    for planes in (16, 32, 64):
        out = 4 * planes
        for k in range(12):
            total += inplanes * planes + 9 * planes * planes + planes * out  # three convs
            total += 2 * inplanes + 2 * planes + 2 * planes  # bn1, bn2, bn3
            if k == 0:
                total += inplanes * out  # projection shortcut
            inplanes = out
    return total + 2 * 256 + 257 * classes


def test_itemised_counts_are_the_papers():
    assert VGG16_CONV_P == 14_714_688 and VGG16_BN_P == 8_448
    assert vgg16_P(100) == 15_291_300  # paper, section 4
    assert preresnet110_P(100) == 1_169_972  # paper, section 4


@pytest.mark.parametrize(
    ("name", "P100", "P10"),
    [
        ("vgg16", 15_291_300, vgg16_P(10)),
        ("vgg16bn", 15_299_748, vgg16_P(10, bn=True)),
        ("preresnet110", 1_169_972, preresnet110_P(10)),
    ],
)
def test_exact_parameter_counts(name, P100, P10):
    assert num_parameters(build(name, 100)) == P100
    assert num_parameters(build(name, 10)) == P10


def test_registry_lists_the_zoo_and_rejects_unknown_names():
    assert {"vgg16", "vgg16bn", "preresnet110", "mlp", "cnn", "cnn_bn"} <= set(available())
    with pytest.raises(ValueError, match=r"unknown model 'vgg19'; known models: .*preresnet110"):
        build("vgg19", 100)
    assert INPUT_SHAPES["vgg16"] == INPUT_SHAPES["preresnet110"] == (3, 32, 32)


def test_structure():
    vgg = build("vgg16", 100)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in vgg.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 16  # "16 Layer VGG"
    assert [(c.in_channels, c.out_channels) for c in convs] == VGG16_CONV
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    assert sum(isinstance(m, nn.Dropout) for m in vgg.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in build("vgg16bn", 100).modules()) == 13
    res = build("preresnet110", 100)
    blocks = [m for m in res.modules() if isinstance(m, PreActBottleneck)]
    assert len(blocks) == 36  # 12 per stage
    assert sum(b.downsample is not None for b in blocks) == 3
    # depth 110 (the paper's name) = the weight layers on the main path, counted in the model:
    # every convolution but the 3 projection shortcuts, plus the classifier
    projections = [b.downsample for b in blocks if b.downsample is not None]
    shortcuts = sum(isinstance(m, nn.Conv2d) for p in projections for m in p.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in res.modules())
    linears = sum(isinstance(m, nn.Linear) for m in res.modules())
    assert shortcuts == 3 and convs - shortcuts + linears == 110
    assert all(not getattr(m, "inplace", False) for m in (*vgg.modules(), *res.modules()))


@pytest.mark.parametrize("name", ["vgg16", "vgg16bn", "preresnet110"])
def test_forward_shape(name):
    model = build(name, 100, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert out.shape == (1, 100) and bool(torch.isfinite(out).all())


def test_generator_makes_initialisation_reproducible():
    a = build("preresnet110", 100, generator=torch.Generator().manual_seed(3))
    b = build("preresnet110", 100, generator=torch.Generator().manual_seed(3))
    c = build("preresnet110", 100, generator=torch.Generator().manual_seed(4))
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["layer3.0.conv2.weight"], state_c["layer3.0.conv2.weight"])


def test_he_initialisation_law():
    vgg = build("vgg16", 100, generator=torch.Generator().manual_seed(0))
    conv = vgg.features[-3]  # the last 3x3 convolution, 512 -> 512: n = 2,359,296 draws
    assert isinstance(conv, nn.Conv2d)
    w = conv.weight.detach().double()
    n, s = w.numel(), math.sqrt(2 / (9 * 512))  # N(0, 2 / (k^2 out_channels))
    assert abs(float(w.std(correction=0)) / s - 1) <= Z_STAT / math.sqrt(2 * n)
    assert abs(float(w.mean())) <= Z_STAT * s / math.sqrt(n)
    assert float(conv.bias.detach().abs().max()) == 0.0
    lin = vgg.classifier[4]  # Linear(512, 512): uniform on +-1/sqrt(512)
    v = lin.weight.detach().double()
    bound, n = 512**-0.5, v.numel()
    assert float(v.abs().max()) <= bound
    assert abs(float((v**2).mean()) / (bound**2 / 3) - 1) <= Z_STAT * math.sqrt(0.8 / n)
    res = build("preresnet110", 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.bn.weight, torch.ones(256)) and torch.equal(
        res.bn.bias, torch.zeros(256)
    )
    assert res.layer1[0].conv1.bias is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["preresnet110", "vgg16bn"])
def test_hessian_operator_runs_on_the_zoo(name, tmp_path):
    """A full-data HVP on 4 miniature CIFAR images, and its symmetry <u, Hv> = <Hu, v>."""
    from nnhessian import HessianOperator
    from nnhessian.cifar import load_cifar100, write_miniature_cifar100

    write_miniature_cifar100(tmp_path, 4, 2, 0)
    data = load_cifar100(tmp_path, limit=4, dtype=torch.float64)
    model = build(name, 100, generator=torch.Generator().manual_seed(0)).double()
    op = HessianOperator.full(model, data, batch_size=4, dtype=torch.float64, device="cpu")
    g = torch.Generator().manual_seed(1)
    u = torch.randn(op.dim, generator=g, dtype=torch.float64)
    v = torch.randn(op.dim, generator=g, dtype=torch.float64)
    hu, hv = op.matvec(u), op.matvec(v)
    assert op.dim == num_parameters(model)
    assert float((u @ hv - hu @ v).abs()) <= HVP_SYMMETRY_RTOL64 * float(u.norm() * hv.norm())
