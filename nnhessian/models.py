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

``build(name, num_classes, **options)`` is the registry; the CIFAR-100 models of the paper
("vgg16", "preresnet110") join it later. Unknown names raise ``ValueError`` listing known ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "build", "available", "num_parameters"]


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
    torch's global RNG): every parameter is re-drawn from PyTorch's default initialisation law
    for its layer (uniform ``+-1/sqrt(fan_in)``), BatchNorm weights set to 1 and biases to 0.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
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
