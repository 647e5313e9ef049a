"""A network at given weights: reading weight files, checking the model against the data and the
weights for finiteness, the mean loss, and a short deterministic SGD run off the initialisation.

Every check raises :class:`WeightsError` with one line naming the problem (the command line turns
it into exit status 2). Nothing here writes the model except :func:`load_state_dict_file` (the
weights asked for) and :func:`train_briefly` (which trains it, by definition).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from nnhessian.checkpoint import tensor_sha256


class WeightsError(ValueError):
    """Weights that cannot be used: unreadable, not fitting the model or the data, not finite."""


def one_line(err: BaseException, limit: int = 240) -> str:
    """The message of ``err`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_weights_file(path):
    """The content of a ``torch.save`` file (``weights_only``: tensors and plain containers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error
        raise WeightsError(
            f"checkpoint {path} is not a readable torch.save file ({type(err).__name__}: "
            f"{one_line(err, 120)})"
        ) from None


def load_state_dict_file(model, path, obj=None) -> int | None:
    """Load a plain ``torch.save`` file (a state_dict, or a dict holding one under
    ``state_dict`` / ``model_state_dict`` / ``model``) into ``model``; return its epoch (None when
    not recorded). ``obj``: the file's content when already read."""
    if obj is None:
        obj = read_weights_file(path)
    epoch = None
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                epoch = obj.get("epoch")
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"checkpoint {path} holds no state_dict (expected a dict of tensors, or a dict with "
            "one under 'state_dict', 'model_state_dict' or 'model')"
        )
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise WeightsError(
            f"checkpoint {path} does not fit model {type(model).__name__}: {one_line(err)}"
        ) from None
    if isinstance(epoch, torch.Tensor):
        epoch = epoch.item()
    return int(epoch) if isinstance(epoch, int | float) and math.isfinite(epoch) else None


def check_finite_weights(model) -> None:
    """Every floating parameter and buffer finite: the Hessian is undefined at NaN or inf."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsError(
                f"the weights contain NaN or inf (in {name}); the Hessian is undefined there"
            )


def check_model_fits_data(model, data, *, model_name: str, data_name: str) -> None:
    """One forward pass on two samples: the model must accept the inputs and give the classes."""
    X = data.X[:2]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(X)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise WeightsError(
            f"model {model_name!r} does not fit data {data_name!r} (inputs of shape "
            f"{tuple(data.X.shape[1:])}, {data.num_classes} classes): {one_line(err, 160)}"
        ) from None
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, data.num_classes):
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise WeightsError(
            f"model {model_name!r} does not fit data {data_name!r}: it outputs shape "
            f"{shape} per sample, the data has {data.num_classes} classes"
        )


def mean_loss(model, data, *, chunk: int) -> float:
    """Cross-entropy over all samples in eval mode (the loss whose Hessian is measured)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, len(data), chunk):
                X, y = data.X[s : s + chunk], data.y[s : s + chunk]
                total += float(F.cross_entropy(model(X), y, reduction="sum"))
    finally:
        for m, flag in flags:
            m.training = flag
    return total / len(data)


def accuracy(model, data, *, chunk: int) -> float:
    """Fraction of samples whose largest output is their label (eval mode, as it is called)."""
    with torch.no_grad():
        correct = sum(
            int((model(data.X[s : s + chunk]).argmax(1) == data.y[s : s + chunk]).sum())
            for s in range(0, len(data), chunk)
        )
    return correct / len(data)


def train_briefly(
    model, data, *, epochs: int, batch_size: int, lr: float, momentum: float, generator, chunk: int
) -> dict:
    """Deterministic SGD with momentum: ``epochs`` passes over permutations from ``generator``.

    A short schedule that moves the weights off their initialisation (the paper trains for
    hundreds of epochs; here the point is a realistic non-random point in weight space). The
    model is trained in its train mode (BatchNorm on batch statistics) and left in eval mode.
    ``chunk``: samples per forward pass of the loss before and after (memory only).
    """
    N = len(data)
    before = mean_loss(model, data, chunk=chunk)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    steps = 0
    for _ in range(epochs):
        perm = torch.randperm(N, generator=generator).to(data.X.device)
        for s in range(0, N, batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.X[idx]), data.y[idx]).backward()
            opt.step()
            steps += 1
    model.eval()
    return {
        "epochs": epochs,
        "sgd_steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "loss_at_init": before,
        "loss_after": mean_loss(model, data, chunk=chunk),
        "train_accuracy_after": accuracy(model, data, chunk=chunk),
    }


def model_digest(model) -> str:
    """SHA-256 over the names and contents of the model's state_dict (provenance, state keys)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_sha256(t).encode())
    return h.hexdigest()
