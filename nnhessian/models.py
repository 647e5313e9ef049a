"""Small CPU networks whose exact dense Hessian is cheap, and the model registry.

All small models use smooth activations (tanh) and average pooling, so the loss is infinitely
differentiable in the weights and the Hessian is defined everywhere (ReLU/max-pool Hessians exist
only almost everywhere and drop the activation's second-derivative term). With the defaults on
the 8x8 digits (64 features, 10 classes):

=========  ==============================================================  ======
name       layers                                                          P
=========  ==============================================================  ======
mlp        64 -> 32 -> 10, tanh                                            2410
cnn        conv3x3(1->8) tanh conv3x3(8->8) tanh avgpool2 linear(128->10)  1954
cnn_bn     as cnn with BatchNorm2d after each conv (+ optional dropout)    1986
=========  ==============================================================  ======

The CIFAR-100 networks of the paper (section 4: "a 16 Layer VGG CNN [20] with P = 15291300
parameters and 110 Layer ResNet [7] with P = 1169972 parameters"), for 3x32x32 inputs:

============  ==========================================================================  ==========
name          layers                                                                      P (100 cl)
============  ==========================================================================  ==========
vgg16         13 conv3x3 + ReLU, cfg 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M (no BN);   15,291,300
              classifier Dropout 512->512 ReLU Dropout 512->512 ReLU 512->num_classes
vgg16bn       as vgg16 with BatchNorm2d after every convolution                          15,299,748
preresnet110  conv3x3(3->16), 3 stages x 12 pre-activation bottleneck blocks (16, 32, 64   1,169,972
              planes, expansion 4, stride 2 at stages 2 and 3, 1x1 projection shortcut
              where the shape changes), BN ReLU, global average pool, linear 256->classes
============  ==========================================================================  ==========

These are the CIFAR variants of the SWA code base (timgaripov/swa, ``models/vgg.py`` and
``models/preresnet.py``) and of Wei Yang's pytorch-classification, which the paper's counts match
exactly (itemised in ``tests/test_models_zoo.py``):
P(vgg16) = 14,714,688 (convolutions) + 2 x 262,656 (hidden linear) + 513 num_classes,
P(vgg16bn) = P(vgg16) + 8,448 (BatchNorm weights and biases),
P(preresnet110) = 1,128,112 (convolutions) + 16,160 (BatchNorm) + 257 num_classes.
They use ReLU (and max pooling in VGG), so their Hessians exist only almost everywhere (the usual
setting of the paper).
Their initialisation is the one of those code bases: convolutions N(0, 2 / (k^2 out_channels))
(He et al. 2015, fan-out), biases 0, BatchNorm weight 1 and bias 0, linear layers PyTorch's default
uniform +-1/sqrt(fan_in).

``build(name, num_classes, **options)`` is the registry. Unknown names raise ``ValueError``
listing known ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "INPUT_SHAPES",
    "MLP",
    "PreActBottleneck",
    "PreResNet",
    "SmallCNN",
    "VGG",
    "VGG16_CFG",
    "available",
    "build",
    "he_initialize",
    "num_parameters",
]


def num_parameters(model: nn.Module) -> int:
    """P: the number of trainable scalar parameters (the Hessian's dimension)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class MLP(nn.Module):
    """Fully connected network ``in -> hidden[0] -> ... -> num_classes`` with tanh activations.

    Inputs of any shape ``(n, ...)`` are flattened to ``(n, in_features)``.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] | int = (32,),
        num_classes: int = 10,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for w in widths:
            layers += [nn.Linear(prev, w), nn.Tanh()]
            prev = w
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (padding 1) with tanh, 2x2 average pooling, one linear classifier.

    ``batch_norm`` inserts ``BatchNorm2d`` after each convolution (affine, running statistics
    tracked); ``dropout`` > 0 adds ``Dropout`` before the classifier. Input ``(n, C, S, S)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        width: int = 8,
        image_size: int = 8,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % 2:
            raise ValueError(f"image_size must be even (2x2 pooling), got {image_size}")
        feats: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
        if batch_norm:
            feats.append(nn.BatchNorm2d(width))
        feats += [nn.Tanh(), nn.Conv2d(width, width, 3, padding=1)]
        if batch_norm:
            feats.append(nn.BatchNorm2d(width))
        feats += [nn.Tanh(), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*feats)
        head: list[nn.Module] = [nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(width * (image_size // 2) ** 2, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------
# The paper's CIFAR-100 networks
# ---------------------------------------------------------------------------------------------

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """CIFAR VGG: 3x3 convolutions (padding 1) + ReLU, 2x2 max pooling at each ``"M"``.

    With :data:`VGG16_CFG` a 32x32 input leaves a 512x1x1 feature map; the classifier is
    ``Dropout, Linear(512, 512), ReLU, Dropout, Linear(512, 512), ReLU, Linear(512, classes)``.
    ``batch_norm`` inserts ``BatchNorm2d`` after each convolution. ReLUs are not in-place, so
    double-backward and ``torch.func`` transforms (Hessian passes) work on the module.
    """

    def __init__(
        self,
        cfg: tuple[int | str, ...] = VGG16_CFG,
        num_classes: int = 100,
        *,
        batch_norm: bool = False,
        dropout: float = 0.5,
        in_channels: int = 3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(prev, int(v), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU())
            prev = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(prev, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        he_initialize(self, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al. 2016, "Identity mappings"): BN-ReLU-conv1x1,
    BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 to ``4 planes``, plus the shortcut (identity, or a
    bias-free 1x1 convolution of the block's input where the shape changes)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreResNet(nn.Module):
    """CIFAR pre-activation ResNet of depth ``9 n + 2`` with bottleneck blocks (depth >= 44).

    conv3x3(in -> 16), three stages of ``n`` :class:`PreActBottleneck` blocks with 16, 32, 64
    planes (outputs 64, 128, 256 channels; stride 2 entering stages 2 and 3), then BN, ReLU,
    global average pooling (8x8 on 32x32 inputs) and ``Linear(256, num_classes)``.
    Depth 110 gives n = 12 blocks per stage.
    """

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 100,
        *,
        in_channels: int = 3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if depth < 44 or (depth - 2) % 9:
            raise ValueError(f"bottleneck PreResNet depth must be 9 n + 2 >= 44, got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        inplanes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for k in range(n):
                blocks.append(PreActBottleneck(inplanes, planes, stride if k == 0 else 1))
                inplanes = planes * PreActBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(inplanes)
        self.fc = nn.Linear(inplanes, num_classes)
        he_initialize(self, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1))


@torch.no_grad()
def he_initialize(model: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
    """The zoo's initialisation: conv weights N(0, 2 / (k_h k_w out_channels)), conv biases 0;
    BatchNorm weight 1, bias 0 (running statistics reset); linear layers uniform on
    +-1/sqrt(fan_in) (PyTorch's default law). Draws come from ``generator`` (CPU) when given,
    otherwise from torch's global generator, in float32, in module order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            draw = torch.randn(m.weight.shape, generator=generator, dtype=torch.float32)
            m.weight.copy_(draw * (2.0 / k) ** 0.5)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Linear):
            bound = m.in_features**-0.5
            for p in (m.weight, m.bias):
                if p is not None:
                    draw = torch.rand(p.shape, generator=generator, dtype=torch.float32)
                    p.copy_((2 * draw - 1) * bound)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return model


def _vgg16(num_classes: int, *, generator=None, **options) -> nn.Module:
    return VGG(VGG16_CFG, num_classes, batch_norm=False, generator=generator, **options)


def _vgg16bn(num_classes: int, *, generator=None, **options) -> nn.Module:
    return VGG(VGG16_CFG, num_classes, batch_norm=True, generator=generator, **options)


def _preresnet110(num_classes: int, *, generator=None, **options) -> nn.Module:
    return PreResNet(110, num_classes, generator=generator, **options)


def _mlp(num_classes: int, **options) -> nn.Module:
    return MLP(num_classes=num_classes, **options)


def _cnn(num_classes: int, **options) -> nn.Module:
    return SmallCNN(num_classes=num_classes, **options)


def _cnn_bn(num_classes: int, **options) -> nn.Module:
    options.setdefault("batch_norm", True)
    return SmallCNN(num_classes=num_classes, **options)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "cnn_bn": _cnn_bn,
    "vgg16": _vgg16,
    "vgg16bn": _vgg16bn,
    "preresnet110": _preresnet110,
}

# Models that draw their own initialisation (from ``generator`` when given) in the constructor.
_SELF_INITIALISING = frozenset({"vgg16", "vgg16bn", "preresnet110"})

# Input shape (C, H, W) a model needs, where it is fixed; the small models adapt via options.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "vgg16": (3, 32, 32),
    "vgg16bn": (3, 32, 32),
    "preresnet110": (3, 32, 32),
}


def available() -> tuple[str, ...]:
    """Names accepted by :func:`build`."""
    return tuple(sorted(_REGISTRY))


def build(
    name: str, num_classes: int, *, generator: torch.Generator | None = None, **options
) -> nn.Module:
    """Construct a registered model by name.

    ``options`` go to the model's constructor (e.g. ``hidden=``, ``width=``, ``dropout=``).
    With a ``generator`` the initial weights are drawn from it (reproducible without touching
    torch's global RNG). Small models: every parameter is re-drawn from PyTorch's default
    initialisation law for its layer (uniform ``+-1/sqrt(fan_in)``), BatchNorm weights set to 1
    and biases to 0. Zoo models (vgg16, vgg16bn, preresnet110) draw their own initialisation
    (:func:`he_initialize`) from the generator, or from torch's global generator without one.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name in _SELF_INITIALISING:
        return _REGISTRY[name](num_classes, generator=generator, **options)
    model = _REGISTRY[name](num_classes, **options)
    if generator is not None:
        reinitialize(model, generator=generator)
    return model


@torch.no_grad()
def reinitialize(model: nn.Module, *, generator: torch.Generator) -> nn.Module:
    """Redraw all Linear/Conv weights and biases uniform on +-1/sqrt(fan_in) from ``generator``.

    This is the law of PyTorch's default initialisation (kaiming_uniform with a = sqrt(5) gives
    bound 1/sqrt(fan_in)); BatchNorm weights are set to 1, biases to 0, running stats reset.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fan_in = m.weight[0].numel()
            bound = fan_in**-0.5
            for p in (m.weight, m.bias):
                if p is not None:
                    draw = torch.rand(p.shape, generator=generator, dtype=torch.float64)
                    p.copy_((2 * draw - 1) * bound)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return model
