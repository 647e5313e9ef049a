"""Training with the paper's recipe: the learning-rate schedule, the SGD epoch and evaluation.

The recipe (paper, section 4): "We train a 16 Layer VGG CNN [20] with P = 15291300 parameters
and 110 Layer ResNet [7] with P = 1169972 parameters, architectures on the CIFAR-100 datasets
using SGD, with a learning rate of 0.1/0.05 respectively for [225, 300] epochs with a linearly
decaying learning rate from epochs [126, 161] with momentum rho = 0.9 and data-augmentation".

* Initial learning rate :data:`PAPER_LR`: 0.1 for VGG16, 0.05 for PreResNet-110 (paper).
  Epochs :data:`PAPER_EPOCHS`: 225 (VGG16) and 300 (PreResNet-110) (paper).
* Schedule (:func:`learning_rate`): constant, then linear decay, then constant, set per epoch.
  We read "for [225, 300] epochs with a linearly decaying learning rate from epochs [126, 161]"
  with the sentence's own "respectively": VGG16 decays from epoch 126 of 225, PreResNet-110 from
  epoch 161 of 300 (:data:`PAPER_DECAY_START`; both about 55% of training, as in the SWA
  schedule of Izmailov et al. 2018 this family of experiments uses), linearly to the end of
  training. The paper does not state the final value; the SWA schedule's is lr0 * 0.01. For
  other epoch counts the start is scaled (:func:`default_decay`).
* One epoch (:func:`train_epoch`): SGD over a fresh permutation of the training set drawn from
  an explicit ``torch.Generator``, training batches augmented from the same generator
  (:func:`nnhessian.datasets.training_batch`); :func:`evaluate` gives the test-set loss and
  accuracy without augmentation, in eval mode.
* :func:`model_options`: the constructor options that fit a model of :mod:`nnhessian.models` to
  the images of a data set.

The checkpoint format of a training run and the random-generator states it carries live in
:mod:`nnhessian.train_checkpoint`.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from nnhessian.datasets import TrainingData, test_batches, training_batch

__all__ = [
    "PAPER_DECAY_START",
    "PAPER_EPOCHS",
    "PAPER_LR",
    "TrainingError",
    "default_decay",
    "evaluate",
    "learning_rate",
    "model_options",
    "progress_bar",
    "train_epoch",
]

# Paper, section 4: epochs and initial learning rate per model ("0.1/0.05 respectively for
# [225, 300] epochs"); vgg16bn follows vgg16.
PAPER_EPOCHS = {"vgg16": 225, "vgg16bn": 225, "preresnet110": 300}
PAPER_LR = {"vgg16": 0.1, "vgg16bn": 0.1, "preresnet110": 0.05}
# Paper, section 4: "... for [225, 300] epochs with a linearly decaying learning rate from epochs
# [126, 161]": the epoch where the decay starts, per model (see the module docstring).
PAPER_DECAY_START = {"vgg16": 126, "vgg16bn": 126, "preresnet110": 161}


class TrainingError(ValueError):
    """A model does not fit the data or an option does not apply to it (one line)."""


# ---------------------------------------------------------------------------------------------
# The learning-rate schedule
# ---------------------------------------------------------------------------------------------


def default_decay(model: str, epochs: int) -> tuple[int, int]:
    """The paper's decay (from epoch 126 of 225 for VGG16, 161 of 300 for PreResNet-110, to the
    last epoch; paper, section 4) scaled to ``epochs``: (start, end) epoch indices.

    ``start = round(start_paper * epochs / epochs_paper)`` (models not in the paper use VGG16's
    126 / 225), ``end = epochs - 1``; a one-epoch run keeps lr0 (``start = end = 1``).
    """
    ref = model if model in PAPER_EPOCHS else "vgg16"
    start = round(PAPER_DECAY_START[ref] * epochs / PAPER_EPOCHS[ref])
    end = max(epochs - 1, 1)  # a one-epoch run keeps lr0
    return min(start, end), end


def learning_rate(
    epoch: int, *, lr: float, decay_start: int, decay_end: int, final_fraction: float
) -> float:
    """The learning rate of epoch index ``epoch`` (0-based): ``lr`` up to ``decay_start``, then
    linear down to ``lr * final_fraction`` reached at ``decay_end``, constant afterwards (the
    paper's linear decay, section 4; ``final_fraction = 0.01`` in the SWA schedule).

    ``lr ((1 - p) + f p)`` with ``p = clip((e - start) / (end - start), 0, 1)``; ``start == end``
    is a step."""
    if epoch >= decay_end:
        progress = 1.0
    elif epoch <= decay_start:
        progress = 0.0
    else:
        progress = (epoch - decay_start) / (decay_end - decay_start)
    return lr * ((1.0 - progress) + final_fraction * progress)


# ---------------------------------------------------------------------------------------------
# Model options
# ---------------------------------------------------------------------------------------------


def model_options(
    model: str, input_shape: tuple[int, int, int], *, data: str, dropout: float | None = None
) -> dict:
    """Constructor options of :func:`nnhessian.models.build` that fit ``model`` to images of
    ``input_shape`` (C, H, W) of data set ``data`` (named in messages); ``dropout`` when given.

    Raises :class:`TrainingError` (one line) when the model cannot take those images or has no
    dropout layers.
    """
    from nnhessian.models import INPUT_SHAPES

    c, h, w = input_shape
    need = INPUT_SHAPES.get(model)
    options: dict = {}
    if need is not None:
        if tuple(input_shape) != need:
            raise TrainingError(
                f"model {model} needs {need[0]}x{need[1]}x{need[2]} images (cifar100); "
                f"the {data} data are {c}x{h}x{w}; use mlp, cnn or cnn_bn for them"
            )
    elif model == "mlp":
        options["in_features"] = c * h * w
    else:  # cnn, cnn_bn
        if h != w or h % 2:
            raise TrainingError(f"model {model} needs square images of even size, got {h}x{w}")
        options.update(in_channels=c, image_size=h)
    if dropout is not None:
        if model == "preresnet110":
            raise TrainingError(
                "--dropout: preresnet110 has no dropout layers (vgg16 and small models do)"
            )
        options["dropout"] = dropout
    return options


# ---------------------------------------------------------------------------------------------
# One epoch, evaluation
# ---------------------------------------------------------------------------------------------


def progress_bar(iterable, enabled: bool, **kwargs):
    """``iterable`` itself, or a tqdm bar over it on stderr when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    *,
    lr: float,
    batch_size: int,
    augment: bool,
    generator: torch.Generator,
    device,
    progress: bool = False,
    desc: str = "epoch",
) -> dict:
    """One epoch of SGD at learning rate ``lr`` (set on every parameter group): a fresh
    permutation of the training set (``torch.randperm`` from ``generator``), batches of
    ``batch_size`` (the last one shorter), each augmented from ``generator`` when asked, mean
    cross-entropy per batch. Model in train mode.

    Returns ``{"train_loss", "train_accuracy"}``: the epoch's sample-weighted mean loss and
    accuracy on the batches as trained (augmented, weights moving).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    N = len(data.train_y)
    order = torch.randperm(N, generator=generator)
    starts = range(0, N, batch_size)
    bar = progress_bar(starts, progress, desc=desc, leave=False, unit="batch")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for k, start in enumerate(bar):
        idx = order[start : start + batch_size]
        X, y = training_batch(data, idx, augment=augment, generator=generator, device=device)
        logits = model(X)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = int(y.shape[0])
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += n
        if progress and (k % 10 == 0 or start + batch_size >= N):
            bar.set_postfix(
                loss=f"{float(loss_sum) / seen:.3f}",
                acc=f"{int(correct) / seen:.3f}",
                lr=f"{lr:.4g}",
            )
    return {"train_loss": float(loss_sum) / seen, "train_accuracy": int(correct) / seen}


def evaluate(model: torch.nn.Module, data: TrainingData, device) -> dict:
    """Test-set mean cross-entropy and accuracy (:func:`nnhessian.datasets.test_batches`),
    model in eval mode (its mode restored afterwards): ``{"test_loss", "test_accuracy"}``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for X, y in test_batches(data, device):
            logits = model(X)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum").double())
            correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    n = len(data.test_y)
    return {"test_loss": loss_sum / n, "test_accuracy": correct / n}
