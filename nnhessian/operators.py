"""Hessian operators on flat parameter vectors: full data, fixed batch, noise, per sample.

Notation as in ``DESIGN.md`` (paper, section 2): per-sample losses ``l_i(w)``, per-sample Hessians
``H_i = nabla^2 l_i``, the empirical Hessian ``H_emp = (1/N) sum_i H_i`` (paper eq. 2), a fixed
batch ``H_B = (1/B) sum_{i in batch} H_i`` (eq. 3) and the noise ``N_B = H_B - H_emp``.

Hessian-vector products use Pearlmutter's trick (Pearlmutter 1994): ``H v`` is the directional
derivative of the gradient, at the cost of a few gradient evaluations and never forming H. Two
implementations, identical in exact arithmetic:

* ``"forward-over-reverse"``: ``torch.func.jvp(torch.func.grad(loss), (w,), (v,))``, forward-mode
  differentiation of the reverse-mode gradient;
* ``"double-backward"``: ``g = autograd.grad(loss, w, create_graph=True)``, then
  ``autograd.grad(<g, v>, w)``, reverse over reverse.

``method="auto"`` tries :data:`AUTO_ORDER` in turn and keeps the first that runs on the first
product (``HessianOperator.method`` tells which ran and ``fallback_reason`` why the other did not).
Double-backward comes first: on CPU it measured as fast as or faster (1.0-2.4x) than torch.func's
forward-over-reverse for every small model and batch size (``benchmarks/bench_hvp.py``); it does
not go through forward-mode BatchNorm derivatives, which have open correctness bugs upstream
(pytorch/pytorch#196699; torch.func.hessian of BatchNorm on batch statistics is wrong in torch
2.14, see tests). Forward-over-reverse is the fallback for modules whose backward is not twice
differentiable, and can be chosen explicitly (e.g. to benchmark it on a GPU).

Data-set averages: every batch loss is a mean over its samples, so the full-data operator sums
``n_b * H_b v`` over batches and divides by ``N = sum_b n_b`` -- exact for an uneven last batch.

Graph cache (double-backward only): a product ``H_b v`` is a reverse pass through the graph of the
batch gradient ``g_b(w)``, and that graph does not depend on ``v``. Lanczos applies the same
operator m times at the same weights, so each batch's graph (forward activations and the first
backward's saved tensors) can be built once and reused: later products cost one reverse pass,
``autograd.grad(g_b, w, grad_outputs=v, retain_graph=True)``, instead of forward + backward +
reverse (``benchmarks/bench_hvp.py`` on CPU, float32: HVP/gradient from 2.6-2.9x to 1.4-2.0x for
the small CNNs; about 2x is the floor for convolutions, whose cached reverse pass needs 5-6
convolution-sized products per layer against the gradient's 3). The products are bit-identical
with and without the cache: both run the same reverse pass on the same graph. Graphs are kept
batch by batch, in pass order, while their saved tensors fit in ``graph_cache_bytes``
(:data:`DEFAULT_GRAPH_CACHE_BYTES`; 0 disables), shared by all operators built from one another;
the rest are rebuilt on every product. The size of a graph
is the sum of the distinct storages autograd saved for it plus its gradient, measured with
``torch.autograd.graph.saved_tensors_hooks`` (weights, buffers and input data excluded: they are
held anyway). A graph is freed with the batch source it belongs to (e.g. a batch operator going
out of scope) or by :meth:`HessianOperator.clear_graph_cache`. Every data pass still iterates
over the data, so the fingerprint check below also covers cached passes; the determinism check
never uses the cache (a cached graph would repeat a dropout mask instead of exposing it).

The operator is the Hessian at the weights the model had when the operator was built: parameters
and buffers are copied once (cast to ``dtype``, moved to ``device``) and passed to the model with
``torch.func.functional_call``; the model's own tensors are never written. BatchNorm/dropout
policy (the model's train/eval flags are restored after every pass):

* ``"eval"`` (default): every module in eval mode -- BatchNorm normalises with its running
  statistics, dropout is off. The loss is then a sum of per-sample terms, so ``H_emp`` is the mean
  of the ``H_i`` and per-sample Hessians are defined.
* ``"batch-stats"``: BatchNorm normalises with the statistics of the batch being evaluated
  (``training=True`` with ``track_running_stats=False`` while the pass runs, so running buffers and
  ``num_batches_tracked`` are not updated); dropout off. The loss of a batch is then not a sum of
  per-sample terms: the full-data operator is the sample-weighted mean of the batch Hessians of its
  batching, and per-sample Hessians are undefined (refused).

A determinism check (:meth:`HessianOperator.check_determinism`, run at construction unless
``verify=False``) applies the operator twice to the same vector and raises
:class:`~nnhessian.data.DeterminismError` when the results differ (a model left stochastic); every
data pass also compares a fingerprint of its batches with the first pass (shuffled or augmented
loaders fail on the second pass).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nnhessian.data import BatchSource, DeterminismError, InMemoryDataset, PassResult, data_pass

__all__ = [
    "GraphCacheInfo",
    "HessianOperator",
    "MatrixOperator",
    "PerSampleHessians",
    "as_linear_operator",
    "resolve_device",
    "resolve_dtype",
    "POLICIES",
    "METHODS",
    "DEFAULT_GRAPH_CACHE_BYTES",
]

log = logging.getLogger(__name__)

POLICIES = ("eval", "batch-stats")
METHODS = ("auto", "forward-over-reverse", "double-backward")
# Order tried by method="auto": the faster first on CPU (benchmarks/bench_hvp.py).
AUTO_ORDER = ("double-backward", "forward-over-reverse")
# Memory budget for gradient graphs kept across HVPs ("Graph cache" in the module docstring).
DEFAULT_GRAPH_CACHE_BYTES = 2 * 2**30
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


# ---------------------------------------------------------------------------------------------
# devices, dtypes, policy
# ---------------------------------------------------------------------------------------------


def resolve_device(device=None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a string or ``torch.device`` is checked.

    Raises ``ValueError`` for an unknown device string or a CUDA device that is not present.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or a torch.device"
            ) from err
    else:
        raise ValueError(f"device must be None, a string or a torch.device, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    elif dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: expected 'cpu' or 'cuda[:N]'")
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    """``torch.float32`` / ``torch.float64`` (or their names); anything else is a ``ValueError``."""
    try:
        return _DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported dtype {dtype!r}: expected torch.float32 (default) or torch.float64"
        ) from None


def _check_choice(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(allowed)}")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


@contextlib.contextmanager
def _policy_mode(model: nn.Module, policy: str):
    """Put ``model`` in the policy's mode for one pass; restore every module's flags after.

    Flags are saved and restored per module (``model.train(flag)`` would overwrite a mixed
    train/eval state). BatchNorm's ``track_running_stats`` is toggled only under "batch-stats".
    """
    saved = [(m, m.training) for m in model.modules()]
    saved_bn = []
    try:
        for m in model.modules():
            m.training = False
        if policy == "batch-stats":
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    saved_bn.append((m, m.track_running_stats))
                    m.training = True
                    m.track_running_stats = False
        yield
    finally:
        for m, flag in saved_bn:
            m.track_running_stats = flag
        for m, flag in saved:
            m.training = flag


def _resolve_loss(loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "cross_entropy":
        return F.cross_entropy
    if callable(loss):
        return loss
    raise ValueError(
        f"unknown loss {loss!r}; accepted: 'cross_entropy' or a callable (outputs, targets) -> "
        "mean loss over the batch"
    )


@functools.cache
def load_forward_ad() -> None:
    """Load torch's forward-AD decompositions once, hiding their deprecation warning.

    The first forward-mode product imports ``torch._decomp.decompositions_for_jvp``, which calls
    the deprecated ``torch.jit.script`` (a ``FutureWarning`` from torch itself, nothing we can
    act on). The test suite turns warnings into errors; this is its one documented exception.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        torch.func.jvp(torch.sin, (torch.zeros(1),), (torch.ones(1),))


def _fixed_vector(dim: int, dtype, device) -> torch.Tensor:
    """A deterministic unit vector with no special structure (for the determinism check)."""
    k = torch.arange(dim, dtype=torch.float64)
    v = torch.cos(0.7071 * k + 0.3) + 0.05 * torch.sin(0.0137 * k * k)
    return (v / torch.linalg.vector_norm(v)).to(device=device, dtype=dtype)


def reduce_pass(source: BatchSource, res: PassResult) -> PassResult:
    """Hook for sharded sources (:mod:`nnhessian.distributed`): all-reduce a pass's sums.

    A source with a ``sharding`` attribute holds only this process's batches; its
    ``reduce_pass`` sums ``res.sums`` and the counts over the process group. Others pass through.
    """
    sharding = getattr(source, "sharding", None)
    return res if sharding is None else sharding.reduce_pass(res)


# ---------------------------------------------------------------------------------------------
# gradient graphs kept across HVPs
# ---------------------------------------------------------------------------------------------


@dataclass
class _Graph:
    """The graph of one batch gradient ``g_b(w)``, ready for reverse passes ``J_g^T v = H_b v``."""

    leaves: list[torch.Tensor]  # the weights, as autograd leaves
    grads: list[torch.Tensor]  # g_b per parameter; those with requires_grad carry the graph
    loss: torch.Tensor  # the batch-mean loss, detached
    nbytes: int  # saved tensors + gradient (0 when not measured)


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the distinct storages autograd saves while active, minus ``exclude``'s storages."""

    def __init__(self, exclude: Iterable[torch.Tensor]) -> None:
        self.seen = {_storage_key(t) for t in exclude}
        self.nbytes = 0
        super().__init__(self._pack, lambda t: t)

    def add(self, t: torch.Tensor) -> None:
        key = _storage_key(t)
        if key not in self.seen:
            self.seen.add(key)
            self.nbytes += t.untyped_storage().nbytes()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


@dataclass(frozen=True)
class GraphCacheInfo:
    """State of an operator's graph cache (shared by operators built from one another)."""

    budget_bytes: int
    used_bytes: int
    graphs: int  # graphs held now
    hits: int  # batch products served from a kept graph
    misses: int  # batch products that built their graph (the determinism check not counted)


class _GraphCache:
    """Batch gradient graphs keyed by (batch source, batch position), within a byte budget.

    Keys hold the source weakly: a source's graphs go when the source does (and with them their
    share of the budget, since ``used_bytes`` is summed over live sources).
    """

    def __init__(self, budget_bytes) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(
                f"graph_cache_bytes must be an integer >= 0 (0 disables the cache), got "
                f"{budget_bytes!r}"
            )
        self.budget = budget_bytes
        self._by_source: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.hits = 0
        self.misses = 0

    @property
    def used(self) -> int:
        return sum(g.nbytes for graphs in self._by_source.values() for g in graphs.values())

    def get(self, source, index: int) -> _Graph | None:
        graph = self._by_source.get(source, {}).get(index)
        if graph is None:
            self.misses += 1
        else:
            self.hits += 1
        return graph

    def has_room(self) -> bool:
        return self.used < self.budget

    def offer(self, source, index: int, graph: _Graph) -> bool:
        """Keep ``graph`` if it fits in what is left of the budget; say whether it was kept."""
        if self.used + graph.nbytes > self.budget:
            return False
        self._by_source.setdefault(source, {})[index] = graph
        return True

    def clear(self) -> None:
        self._by_source = weakref.WeakKeyDictionary()

    def info(self) -> GraphCacheInfo:
        graphs = sum(len(g) for g in self._by_source.values())
        return GraphCacheInfo(self.budget, self.used, graphs, self.hits, self.misses)


# ---------------------------------------------------------------------------------------------
# the HVP engine: model + a snapshot of its weights + loss + policy + method
# ---------------------------------------------------------------------------------------------


class _Engine:
    """Everything an HVP needs except the data; shared by operators built from one another."""

    def __init__(self, model, loss, policy, dtype, device, method, graph_cache_bytes) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_choice(policy, POLICIES, "BatchNorm/dropout policy")
        _check_choice(method, METHODS, "HVP method")
        self.graph_cache = _GraphCache(graph_cache_bytes)  # used by double-backward only
        self.model = model
        self.loss_fn = _resolve_loss(loss)
        self.policy = policy
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.params: dict[str, torch.Tensor] = {}
        self.consts: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                t = p.detach().to(device=self.device, dtype=self.dtype, copy=True)
                (self.params if p.requires_grad else self.consts)[name] = t
            for name, b in model.named_buffers():
                cast = self.dtype if b.is_floating_point() else None
                self.consts[name] = b.detach().to(device=self.device, dtype=cast, copy=True)
        if not self.params:
            raise ValueError("the model has no trainable parameters (P = 0)")
        for name, t in {**self.params, **self.consts}.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                kind = "parameter" if name in self.params else "buffer"
                raise ValueError(
                    f"model {kind} {name!r} contains NaN or inf; the Hessian is undefined there"
                )
        self.names = list(self.params)
        self.shapes = [self.params[k].shape for k in self.names]
        self.numels = [self.params[k].numel() for k in self.names]
        self.dim = int(sum(self.numels))
        self.requested_method = method
        self.method: str | None = None if method == "auto" else method
        self.fallback_reason: str | None = None
        self.per_sample_mode: str | None = None  # "vmap" or "loop" once resolved
        self.per_sample_fallback_reason: str | None = None

    # -- flat <-> dict ----------------------------------------------------------------------
    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, self.numels)
        return {k: t.view(s) for k, t, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten(self, d: dict[str, torch.Tensor] | Sequence[torch.Tensor], lead=()) -> torch.Tensor:
        seq = [d[k] for k in self.names] if isinstance(d, dict) else list(d)
        return torch.cat([t.reshape(*lead, -1) for t in seq], dim=len(lead))

    def flat_params(self) -> torch.Tensor:
        return self.flatten(self.params)

    # -- loss -------------------------------------------------------------------------------
    def loss(self, params, X, y) -> torch.Tensor:
        out = torch.func.functional_call(self.model, (params, self.consts), (X,))
        return self.loss_fn(out, y)

    def _loss_aux(self, params, X, y):
        value = self.loss(params, X, y)
        return value, value.detach()

    # -- HVP implementations ----------------------------------------------------------------
    def _hvp_for(self, X, y, v):
        load_forward_ad()
        grad_fn = torch.func.grad(self._loss_aux, has_aux=True)
        _, hv, loss = torch.func.jvp(lambda p: grad_fn(p, X, y), (self.params,), (v,), has_aux=True)
        return self.flatten(hv), loss

    def _grad_graph(self, X, y, *, measure: bool) -> _Graph:
        """Build the graph of the batch gradient; ``measure`` counts its saved bytes."""
        leaves = [self.params[k].detach().requires_grad_(True) for k in self.names]
        p = dict(zip(self.names, leaves, strict=True))
        meter = _SavedBytes([*leaves, *self.consts.values(), X, y]) if measure else None
        with torch.enable_grad(), meter if meter is not None else contextlib.nullcontext():
            loss = self.loss(p, X, y)
            grads = torch.autograd.grad(
                loss, leaves, create_graph=True, allow_unused=True, materialize_grads=True
            )
        if meter is not None:
            for g in grads:
                meter.add(g)
        return _Graph(leaves, list(grads), loss.detach(), meter.nbytes if meter else 0)

    def _reverse(self, graph: _Graph, v, *, retain: bool) -> torch.Tensor:
        """``H_b v = J_g^T v``: one reverse pass through the gradient graph (H symmetric)."""
        live = [i for i, g in enumerate(graph.grads) if g.requires_grad]
        if not live:  # the gradient does not depend on the weights: H = 0
            return torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        hv = torch.autograd.grad(
            [graph.grads[i] for i in live],
            graph.leaves,
            grad_outputs=[v[self.names[i]] for i in live],
            retain_graph=retain,
            allow_unused=True,
            materialize_grads=True,
        )
        return self.flatten(list(hv))

    def _hvp_dbl(self, X, y, v, key=None):
        """Double backward; ``key = (source, batch position)`` allows the graph cache."""
        cache = self.graph_cache if key is not None else None
        graph = cache.get(*key) if cache is not None else None
        if graph is not None:
            return self._reverse(graph, v, retain=True), graph.loss
        measure = cache is not None and cache.has_room()
        graph = self._grad_graph(X, y, measure=measure)
        keep = measure and cache.offer(*key, graph)
        return self._reverse(graph, v, retain=keep), graph.loss

    def batch_hvp(self, X, y, v, key=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H_b v, loss_b)`` for the batch-mean loss of ``(X, y)``; ``v`` as a dict.

        ``key = (source, batch position)`` lets double-backward use the graph cache.
        """
        impl = {
            "forward-over-reverse": lambda X, y, v: self._hvp_for(X, y, v),
            "double-backward": lambda X, y, v: self._hvp_dbl(X, y, v, key),
        }
        if self.method is not None:
            return impl[self.method](X, y, v)
        first, second = AUTO_ORDER
        try:
            out = impl[first](X, y, v)
        except Exception as err:  # noqa: BLE001 - any failure of one implementation
            self.fallback_reason = f"{first} failed: {type(err).__name__}: {err}"
            log.info("HVP: falling back to %s (%s)", second, self.fallback_reason)
            out = impl[second](X, y, v)
            self.method = second
            return out
        self.method = first
        return out

    def batch_grad(self, X, y) -> tuple[torch.Tensor, torch.Tensor]:
        leaves = [self.params[k].detach().requires_grad_(True) for k in self.names]
        p = dict(zip(self.names, leaves, strict=True))
        with torch.enable_grad():
            loss = self.loss(p, X, y)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
        return self.flatten(list(grads)), loss.detach()

    # -- per-sample HVPs --------------------------------------------------------------------
    def _per_sample_vmap(self, X, y, v) -> torch.Tensor:
        load_forward_ad()

        def single(x, t):
            def lf(p):
                return self.loss(p, x.unsqueeze(0), t.unsqueeze(0))

            return torch.func.jvp(torch.func.grad(lf), (self.params,), (v,))[1]

        out = torch.func.vmap(single)(X, y)
        return self.flatten(out, lead=(X.shape[0],))

    def _per_sample_loop(self, X, y, v) -> torch.Tensor:
        rows = [self.batch_hvp(X[i : i + 1], y[i : i + 1], v)[0] for i in range(X.shape[0])]
        return torch.stack(rows)

    def per_sample_hvp(self, X, y, v) -> torch.Tensor:
        """``(n, P)``: row i is ``H_i v`` (torch.func.vmap, falling back to a loop)."""
        if self.per_sample_mode == "loop":
            return self._per_sample_loop(X, y, v)
        if self.per_sample_mode == "vmap":
            return self._per_sample_vmap(X, y, v)
        try:
            out = self._per_sample_vmap(X, y, v)
        except Exception as err:  # noqa: BLE001
            self.per_sample_fallback_reason = f"vmap failed: {type(err).__name__}: {err}"
            log.info("per-sample HVP: falling back to a loop (%s)", self.per_sample_fallback_reason)
            self.per_sample_mode = "loop"
            return self._per_sample_loop(X, y, v)
        self.per_sample_mode = "vmap"
        return out

    # -- one data pass ----------------------------------------------------------------------
    def mean_over(self, source: BatchSource, fn, *, progress, desc):
        """Sample-weighted mean over ``source`` of ``fn(X, y) -> (batch-mean vector, loss)``."""

        def weighted(X, y):
            vec, loss = fn(X, y)
            n = X.shape[0]
            return vec * n, loss.reshape(1).to(torch.float64) * n

        with _policy_mode(self.model, self.policy):
            res = reduce_pass(source, data_pass(weighted, source, progress=progress, desc=desc))
        if source.num_samples is not None and res.count != source.num_samples:
            raise DeterminismError(
                f"data source ({source.description}) yielded {res.count} samples, expected "
                f"{source.num_samples}"
            )
        loss = float(res.sums[1].item()) / res.count
        if not np.isfinite(loss):
            raise ValueError(
                f"the loss is not finite ({loss}) on data source {source.description}: check the "
                "weights and the inputs for NaN/inf or overflow"
            )
        mean = res.sums[0] / res.count
        if not bool(torch.isfinite(mean).all()):
            raise ValueError(
                f"the Hessian-vector product is not finite on data source {source.description} "
                "(loss is finite): overflow in the second derivatives or a NaN/inf input vector"
            )
        return mean, loss


# ---------------------------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------------------------


class HessianOperator:
    """The Hessian of the loss at fixed weights as a linear operator on flat vectors.

    Build with :meth:`full` (``H_emp`` over a data set or a deterministic loader), :meth:`batch`
    (``H_B`` over a fixed batch of sample indices), :meth:`noise` (``H_B - H_emp``), or from an
    existing full-data operator with :meth:`batch_operator` / :meth:`noise_operator` (sharing its
    weight snapshot). Per-sample Hessians ``H_i`` come from :meth:`per_sample`.

    Flat vectors follow ``model.named_parameters()`` order (as
    ``torch.nn.utils.parameters_to_vector``), trainable parameters only. ``matvec`` takes and
    returns a 1-D tensor of length ``dim`` on ``device`` with ``dtype``.

    Constructor keywords: ``loss`` ("cross_entropy" or a callable ``(outputs, targets) -> batch
    mean``), ``policy`` ("eval" default, or "batch-stats"; see the module docstring), ``dtype``
    (torch.float32 default; float64 for validation), ``device`` (None -> CUDA when available, else
    CPU), ``method`` ("auto", "forward-over-reverse", "double-backward"), ``graph_cache_bytes``
    (memory budget for gradient graphs kept across products, double-backward only; 0 disables;
    see the module docstring), ``progress`` (tqdm bar per
    data pass: True, False, or None = only on a terminal) and ``verify`` (run
    :meth:`check_determinism` once at construction; default True).
    """

    def __init__(
        self,
        engine: _Engine,
        terms: list[tuple[float, BatchSource]],
        *,
        kind: str,
        progress: bool | None,
        dataset: InMemoryDataset | None = None,
        batch_size: int | None = None,
        indices: torch.Tensor | None = None,
        full_source: BatchSource | None = None,
        verify: bool = True,
    ) -> None:
        self._engine = engine
        self._terms = terms
        self.kind = kind
        self.progress = progress
        self.dataset = dataset
        self.batch_size = batch_size
        self.batch_indices = indices
        self._full_source = full_source
        self.matvecs = 0
        self.last_loss: float | None = None
        if verify:
            self.check_determinism()

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def full(
        cls,
        model: nn.Module,
        data: InMemoryDataset | Iterable,
        *,
        batch_size: int | None = None,
        loss="cross_entropy",
        policy: str = "eval",
        dtype=torch.float32,
        device=None,
        method: str = "auto",
        graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES,
        progress: bool | None = None,
        verify: bool = True,
    ) -> HessianOperator:
        """``H_emp = (1/N) sum_b n_b H_b``: the exact mean over all N samples.

        ``data`` is an :class:`InMemoryDataset` (then ``batch_size`` is required: consecutive
        batches, the last one uneven) or any re-iterable of ``(X, y)`` batches (a DataLoader with
        ``shuffle=False`` and no random transforms).
        """
        engine = _Engine(model, loss, policy, dtype, device, method, graph_cache_bytes)
        if isinstance(data, InMemoryDataset):
            if batch_size is None:
                raise ValueError("batch_size is required for an InMemoryDataset (no default)")
            source = BatchSource.from_dataset(
                data, batch_size, device=engine.device, dtype=engine.dtype
            )
            dataset = data.to(engine.device, engine.dtype)
        else:
            if batch_size is not None:
                raise ValueError("batch_size applies to an InMemoryDataset, not to a loader")
            source = BatchSource.from_loader(data, device=engine.device, dtype=engine.dtype)
            dataset = None
        return cls(
            engine,
            [(1.0, source)],
            kind="full",
            progress=progress,
            dataset=dataset,
            batch_size=batch_size,
            full_source=source,
            verify=verify,
        )

    @classmethod
    def batch(
        cls,
        model: nn.Module,
        data: InMemoryDataset,
        indices,
        *,
        chunk_size: int | None = None,
        loss="cross_entropy",
        policy: str = "eval",
        dtype=torch.float32,
        device=None,
        method: str = "auto",
        graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES,
        progress: bool | None = None,
        verify: bool = True,
    ) -> HessianOperator:
        """``H_B = (1/B) sum_{i in indices} H_i`` for a fixed batch of distinct sample indices.

        ``chunk_size`` evaluates the batch in pieces (sample-weighted, exact) to bound memory;
        not allowed with BatchNorm under "batch-stats", where the batch's statistics are the point.
        """
        engine = _Engine(model, loss, policy, dtype, device, method, graph_cache_bytes)
        dataset = _require_dataset(data).to(engine.device, engine.dtype)
        return cls._batch_from(engine, dataset, indices, chunk_size, progress, verify)

    @classmethod
    def noise(
        cls,
        model: nn.Module,
        data: InMemoryDataset,
        indices,
        *,
        batch_size: int,
        chunk_size: int | None = None,
        loss="cross_entropy",
        policy: str = "eval",
        dtype=torch.float32,
        device=None,
        method: str = "auto",
        graph_cache_bytes: int = DEFAULT_GRAPH_CACHE_BYTES,
        progress: bool | None = None,
        verify: bool = True,
    ) -> HessianOperator:
        """``N_B = H_B - H_emp`` (batch of ``indices`` minus the full data in ``batch_size``)."""
        full = cls.full(
            model,
            data,
            batch_size=batch_size,
            loss=loss,
            policy=policy,
            dtype=dtype,
            device=device,
            method=method,
            graph_cache_bytes=graph_cache_bytes,
            progress=progress,
            verify=False,
        )
        return full.noise_operator(indices, chunk_size=chunk_size, verify=verify)

    @classmethod
    def _batch_from(
        cls,
        engine,
        dataset,
        indices,
        chunk_size,
        progress,
        verify,
        *,
        subtract=None,
        full_source=None,
        batch_size=None,
    ):
        idx = _check_indices(indices, len(dataset))
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
                raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
            if engine.policy == "batch-stats" and has_batchnorm(engine.model):
                raise ValueError(
                    "chunk_size would change the BatchNorm batch statistics under policy "
                    "'batch-stats'; evaluate the batch whole (chunk_size=None)"
                )
            pieces = list(torch.split(idx, chunk_size))
        else:
            pieces = [idx]
        source = BatchSource.from_indices(dataset, pieces, device=engine.device, dtype=engine.dtype)
        terms = [(1.0, source)]
        kind = "batch"
        if subtract is not None:
            terms.append((-1.0, subtract))
            kind = "noise"
        return cls(
            engine,
            terms,
            kind=kind,
            progress=progress,
            dataset=dataset,
            batch_size=batch_size,
            indices=idx,
            full_source=full_source,
            verify=verify,
        )

    def batch_operator(
        self, indices, *, chunk_size: int | None = None, verify: bool = True
    ) -> HessianOperator:
        """``H_B`` on this full-data operator's data set and weight snapshot."""
        self._require_full_in_memory("batch_operator")
        return self._batch_from(
            self._engine,
            self.dataset,
            indices,
            chunk_size,
            self.progress,
            verify,
            full_source=self._full_source,
            batch_size=self.batch_size,
        )

    def noise_operator(
        self, indices, *, chunk_size: int | None = None, verify: bool = True
    ) -> HessianOperator:
        """``H_B - H_emp`` with ``H_emp`` this operator (same data batching and weights)."""
        self._require_full_in_memory("noise_operator")
        return self._batch_from(
            self._engine,
            self.dataset,
            indices,
            chunk_size,
            self.progress,
            verify,
            subtract=self._full_source,
            full_source=self._full_source,
            batch_size=self.batch_size,
        )

    def per_sample(self, *, chunk_size: int = 64) -> PerSampleHessians:
        """The per-sample Hessians ``H_i`` of this full-data operator's samples (paper eq. 9)."""
        if self.kind != "full":
            raise ValueError(f"per_sample() needs a full-data operator, this one is {self.kind!r}")
        return PerSampleHessians(
            self._engine,
            self._full_source,
            self.dataset,
            chunk_size=chunk_size,
            progress=self.progress,
        )

    def _require_full_in_memory(self, what):
        if self.kind != "full" or self.dataset is None:
            raise ValueError(
                f"{what}() needs a full-data operator built on an InMemoryDataset (random access "
                "to samples); this one is " + (self.kind if self.kind != "full" else "a loader")
            )

    # -- the linear operator ----------------------------------------------------------------
    @property
    def dim(self) -> int:
        """P: number of trainable parameters."""
        return self._engine.dim

    @property
    def dtype(self) -> torch.dtype:
        return self._engine.dtype

    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def policy(self) -> str:
        return self._engine.policy

    @property
    def method(self) -> str:
        """HVP implementation in use ("auto" until the first product has resolved it)."""
        return self._engine.method or "auto"

    @property
    def fallback_reason(self) -> str | None:
        return self._engine.fallback_reason

    @property
    def model(self) -> nn.Module:
        return self._engine.model

    @property
    def sharding(self):
        """The :class:`nnhessian.distributed.Sharding` of the full-data term, or None.

        Set when the full data set is sharded over a process group; operators derived with
        :meth:`batch_operator` / :meth:`noise_operator` share it (Lanczos then keeps their vectors
        identical on every rank).
        """
        return getattr(self._full_source, "sharding", None)

    @property
    def num_samples(self) -> int | None:
        """N of the full-data term (None for a loader before its first pass)."""
        src = self._full_source if self._full_source is not None else self._terms[0][1]
        return src.num_samples

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def parameters(self) -> torch.Tensor:
        """The flat weight vector w at which this is the Hessian (a copy)."""
        return self._engine.flat_params().clone()

    def _check_vector(self, v) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"matvec takes a 1-D torch.Tensor, got {type(v).__name__}")
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise ValueError(
                f"matvec takes a 1-D tensor of length {self.dim}, got shape {tuple(v.shape)}"
            )
        v = v.to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(v).all()):
            raise ValueError("the input vector contains NaN or inf")
        return v

    def _desc(self, coef, source):
        return f"HVP {self.kind} ({'-' if coef < 0 else ''}{source.description})"

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a 1-D tensor ``v`` of length ``dim``; one data pass per term."""
        return self._apply(v, cached=True)

    __matmul__ = matvec

    def _apply(self, v: torch.Tensor, *, cached: bool) -> torch.Tensor:
        v = self._check_vector(v)
        vd = self._engine.unflatten(v)
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for coef, source in self._terms:
            position = itertools.count()

            def product(X, y, source=source, position=position):
                key = (source, next(position)) if cached else None
                return self._engine.batch_hvp(X, y, vd, key)

            mean, loss = self._engine.mean_over(
                source, product, progress=self.progress, desc=self._desc(coef, source)
            )
            out.add_(mean, alpha=coef)
            self.last_loss = loss
        self.matvecs += 1
        return out

    @property
    def graph_cache(self) -> GraphCacheInfo:
        """Budget, use, graphs held, hits and misses of the graph cache (module docstring)."""
        return self._engine.graph_cache.info()

    def clear_graph_cache(self) -> None:
        """Free every kept gradient graph (of all operators sharing this weight snapshot)."""
        self._engine.graph_cache.clear()

    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """Mean loss and gradient over the operator's data (same weighting as ``matvec``).

        For a noise operator both are differences (batch minus full data).
        """
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        total = 0.0
        for coef, source in self._terms:
            mean, loss = self._engine.mean_over(
                source,
                self._engine.batch_grad,
                progress=self.progress,
                desc=f"gradient {self.kind}",
            )
            out.add_(mean, alpha=coef)
            total += coef * loss
        return total, out

    def check_determinism(
        self, v: torch.Tensor | None = None, *, rtol: float | None = None
    ) -> float:
        """Apply the operator twice to ``v``; raise :class:`DeterminismError` if they differ.

        Returns the relative difference ``||H v - H v'|| / ||H v||``. The default ``rtol`` is
        ``1000 eps(dtype)`` -- reductions with atomics on a GPU may reorder sums (relative
        changes of a few eps); dropout or a changed batch changes the product by O(1). The data
        passes also compare batch fingerprints (shuffled/augmented loaders fail there).
        """
        if rtol is None:
            rtol = 1000.0 * torch.finfo(self.dtype).eps
        if v is None:
            v = _fixed_vector(self.dim, self.dtype, self.device)
        a = self._apply(v, cached=False)
        b = self._apply(v, cached=False)
        scale = float(torch.linalg.vector_norm(a))
        diff = float(torch.linalg.vector_norm(a - b))
        rel = diff / scale if scale > 0 else diff
        if rel > rtol:
            raise DeterminismError(
                f"two Hessian-vector products with the same vector differ (relative difference "
                f"{rel:.3g} > {rtol:.3g}): the model is stochastic under policy {self.policy!r} "
                "(dropout or random layers left active, e.g. functional dropout with "
                "training=True) or the data changes between passes"
            )
        return rel

    def to_dense(self) -> torch.Tensor:
        """The dense P x P matrix, column by column (P products: small models only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(eye[:, j]) for j in range(self.dim)], dim=1)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(kind={self.kind!r}, dim={self.dim}, dtype={self.dtype}, "
            f"device={self.device}, policy={self.policy!r}, method={self.method!r})"
        )


def _require_dataset(data) -> InMemoryDataset:
    if not isinstance(data, InMemoryDataset):
        raise TypeError(
            f"a fixed batch needs random access: pass an InMemoryDataset, got {type(data).__name__}"
        )
    return data


def _check_indices(indices, N: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.ndim != 1:
        raise ValueError("batch indices must be a 1-D sequence")
    B = int(idx.numel())
    if B <= 0:
        raise ValueError(f"batch size B must be >= 1, got an empty batch (B = {B})")
    if B > N:
        raise ValueError(f"batch size B = {B} exceeds the data set size N = {N}")
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"batch indices must be integers, got dtype {idx.dtype}")
    idx = idx.to(torch.int64).cpu()
    if int(idx.min()) < 0 or int(idx.max()) >= N:
        raise ValueError(f"batch indices must lie in [0, {N - 1}]")
    if torch.unique(idx).numel() != B:
        raise ValueError("batch indices must be distinct (a batch is drawn without replacement)")
    return idx


# ---------------------------------------------------------------------------------------------
# per-sample Hessians
# ---------------------------------------------------------------------------------------------


class PerSampleHessians:
    """The N per-sample Hessians ``H_i`` of a full-data operator (paper eq. 9).

    Products ``H_i v`` for many samples at once use ``torch.func.vmap`` over per-sample
    forward-over-reverse HVPs, in chunks of ``chunk_size`` samples; modules that vmap cannot
    handle fall back to a loop of single-sample HVPs (``mode`` says which ran). Needs a loss that
    is a sum of per-sample terms: refused for BatchNorm under policy "batch-stats".
    """

    def __init__(
        self,
        engine: _Engine,
        source: BatchSource,
        dataset: InMemoryDataset | None,
        *,
        chunk_size: int,
        progress,
    ) -> None:
        if engine.policy == "batch-stats" and has_batchnorm(engine.model):
            raise ValueError(
                "per-sample Hessians are undefined for BatchNorm with batch statistics "
                "(policy 'batch-stats'): the batch loss is not a sum of per-sample losses; "
                "use policy 'eval'"
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self._engine = engine
        self._source = source
        self.dataset = dataset
        self.chunk_size = chunk_size
        self.progress = progress

    @property
    def dim(self) -> int:
        return self._engine.dim

    @property
    def num_samples(self) -> int | None:
        return self._source.num_samples

    @property
    def mode(self) -> str | None:
        """Per-sample mode, "vmap" or "loop", once resolved by the first product."""
        return self._engine.per_sample_mode

    def _chunks(self, X, y, v):
        vd = self._engine.unflatten(v)
        for s in range(0, X.shape[0], self.chunk_size):
            yield self._engine.per_sample_hvp(
                X[s : s + self.chunk_size], y[s : s + self.chunk_size], vd
            )

    def _vector(self, v):
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.shape[0] != self.dim:
            raise ValueError(f"expected a 1-D tensor of length {self.dim}")
        return v.to(device=self._engine.device, dtype=self._engine.dtype)

    def matvecs(self, v: torch.Tensor, indices=None) -> torch.Tensor:
        """``(n, P)`` tensor whose row k is ``H_{i_k} v`` (all samples when ``indices`` is None).

        Holds n x P numbers: for small problems and tests; large ones use
        :meth:`squared_deviation_sum`.
        """
        if self.dataset is None:
            raise ValueError("matvecs() needs an InMemoryDataset")
        v = self._vector(v)
        data = self.dataset if indices is None else self.dataset.subset(indices)
        with _policy_mode(self._engine.model, self._engine.policy):
            return torch.cat(list(self._chunks(data.X, data.y, v)), dim=0)

    def squared_deviation_sum(self, v: torch.Tensor, center: torch.Tensor) -> tuple[float, int]:
        """``(sum_i ||H_i v - center||^2, N)`` in one pass over the data (float64 sum)."""
        v = self._vector(v)
        center = self._vector(center)

        def fn(X, y):
            total = torch.zeros((), dtype=torch.float64, device=X.device)
            for rows in self._chunks(X, y, v):
                total = total + ((rows - center) ** 2).sum(dtype=torch.float64)
            return (total,)

        with _policy_mode(self._engine.model, self._engine.policy):
            res = reduce_pass(
                self._source,
                data_pass(fn, self._source, progress=self.progress, desc="per-sample HVPs"),
            )
        value = float(res.sums[0].item())
        if not np.isfinite(value):
            raise ValueError("per-sample Hessian-vector products are not finite")
        return value, res.count

    def operator(self, i: int, *, verify: bool = False) -> HessianOperator:
        """``H_i`` alone, as a :class:`HessianOperator` (a fixed batch of one sample)."""
        if self.dataset is None:
            raise ValueError("operator(i) needs an InMemoryDataset")
        return HessianOperator._batch_from(
            self._engine, self.dataset, [int(i)], None, self.progress, verify
        )


# ---------------------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------------------


class MatrixOperator:
    """A dense symmetric matrix as an operator (``dim``, ``dtype``, ``device``, ``matvec``).

    For tests and for running the same Lanczos code on random-matrix samples.
    """

    def __init__(self, matrix, *, dtype=None, device=None) -> None:
        A = torch.as_tensor(matrix)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(A.shape)}")
        dtype = resolve_dtype(
            dtype
            if dtype is not None
            else (A.dtype if A.dtype in (torch.float32, torch.float64) else torch.float64)
        )
        self.matrix = A.to(
            device=resolve_device(device if device is not None else A.device), dtype=dtype
        )
        self.matvecs = 0

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self.matrix @ v.to(self.matrix.dtype)

    __matmul__ = matvec


def as_linear_operator(op, *, dtype=None):
    """A ``scipy.sparse.linalg.LinearOperator`` applying ``op`` (symmetric: rmatvec = matvec).

    ``dtype`` is the numpy dtype seen by scipy (default: the operator's, float32 or float64);
    vectors are converted to the operator's torch dtype and device and back.
    """
    from scipy.sparse.linalg import LinearOperator

    np_of = {torch.float32: np.float32, torch.float64: np.float64}
    np_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np_of[op.dtype])
    if np_dtype not in (np.float32, np.float64):
        raise ValueError(f"unsupported dtype {dtype!r}: expected float32 or float64")

    def mv(x):
        x = np.asarray(x).reshape(-1)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np_of[op.dtype]))
        return op.matvec(t.to(op.device)).detach().cpu().numpy().astype(np_dtype, copy=False)

    return LinearOperator((op.dim, op.dim), matvec=mv, rmatvec=mv, dtype=np_dtype)
