"""Hessian-vector products of a model's loss on one batch: the engine under every operator.

Pearlmutter's trick (Pearlmutter 1994): ``H v`` is the directional derivative of the gradient,
at the cost of a few gradient evaluations and never forming H. Two implementations, identical in
exact arithmetic:

* ``"forward-over-reverse"``: ``torch.func.jvp(torch.func.grad(loss), (w,), (v,))``, forward-mode
  differentiation of the reverse-mode gradient;
* ``"double-backward"``: ``g = autograd.grad(loss, w, create_graph=True)``, then
  ``autograd.grad(<g, v>, w)``, reverse over reverse.

``method="auto"`` tries :data:`AUTO_ORDER` in turn and keeps the first that runs on the first
product (:attr:`HVPEngine.method` tells which ran and ``fallback_reason`` why the other did not).
Double-backward comes first: on CPU it measured as fast as or faster (1.0-2.4x) than torch.func's
forward-over-reverse for every small model and batch size (``benchmarks/bench_hvp.py``); it does
not go through forward-mode BatchNorm derivatives, which have open correctness bugs upstream
(pytorch/pytorch#196699; torch.func.hessian of BatchNorm on batch statistics is wrong in torch
2.14, see tests). Forward-over-reverse is the fallback for modules whose backward is not twice
differentiable, and can be chosen explicitly (e.g. to benchmark it on a GPU).

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
(:data:`DEFAULT_GRAPH_CACHE_BYTES`; 0 disables), shared by all operators built from one engine;
the rest are rebuilt on every product. The size of a graph is the sum of the distinct storages
autograd saved for it plus its gradient, measured with ``torch.autograd.graph.saved_tensors_hooks``
(weights, buffers and input data excluded: they are held anyway). A graph is freed with the batch
source it belongs to (e.g. a batch operator going out of scope) or by :meth:`GraphCache.clear`.

Several vectors (:meth:`HVPEngine.batch_hvp_many`, used by SLQ and the sigma^2 probes advanced
in lockstep): the graph of ``g_b`` serves any number of vectors, so k products on one batch cost
one forward + backward and k reverse passes instead of k of each. The k reverse passes run either
one after another (``"loop"``; each product bit-identical to a single :meth:`HVPEngine.batch_hvp`)
or as one vmapped pass, ``autograd.grad(g_b, w, grad_outputs=V, is_grads_batched=True)``
(``"batched"``). Neither is faster everywhere (CPU, float32, digits: batched faster for the mlp,
slower for the cnn), so :attr:`HVPEngine.reverse` = ``"auto"`` (default) times both on the first
k-vector product of an engine and keeps the faster off the CPU (within 1e-4 of the loop). On
the CPU it keeps the loop whatever the timing, because batched products may differ in the last
bit on some batches and lockstep results are promised bit-identical to one-at-a-time ones there;
``"batched"`` can still be asked for. :class:`ReverseTiming` records what was measured;
``benchmarks/gpu_check.py`` reports it on a GPU.

BatchNorm/dropout policy (:func:`policy_mode`; the model's train/eval flags are restored after
every pass):

* ``"eval"`` (default): every module in eval mode -- BatchNorm normalises with its running
  statistics, dropout is off. The loss is then a sum of per-sample terms, so ``H_emp`` is the mean
  of the ``H_i`` and per-sample Hessians are defined.
* ``"batch-stats"``: BatchNorm normalises with the statistics of the batch being evaluated
  (``training=True`` with ``track_running_stats=False`` while the pass runs, so running buffers and
  ``num_batches_tracked`` are not updated); dropout off. The loss of a batch is then not a sum of
  per-sample terms: the full-data operator is the sample-weighted mean of the batch Hessians of its
  batching, and per-sample Hessians are undefined (refused).

The engine holds the weights the model had when it was built: parameters and buffers are copied
once (cast to ``dtype``, moved to ``device``) and passed to the model with
``torch.func.functional_call``; the model's own tensors are never written.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nnhessian.data import BatchSource, DeterminismError, PassResult, data_pass

__all__ = [
    "AUTO_ORDER",
    "DEFAULT_GRAPH_CACHE_BYTES",
    "METHODS",
    "POLICIES",
    "REVERSE_MODES",
    "GraphCache",
    "GraphCacheInfo",
    "HVPEngine",
    "ReverseTiming",
    "has_batchnorm",
    "load_forward_ad",
    "policy_mode",
    "reduce_pass",
]

log = logging.getLogger(__name__)

POLICIES = ("eval", "batch-stats")
METHODS = ("auto", "forward-over-reverse", "double-backward")
# Order tried by method="auto": the faster first on CPU (benchmarks/bench_hvp.py).
AUTO_ORDER = ("double-backward", "forward-over-reverse")
# How k products share one gradient graph ("Several vectors" in the module docstring).
REVERSE_MODES = ("auto", "loop", "batched")
# Memory budget for gradient graphs kept across HVPs ("Graph cache" in the module docstring).
DEFAULT_GRAPH_CACHE_BYTES = 2 * 2**30


# ---------------------------------------------------------------------------------------------
# policy, loss, forward-mode AD, sharded passes
# ---------------------------------------------------------------------------------------------


def _check_choice(value, allowed, what):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(allowed)}")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a BatchNorm layer (the policy then matters)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


@contextlib.contextmanager
def policy_mode(model: nn.Module, policy: str):
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
    """State of an engine's graph cache (shared by operators built from one another)."""

    budget_bytes: int
    used_bytes: int
    graphs: int  # graphs held now
    hits: int  # batch products served from a kept graph
    misses: int  # batch products that built their graph (the determinism check not counted)


@dataclass(frozen=True)
class ReverseTiming:
    """What ``reverse="auto"`` measured on its first k-vector product (one batch, one graph)."""

    vectors: int  # k
    loop_s: float  # k separate reverse passes (the faster of two timings)
    batched_s: float | None  # one is_grads_batched pass (None: it failed)
    bitwise_equal: bool  # batched products identical to the loop's
    chosen: str  # "loop" or "batched"
    reason: str | None  # why batched was not eligible, when it was not


class GraphCache:
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

    def get(self, source, index: int, products: int = 1) -> _Graph | None:
        """The kept graph or None; counts ``products`` hits, or one miss and the rest as hits
        (the products after the first on a graph built for them reuse it)."""
        graph = self._by_source.get(source, {}).get(index)
        if graph is None:
            self.misses += 1
            self.hits += products - 1
        else:
            self.hits += products
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


class HVPEngine:
    """Everything an HVP needs except the data; shared by operators built from one another.

    ``dtype`` and ``device`` arrive checked (:func:`nnhessian.operators.resolve_dtype` /
    :func:`~nnhessian.operators.resolve_device`); ``loss``, ``policy``, ``method`` and
    ``graph_cache_bytes`` as described for :class:`nnhessian.operators.HessianOperator`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss,
        policy: str,
        dtype: torch.dtype,
        device: torch.device,
        method: str,
        graph_cache_bytes: int,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_choice(policy, POLICIES, "BatchNorm/dropout policy")
        _check_choice(method, METHODS, "HVP method")
        self.graph_cache = GraphCache(graph_cache_bytes)  # used by double-backward only
        self.model = model
        self.loss_fn = _resolve_loss(loss)
        self.policy = policy
        self.dtype = dtype
        self.device = device
        self.params, self.consts = self._snapshot(model)
        self.names = list(self.params)
        self.shapes = [self.params[k].shape for k in self.names]
        self.numels = [self.params[k].numel() for k in self.names]
        self.dim = int(sum(self.numels))
        self.requested_method = method
        self.method: str | None = None if method == "auto" else method
        self.fallback_reason: str | None = None
        self.reverse: str | None = None  # "loop" or "batched"; None: "auto", not yet measured
        self.reverse_timing: ReverseTiming | None = None  # what "auto" measured
        self.per_sample_mode: str | None = None  # "vmap" or "loop" once resolved
        self.per_sample_fallback_reason: str | None = None

    def _snapshot(self, model: nn.Module):
        """Copies of the trainable parameters and of the constants (frozen parameters, buffers)."""
        params: dict[str, torch.Tensor] = {}
        consts: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                t = p.detach().to(device=self.device, dtype=self.dtype, copy=True)
                (params if p.requires_grad else consts)[name] = t
            for name, b in model.named_buffers():
                cast = self.dtype if b.is_floating_point() else None
                consts[name] = b.detach().to(device=self.device, dtype=cast, copy=True)
        if not params:
            raise ValueError("the model has no trainable parameters (P = 0)")
        for name, t in {**params, **consts}.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                kind = "parameter" if name in params else "buffer"
                raise ValueError(
                    f"model {kind} {name!r} contains NaN or inf; the Hessian is undefined there"
                )
        return params, consts

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

    def grad_graph(self, X, y, *, measure: bool) -> _Graph:
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
        graph = self.grad_graph(X, y, measure=measure)
        keep = measure and cache.offer(*key, graph)
        return self._reverse(graph, v, retain=keep), graph.loss

    # -- several vectors on one graph ------------------------------------------------------
    def set_reverse(self, mode: str) -> None:
        """How k products share a graph: "auto" (measure, keep the faster), "loop", "batched"."""
        _check_choice(mode, REVERSE_MODES, "reverse mode")
        self.reverse = None if mode == "auto" else mode
        self.reverse_timing = None

    def _hvp_dbl_many(self, X, y, vds, key=None):
        """Double backward for k vectors: the batch gradient graph built (or fetched) once."""
        cache = self.graph_cache if key is not None else None
        graph = cache.get(*key, products=len(vds)) if cache is not None else None
        keep = graph is not None
        if graph is None:
            measure = cache is not None and cache.has_room()
            graph = self.grad_graph(X, y, measure=measure)
            keep = measure and cache.offer(*key, graph)
        return self._reverse_many(graph, vds, retain=keep), graph.loss

    def _reverse_loop(self, graph: _Graph, vds, *, retain: bool) -> list[torch.Tensor]:
        """k reverse passes, the graph kept for all but the last (unless ``retain``)."""
        last = len(vds) - 1
        return [self._reverse(graph, v, retain=retain or i < last) for i, v in enumerate(vds)]

    def _reverse_batched(self, graph: _Graph, vds, *, retain: bool) -> list[torch.Tensor]:
        """One vmapped reverse pass (``is_grads_batched=True``) for the k vectors."""
        k = len(vds)
        live = [i for i, g in enumerate(graph.grads) if g.requires_grad]
        outs = [torch.stack([v[self.names[i]] for v in vds]) for i in live]
        with warnings.catch_warnings():  # vmap's "no batching rule, falling back" warnings
            warnings.simplefilter("ignore")
            hv = torch.autograd.grad(
                [graph.grads[i] for i in live],
                graph.leaves,
                grad_outputs=outs,
                retain_graph=retain,
                allow_unused=True,
                is_grads_batched=True,
            )
        parts = [
            h
            if h is not None
            else torch.zeros((k, *leaf.shape), dtype=leaf.dtype, device=leaf.device)
            for h, leaf in zip(hv, graph.leaves, strict=True)
        ]
        return list(self.flatten(parts, lead=(k,)).unbind(0))

    def _reverse_many(self, graph: _Graph, vds, *, retain: bool) -> list[torch.Tensor]:
        """``[H_b v_1, ..., H_b v_k]`` from one gradient graph, by :attr:`reverse` ("Several
        vectors" in the module docstring); ``auto`` measures both ways on its first call."""
        if not any(g.requires_grad for g in graph.grads):  # H = 0
            return [torch.zeros(self.dim, dtype=self.dtype, device=self.device) for _ in vds]
        if len(vds) == 1 or self.reverse == "loop":
            return self._reverse_loop(graph, vds, retain=retain)
        if self.reverse == "batched":
            return self._reverse_batched(graph, vds, retain=retain)
        return self._measure_reverse(graph, vds, retain=retain)

    def _timed(self, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out, time.perf_counter() - t0

    def _measure_reverse(self, graph: _Graph, vds, *, retain: bool) -> list[torch.Tensor]:
        """Time k separate reverse passes against one batched pass on this graph; keep the faster.

        Batched is chosen only off the CPU, and only within ``1e-4`` relative of the loop (GPU
        reductions are not bitwise reproducible anyway). On the CPU the loop is kept whatever
        the timing: batched products can differ from it in the last bit (measured: equal on
        one batch of the digits mlp, not on its uneven last batch), and the CPU contract is
        products bit-identical to one-at-a-time ones. The timing is recorded either way.
        """
        loop, t_loop = self._timed(lambda: self._reverse_loop(graph, vds, retain=True))
        t_batched, equal, reason = None, False, None
        try:
            self._reverse_batched(graph, vds, retain=True)  # warm-up (vmap set-up)
            batched, t_batched = self._timed(lambda: self._reverse_batched(graph, vds, retain=True))
            equal = all(torch.equal(a, b) for a, b in zip(loop, batched, strict=True))
            rel = max(
                float(torch.linalg.vector_norm(a - b))
                / max(float(torch.linalg.vector_norm(a)), 1e-300)
                for a, b in zip(loop, batched, strict=True)
            )
            correct = self.device.type != "cpu" and rel <= 1e-4
            if self.device.type == "cpu":
                reason = "CPU: separate passes keep every product bit-identical to matvec's"
            elif not correct:
                reason = f"batched differs from the loop (relative {rel:.3g})"
        except Exception as err:  # noqa: BLE001 - a missing vmap rule, out of memory, ...
            correct, reason = False, f"{type(err).__name__}: {err}"
        again, t_again = self._timed(lambda: self._reverse_loop(graph, vds, retain=retain))
        t_loop = min(t_loop, t_again)
        self.reverse = "batched" if correct and t_batched < t_loop else "loop"
        self.reverse_timing = ReverseTiming(
            len(vds), t_loop, t_batched, equal, self.reverse, reason
        )
        log.info("HVP: %s reverse passes (%s)", self.reverse, self.reverse_timing)
        return again

    def batch_hvp_many(self, X, y, vds, key=None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([H_b v_1, ..., H_b v_k], loss_b)``: k products on one batch (``vds`` as dicts).

        Double backward builds (or fetches from the cache) the batch's gradient graph once and
        runs k reverse passes on it; each product is bit-identical to :meth:`batch_hvp`'s when
        the passes are separate (``reverse == "loop"``). Forward-over-reverse has no graph to
        share and applies :meth:`batch_hvp` k times on the loaded batch.
        """
        if not vds:
            raise ValueError("batch_hvp_many needs at least one vector")
        if self.method is None:  # resolve "auto" on the first vector, as batch_hvp does
            first, loss = self.batch_hvp(X, y, vds[0], key)
            rest = self.batch_hvp_many(X, y, vds[1:], key)[0] if len(vds) > 1 else []
            return [first, *rest], loss
        if self.method == "forward-over-reverse":
            outs = [self._hvp_for(X, y, v) for v in vds]
            return [o[0] for o in outs], outs[0][1]
        return self._hvp_dbl_many(X, y, vds, key)

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
        """Sample-weighted mean over ``source`` of ``fn(X, y) -> (batch-mean vector, loss)``.

        Every batch loss is a mean over its samples, so the pass sums ``n_b * fn(X_b, y_b)`` and
        divides by ``N = sum_b n_b`` -- exact for an uneven last batch.
        """

        def weighted(X, y):
            vec, loss = fn(X, y)
            n = X.shape[0]
            return vec * n, loss.reshape(1).to(torch.float64) * n

        with policy_mode(self.model, self.policy):
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
