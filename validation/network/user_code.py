"""A researcher's own model and data, named on the command line as ``package.module:callable``.

* ``--model package.module:callable``: called as ``callable(num_classes, input_shape)`` (the
  input shape of one sample, e.g. ``(1, 8, 8)``) with torch's global RNG seeded from ``--seed``
  (so a model that initialises itself with torch's defaults is reproducible); it must return a
  ``torch.nn.Module`` mapping a batch of inputs to ``(batch, num_classes)`` logits;
* ``--data package.module:callable``: called with no argument; it returns ``(X, y)`` tensors, an
  ``nnhessian.InMemoryDataset``, or a deterministic ``torch.utils.data.DataLoader`` (or any
  iterable of ``(X, y)`` batches) that is read once into memory and must give the same samples on
  a second pass.

A bad import path, a name that is not callable, an exception inside the callable, or a wrong
return type: one ``UsageError`` line naming it. The module is imported from ``sys.path`` (the
current folder first, as ``python -m`` puts it there).
"""

from __future__ import annotations

import importlib
import re

from validation.errors import UsageError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_spec(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:callable`` (not a registered name)."""
    return ":" in name


def load_callable(spec: str, option: str):
    """The object ``spec`` = ``package.module:attribute`` names; it must be callable."""
    if not _SPEC.match(spec):
        raise UsageError(
            f"{option} {spec!r}: expected package.module:callable (a dotted module path, a colon, "
            "a name)"
        )
    module_name, attribute = spec.split(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's module
        raise UsageError(
            f"{option} {spec}: cannot import {module_name} ({type(err).__name__}: {_line(err)})"
        ) from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{option} {spec}: {module_name} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{option} {spec}: {attribute} is a {type(obj).__name__}, not callable")
    return obj


def _line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_model(spec: str, num_classes: int, input_shape: tuple[int, ...], seed: int):
    """The module returned by ``spec``'s callable, built with torch's RNG seeded by ``seed``
    (the global RNG state is restored afterwards)."""
    import torch
    from torch import nn

    factory = load_callable(spec, "--model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(num_classes, tuple(input_shape))
        except Exception as err:  # noqa: BLE001 - the user's code failed
            raise UsageError(
                f"--model {spec}({num_classes}, {tuple(input_shape)}) raised "
                f"{type(err).__name__}: {_line(err)}"
            ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"--model {spec} returned a {type(model).__name__}; expected a torch.nn.Module"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"--model {spec} returned a module without trainable parameters")
    return model


def load_data(spec: str):
    """The data set returned by ``spec``'s callable, as an ``nnhessian.InMemoryDataset``."""
    factory = load_callable(spec, "--data")
    try:
        obj = factory()
    except Exception as err:  # noqa: BLE001 - the user's code failed
        raise UsageError(f"--data {spec}() raised {type(err).__name__}: {_line(err)}") from None
    return as_dataset(obj, what=f"--data {spec}")


def _tensors(X, y, what: str):
    import torch

    if not (isinstance(X, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise UsageError(
            f"{what}: expected tensors X, y; got {type(X).__name__}, {type(y).__name__}"
        )
    if X.ndim < 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise UsageError(
            f"{what}: expected X of shape (N, ...) and y of shape (N,) with N >= 2; got "
            f"{tuple(X.shape)} and {tuple(y.shape)}"
        )
    if not X.is_floating_point() or y.dtype not in (torch.int64, torch.int32, torch.int16):
        raise UsageError(
            f"{what}: expected floating inputs and integer class labels; got {X.dtype}, {y.dtype}"
        )
    if int(y.min()) < 0:
        raise UsageError(f"{what}: class labels must be >= 0, got {int(y.min())}")
    return X.detach().cpu(), y.detach().cpu().long()


def _read_batches(loader, what: str):
    import torch

    def read():
        parts = []
        for item in loader:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                raise UsageError(f"{what}: expected batches (X, y); got a {type(item).__name__}")
            parts.append(_tensors(*item, what))
        if not parts:
            raise UsageError(f"{what}: the loader gave no batch")
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    X, y = read()
    X2, y2 = read()
    if not (torch.equal(X, X2) and torch.equal(y, y2)):
        raise UsageError(
            f"{what}: two passes over the loader gave different samples (shuffled or augmented); "
            "the Hessian needs a fixed data set: use shuffle=False and no random transforms"
        )
    return X, y


def as_dataset(data, *, what: str = "data"):
    """``data`` as an ``nnhessian.InMemoryDataset``: a dataset as it is, ``(X, y)`` tensors, or
    a deterministic iterable of ``(X, y)`` batches (read twice and compared)."""
    import torch

    from nnhessian import InMemoryDataset

    if isinstance(data, InMemoryDataset):
        return data
    if isinstance(data, list | tuple) and len(data) == 2:
        X, y = _tensors(*data, what)
    elif hasattr(data, "__iter__") and not isinstance(data, torch.Tensor | str | bytes):
        X, y = _read_batches(data, what)
    else:
        raise UsageError(
            f"{what}: expected (X, y) tensors, an nnhessian.InMemoryDataset or a DataLoader; "
            f"got a {type(data).__name__}"
        )
    return InMemoryDataset(X.to(torch.float64), y, int(y.max()) + 1)
