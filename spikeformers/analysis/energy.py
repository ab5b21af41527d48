"""Firing rates, synaptic operations, the MAC/AC split, energy, and the addition-only audit.

How it measures
---------------
:class:`EnergyRecorder` runs a model forward under a ``TorchDispatchMode`` and sees every aten op,
including the products inside attention that no module hook would see. Module forward pre/post
hooks keep a stack of module names, so every op is attributed to the innermost module that ran it.
For each **product** it records:

===========  ==========================================  ==========================================
op           aten ops                                    dense FLOPs (MACs of the ANN equivalent)
===========  ==========================================  ==========================================
``conv``     ``convolution``                             out.numel * (C_in / groups) * prod(kernel)
``linear``   ``mm`` / ``addmm`` / ``bmm`` with a weight  rows * in * out
``matmul``   ``mm`` / ``bmm`` / ``baddbmm`` of two       batch * n * k * m
             activations
``mul``      elementwise ``mul`` / ``div`` / ``addcmul``  out.numel
             of two activations
``scale``    ``mul`` / ``div`` by a constant             out.numel (never costs energy, see below)
``sdpa``     ``scaled_dot_product_attention``            2 * B * h * N_q * N_k * d
===========  ==========================================  ==========================================

together with the layer name, the output shape, and for each *activation* operand its value domain
and firing rate (fraction of non-zero entries). Statistics merge over every batch seen: counts add
(so a rate is total non-zeros / total entries, i.e. the per-element average over all images) and the
least restrictive domain wins.

* **Activations vs constants.** A tensor is an *activation* if it derives from the model input
  (the recorder tags the input and every op output computed from a tagged tensor). Parameters,
  buffers and tensors computed only from them, Python numbers and 0-dim tensors are *constants*. A
  product of an activation with a constant of the same shape as a weight is a ``linear``/``conv``; a
  product with any other constant (``x * 0.125``, a per-head buffer scale such as SpikingResformer's
  ``1/sqrt(r d)``) is a ``scale``: it folds into the following BatchNorm / neuron threshold, so it
  costs nothing in either accounting and is not a multiplication of two activations for the audit.
* **Neuron internals are not synaptic operations.** Ops executed inside a spiking neuron module
  (``LIF`` charge/reset, the ternary neuron's reset, ...) are not recorded; BatchNorm in eval is a
  per-channel affine that folds into the preceding conv and is not recorded either. Neuron *outputs*
  are hooked separately for the per-layer firing-rate plot.
* **Value domains**, from the values actually seen: ``binary`` {0,1}, ``ternary`` {-1,0,1},
  ``integer`` (non-negative integers, e.g. a sum of spike tensors), ``signed-integer``, ``real``.
  ``binary`` and ``ternary`` are *spike* domains. An all-zero tensor is binary.
* **How T enters.** Inside the models convs/linears run on merged ``[T*B, ...]`` tensors, so the
  recorded FLOPs of one batch already hold every time step of every image: ``FLOPs / images`` is
  ``T x`` the per-step FLOPs of the papers, and ``SOP = rate x FLOPs / images`` equals the papers'
  ``fr x T x FLOPs`` with ``fr`` the average rate over time steps. An op that runs on a
  T-averaged tensor (e.g. a classifier after ``mean`` over T) ran once per image and counts once: we
  count the operations the forward pass performs.
* **Rate of a product.** For a conv/linear: the rate of its input. For a product of two
  activations: the rate of the sparser spike operand (Spikingformer's ``min(fr_K, fr_V)`` rule),
  or, with no spike operand, of the sparser operand. ``SOPs = rate x FLOPs`` per image.

Accountings (E_MAC = 4.6 pJ, E_AC = 0.9 pJ, 45 nm)
---------------------------------------------------
``paper``
    The accounting of the model's own paper, chosen by ``model.family`` (:data:`PAPER_RULES`).
    Common formula (Spikformer, SDT, QKFormer, A²OS²A): the first layer (first conv/linear executed,
    and any other conv/linear reading the analog input directly, such as the IPSPS stem's shortcut)
    is MAC, counted once per image when its input is the same at every time step (a static image
    repeated T times: ``E_MAC x FL1``, as the papers write it) and at every step otherwise;
    every other product is AC with ``SOP = rate x FLOPs``, whatever the operand domains (so
    Spikformer's integer residual stream counts as spikes, as its paper does). SDT's paper counts its
    mask products (an elementwise product with a binary operand) as free. SpikingResformer:
    ``E = E_AC x SOPs`` with the stem (first layer) and the classifier excluded.
    Event-camera input (frames of event counts, ``EnergyRecorder(events=...)``): the input is
    spikes, so a first layer reading it is AC, ``(events per input entry) x FLOPs`` (a count k is k
    events; for binary frames this is ``rate x FLOPs``).
``strict``
    One rule for every model, the Spikingformer energy tool's: a product is an
    accumulate only if one of its two operands is a spike tensor (binary or ternary). For a conv or
    linear the other operand is a real weight, so this means its input; for a product of two
    activations one spike operand suffices (a spike gates or signs the other operand: Spikingformer
    counts ``Q (K^T V)`` with integer ``K^T V`` as AC the same way). Such an op counts
    ``rate x FLOPs`` ACs; any other product counts all its FLOPs as MACs, as executed (the first
    layer T times). Nothing is excluded.

``sops`` in the totals is accounting-independent: ``sum(rate x FLOPs)`` over every recorded product
except ``scale`` ops, whatever the domains, per image.

Elementwise products with a spike operand (masks) count as ``rate x numel`` ACs (one gated
accumulate per non-zero spike) in ``strict`` and ``paper``, except where the paper declares masks
free (SDT).

The addition-only audit
-----------------------
:func:`audit` lists every product whose two operands are both non-spike: a conv/linear whose input
is integer or real (its weight is real), or a product of two non-spike activations; apart from the
first layer (the analog image encoding: every conv/linear whose input is the model input itself, or
a view, copy or cast of it) and the classifier (the last conv/linear executed), and
``scale`` ops. Integer operands are reported as ``integer``, never as binary.
:func:`audit_verdict` adds the verdict: FAIL if there is any such product, INCONCLUSIVE if no
neuron fired (every tensor zero looks binary, so nothing is proved) or some product passed only on
spike operands that stayed all zero, else PASS (:data:`EXIT_CODES`: 0, 1, 3).

Inputs
------
:func:`load_batches` gives the inputs of ``spikeformers energy`` / ``audit``: the first test samples
of any dataset ``train`` reads (through :func:`spikeformers.data.loaders.build_loaders`), random
images of the model's input shape, or ``auto`` (:func:`model_dataset`: the model's own dataset when
it is on disk, else random).
"""

from __future__ import annotations

import csv
import json
import math
import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import ConfigError, DatasetError, InputError, UsageError
from ..nn import neurons as _neurons

__all__ = [
    "E_MAC_PJ", "E_AC_PJ", "ACCOUNTINGS", "PAPER_RULES", "PaperRule", "OperandStats", "OpRecord",
    "NeuronRecord", "EnergyRecorder", "EnergyReport", "AuditFinding", "AuditResult", "EXIT_CODES", "measure",
    "audit", "audit_verdict",
    "capture_attention", "plot_firing_rates", "plot_attention", "calibrate_batchnorm",
    "DATA_CHOICES", "model_dataset", "random_batches", "load_batches",
]

E_MAC_PJ = 4.6  # pJ per multiply-accumulate, 45 nm (Horowitz, ISSCC 2014)
E_AC_PJ = 0.9   # pJ per accumulate, 45 nm
ACCOUNTINGS = ("paper", "strict")
SPIKE_DOMAINS = ("binary", "ternary")

aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
@dataclass
class OperandStats:
    """Running statistics of one activation operand, merged over batches."""

    numel: int = 0
    nonzero: int = 0
    is_integer: bool = True
    vmin: float = math.inf
    vmax: float = -math.inf
    abs_sum: float = 0.0     # sum of |values|: the number of events in a tensor of event counts

    @classmethod
    def of(cls, x: torch.Tensor) -> "OperandStats":
        x = x.detach()
        if x.numel() == 0:
            return cls()
        if not x.is_floating_point():
            xf, is_int = x.to(torch.float32), True
        else:
            xf = x
            is_int = bool(torch.isfinite(xf).all()) and bool(torch.equal(xf, torch.round(xf)))
        return cls(numel=x.numel(), nonzero=int(torch.count_nonzero(xf)), is_integer=is_int,
                   vmin=float(xf.min()), vmax=float(xf.max()), abs_sum=float(xf.abs().sum(dtype=torch.float64)))

    def merge(self, other: "OperandStats") -> None:
        self.numel += other.numel
        self.nonzero += other.nonzero
        self.is_integer = self.is_integer and other.is_integer
        self.vmin = min(self.vmin, other.vmin)
        self.vmax = max(self.vmax, other.vmax)
        self.abs_sum += other.abs_sum

    @property
    def rate(self) -> float:
        """Fraction of non-zero entries (the firing rate of a spike tensor)."""
        return self.nonzero / self.numel if self.numel else 0.0

    @property
    def mean_abs(self) -> float:
        """Mean of |values|: events per entry for a tensor of event counts (the rate if binary)."""
        return self.abs_sum / self.numel if self.numel else 0.0

    @property
    def domain(self) -> str:
        if self.numel == 0:
            return "binary"
        if self.is_integer:
            if self.vmin >= 0 and self.vmax <= 1:
                return "binary"
            if self.vmin >= -1 and self.vmax <= 1:
                return "ternary"
            return "integer" if self.vmin >= 0 else "signed-integer"
        return "real"

    @property
    def is_spike(self) -> bool:
        return self.domain in SPIKE_DOMAINS


@dataclass
class OpRecord:
    """One product of the forward pass, merged over every batch seen."""

    name: str            # layer name: module path, plus ":<op><i>" for ops that are not the module's own
    module: str          # module path that ran it ("" = the model itself)
    op: str              # conv | linear | matmul | mul | scale | sdpa
    aten: str            # the aten op seen
    out_shape: tuple     # output shape of the first batch
    order: int           # execution order of its first occurrence
    flops: int = 0       # dense MACs summed over every batch
    calls: int = 0
    operands: list = field(default_factory=list)   # OperandStats per activation operand
    operand_shapes: list = field(default_factory=list)  # their shapes in the first batch
    time_repeated: bool | None = None              # input equal at every time step (conv/linear only)
    reads_input: bool = False                      # a conv/linear on the analog model input itself

    @property
    def domains(self) -> list[str]:
        d = [o.domain for o in self.operands]
        if self.op in ("conv", "linear"):
            d = d + ["weight"]
        return d

    @property
    def spike_operands(self) -> list[OperandStats]:
        return [o for o in self.operands if o.is_spike]

    @property
    def has_spike_operand(self) -> bool:
        return bool(self.spike_operands)

    @property
    def rate(self) -> float:
        """Rate that drives this product's SOPs: the sparser spike operand, else the sparser one."""
        ops = self.spike_operands or self.operands
        return min(o.rate for o in ops) if ops else 0.0


@dataclass
class NeuronRecord:
    name: str
    kind: str            # class name of the neuron
    order: int
    stats: OperandStats = field(default_factory=OperandStats)

    @property
    def rate(self) -> float:
        return self.stats.rate

    @property
    def domain(self) -> str:
        return self.stats.domain


@dataclass(frozen=True)
class PaperRule:
    """How one paper counts energy (see the module docstring)."""

    description: str
    first_layer: str = "mac"        # "mac": E_MAC x FLOPs (once per image if the input repeats over T); "exclude"
    classifier: str = "ac"          # "ac": rate x FLOPs ACs like every other layer; "exclude"
    masks_free: bool = False        # elementwise products with a binary operand cost nothing


_COMMON = PaperRule("E_MAC x FL(first layer) + E_AC x sum(rate x FLOPs) over every other product "
                    "(the common formula of the Spikformer, SDT and QKFormer papers)")
PAPER_RULES: dict[str, PaperRule] = {
    "spikformer": _COMMON,
    "qkformer": _COMMON,
    "a2os2a": PaperRule(_COMMON.description + "; A²OS²A's own energy table is not available, "
                        "its attention is counted as rate x FLOPs ACs"),
    "sdt": PaperRule(_COMMON.description + "; SDSA mask products are free (SDT paper)", masks_free=True),
    "spikingresformer": PaperRule("E_AC x SOPs, stem (first layer) and classifier excluded "
                                  "(SpikingResformer code)", first_layer="exclude", classifier="exclude"),
}
PAPER_RULES["resformer"] = PAPER_RULES["spikingresformer"]
GENERIC_RULE = PaperRule("family unknown: the common formula, " + _COMMON.description)


def paper_rule(family: str | None) -> PaperRule:
    return PAPER_RULES.get(family or "", GENERIC_RULE)


# ----------------------------------------------------------------------------------------------
# The recorder
# ----------------------------------------------------------------------------------------------
def is_neuron(m: nn.Module) -> bool:
    return isinstance(m, (_neurons._BaseLIF, _neurons.Ternary, _neurons.ReLUNeuron)) or \
        bool(getattr(m, "is_neuron", False))


_MM = {aten.mm.default: (0, 1), aten.addmm.default: (1, 2), aten.bmm.default: (0, 1),
       aten.baddbmm.default: (1, 2)}
_MUL = {aten.mul.Tensor, aten.mul_.Tensor, aten.mul.Scalar, aten.mul_.Scalar,
        aten.div.Tensor, aten.div_.Tensor, aten.div.Scalar, aten.div_.Scalar}
_SDPA_NAMES = ("scaled_dot_product",)


class _Mode(TorchDispatchMode):
    def __init__(self, rec: "EnergyRecorder"):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rec = self.rec
        if rec._busy:  # the recorder's own statistics: not part of the model
            return out
        flat_in, _ = tree_flatten((args, kwargs))
        active = any(isinstance(a, torch.Tensor) and rec._is_act(a) for a in flat_in)
        if active:
            acts = [a for a in flat_in if isinstance(a, torch.Tensor) and rec._is_act(a)]
            # the analog input stays "the input" through views, copies and casts, not through a product
            from_input = not _is_product(func) and all(rec._is_input(a) for a in acts)
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    rec._mark(o)
                    if from_input:
                        rec._mark(o, rec._inputs)
            if not rec._in_neuron():
                rec._on_op(func, args, kwargs, out)
        return out


def _looks_like_events(x: torch.Tensor) -> bool:
    """A frame sequence ``[B, T, C, H, W]`` of non-negative integers: event counts per pixel and bin."""
    if x.dim() != 5 or x.numel() == 0:
        return False
    x = x.detach()
    return bool((x >= 0).all()) and (not x.is_floating_point() or bool(torch.equal(x, torch.round(x))))


def _is_product(func) -> bool:
    return (func is aten.convolution.default or func in _MM or func in _MUL or func is aten.addcmul.default
            or any(s in str(func) for s in _SDPA_NAMES))


class EnergyRecorder:
    """Context manager recording every product of ``model``'s forward passes (module docstring).

    >>> with EnergyRecorder(model) as rec:
    ...     for x in batches: model(x)
    >>> report = rec.report()

    ``T`` defaults to ``model.T`` (a frame sequence ``[B, T, C, H, W]`` brings its own); it is only used
    to detect a first layer whose input repeats over time (a static image). ``events`` says whether
    the inputs are event-camera frames (counts of events per pixel and time bin); ``None`` decides
    per batch: a frame sequence of non-negative integers is event data. ``capture_attention=True`` also keeps, for the first image of the first
    batch, the tensor passing through each attention's ``attn_map`` (or, failing that, the first
    product of two activations inside each module named ``attn``), for :func:`plot_attention`.
    """

    def __init__(self, model: nn.Module, T: int | None = None, capture_attention: bool = False,
                 events: bool | None = None):
        self.model = model
        self.T = T if T is not None else getattr(model, "T", None)
        self.capture = capture_attention
        self.events = events
        self._event_batches: list[bool] = []
        self.ops: dict[str, OpRecord] = {}
        self.neurons: dict[str, NeuronRecord] = {}
        self.attention: dict[str, torch.Tensor] = {}
        self._attn_src: dict[str, str] = {}   # attention key -> "attn_map" | "product"
        self.images = 0
        # id(tensor) -> weakref: a WeakSet would compare tensors with `==` (elementwise) on lookups
        self._acts: dict[int, weakref.ref] = {}
        self._inputs: dict[int, weakref.ref] = {}  # the model input and its views/copies (analog image)
        self._stack: list[str] = []
        self._neuron_depth = 0
        self._ordinals: dict[tuple, int] = {}
        self._handles = []
        self._mode = None
        self._batch_B = None
        self._depth = 0
        self._busy = False
        self._leaf = {n for n, m in model.named_modules() if not any(True for _ in m.children())}
        self._neuron_names = {n for n, m in model.named_modules() if is_neuron(m)}

    # -- activation provenance ---------------------------------------------------------------
    def _is_act(self, t: torch.Tensor) -> bool:
        r = self._acts.get(id(t))
        return r is not None and r() is t

    def _is_input(self, t: torch.Tensor) -> bool:
        r = self._inputs.get(id(t))
        return r is not None and r() is t

    def _mark(self, t: torch.Tensor, into: dict | None = None) -> None:
        acts = self._acts if into is None else into
        key = id(t)
        r = acts.get(key)
        if r is not None and r() is t:
            return

        def forget(ref, key=key, acts=acts):
            if acts.get(key) is ref:
                del acts[key]

        try:
            acts[key] = weakref.ref(t, forget)
        except TypeError:
            pass

    def _in_neuron(self) -> bool:
        return self._neuron_depth > 0

    # -- hooks -------------------------------------------------------------------------------
    def __enter__(self) -> "EnergyRecorder":
        for name, m in self.model.named_modules():
            self._handles.append(m.register_forward_pre_hook(self._pre(name, m), with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post(name, m), always_call=True))
        self._mode = _Mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            self._mode.__exit__(*exc)
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._stack.clear()
            self._neuron_depth = 0
            self._depth = 0
        return False

    def _pre(self, name: str, m: nn.Module):
        is_neuron = name in self._neuron_names

        def hook(mod, args, kwargs):
            if mod is self.model:
                self._depth += 1
                if self._depth == 1:  # a new top-level forward: tag the input, count images
                    xs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
                    if not xs:
                        raise InputError("EnergyRecorder: the model was called without a tensor input")
                    for a in xs:
                        self._mark(a)
                        self._mark(a, self._inputs)
                    x0 = xs[0]
                    if x0.dim() == 5:   # frames [B, T, C, H, W]: their own number of time steps
                        self.T = int(x0.shape[1])
                    if self.events is None:
                        self._busy = True
                        try:
                            self._event_batches.append(_looks_like_events(x0))
                        finally:
                            self._busy = False
                    else:
                        self._event_batches.append(bool(self.events))
                    self._batch_B = int(x0.shape[0])
                    self.images += self._batch_B
                    self._ordinals.clear()
            self._stack.append(name)
            if is_neuron:
                self._neuron_depth += 1
            return None

        return hook

    def _post(self, name: str, m: nn.Module):
        is_neuron = name in self._neuron_names
        is_attn_map = name.rsplit(".", 1)[-1] == "attn_map"

        def hook(mod, args, out):
            if self._stack and self._stack[-1] == name:
                self._stack.pop()
            if is_neuron:
                self._neuron_depth -= 1
                if self._neuron_depth == 0 and isinstance(out, torch.Tensor):
                    rec = self.neurons.get(name)
                    if rec is None:
                        rec = self.neurons[name] = NeuronRecord(name, type(mod).__name__, len(self.neurons))
                    self._busy = True
                    try:
                        rec.stats.merge(OperandStats.of(out))
                    finally:
                        self._busy = False
            if is_attn_map and self.capture and isinstance(out, torch.Tensor):
                parent = name.rsplit(".", 1)[0] if "." in name else name
                self._keep_attention(parent, out, override=True)
            if mod is self.model:
                self._depth -= 1
            return None

        return hook

    # -- attention capture -------------------------------------------------------------------
    def _keep_attention(self, key: str, t: torch.Tensor, override: bool = False) -> None:
        if self.images != self._batch_B:       # first batch only
            return
        if key in self.attention and not override:
            return
        if override and self._attn_src.get(key) == "attn_map":
            return
        self._attn_src[key] = "attn_map" if override else "product"
        busy, self._busy = self._busy, True
        try:
            self.attention[key] = self._first_image(t)
        finally:
            self._busy = busy

    def _first_image(self, t: torch.Tensor) -> torch.Tensor:
        """Slice image 0 out of a time-first [T,B,...] or merged [T*B*...] tensor -> [T, ...]."""
        t = t.detach().float().cpu()
        T, B = self.T, self._batch_B
        if T and t.dim() >= 2 and t.shape[0] == T and t.shape[1] == B:
            return t[:, 0].clone()
        if T and t.shape[0] % (T * B) == 0:
            return t.reshape(T, B, -1, *t.shape[1:])[:, 0].clone()
        return t[:1].clone()

    # -- op recording ------------------------------------------------------------------------
    def _const(self, a) -> bool:
        return not isinstance(a, torch.Tensor) or a.dim() == 0 or not self._is_act(a)

    def _on_op(self, func, args, kwargs, out) -> None:
        if func is aten.convolution.default:
            x, w = args[0], args[1]
            transposed = bool(args[6])
            if transposed:
                flops = x.numel() * (w.shape[1]) * math.prod(w.shape[2:])
            else:
                flops = out.numel() * (w.shape[1]) * math.prod(w.shape[2:])
            operands = [x] + ([w] if self._is_act(w) else [])
            self._record("conv" if len(operands) == 1 else "matmul", func, out, flops, operands)
        elif func in _MM:
            i, j = _MM[func]
            a, b = args[i], args[j]
            if a.dim() == 2:
                flops = a.shape[0] * a.shape[1] * b.shape[1]
            else:
                flops = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            acts = [t for t in (a, b) if self._is_act(t)]
            if len(acts) == 2:
                self._record("matmul", func, out, flops, acts)
            elif len(acts) == 1:
                self._record("linear", func, out, flops, acts)
        elif func in _MUL or func is aten.addcmul.default:
            pair = (args[1], args[2]) if func is aten.addcmul.default else (args[0], args[1])
            acts = [t for t in pair if not self._const(t)]
            ref = out if isinstance(out, torch.Tensor) else pair[0]
            if len(acts) == 2:
                self._record("mul", func, ref, ref.numel(), acts)
            elif len(acts) == 1:
                self._record("scale", func, ref, ref.numel(), acts)
        elif any(s in str(func) for s in _SDPA_NAMES):
            q, k = args[0], args[1]
            flops = 2 * q.numel() * k.shape[-2]
            self._record("sdpa", func, out[0] if isinstance(out, (tuple, list)) else out, flops,
                         [t for t in (q, k) if self._is_act(t)])

    def _record(self, op: str, func, out, flops: int, operands: list) -> None:
        if any(t.dtype == torch.bool for t in operands) or (isinstance(out, torch.Tensor) and out.dtype == torch.bool):
            return   # logic on masks (an input check such as isfinite): no synaptic operation
        self._busy = True
        try:
            self._record_op(op, func, out, flops, operands)
        finally:
            self._busy = False

    def _record_op(self, op: str, func, out, flops: int, operands: list) -> None:
        module = self._stack[-1] if self._stack else ""
        key = (module, op)
        i = self._ordinals.get(key, 0)
        self._ordinals[key] = i + 1
        own = module in self._leaf and op in ("conv", "linear") and i == 0
        name = module if own and module else f"{module or '(model)'}:{op}{i}"
        rec = self.ops.get(name)
        if rec is None:
            rec = self.ops[name] = OpRecord(name=name, module=module, op=op, aten=str(func),
                                            out_shape=tuple(out.shape), order=len(self.ops))
        rec.flops += int(flops)
        rec.calls += 1
        stats = [OperandStats.of(t) for t in operands]
        if not rec.operands:
            rec.operands = stats
            rec.operand_shapes = [tuple(t.shape) for t in operands]
        else:
            for r, s in zip(rec.operands, stats):
                r.merge(s)
        if op in ("conv", "linear"):
            rec.reads_input = rec.reads_input or self._is_input(operands[0])
            rep = self._time_repeated(operands[0])
            rec.time_repeated = rep if rec.time_repeated is None else (rec.time_repeated and rep)
        if self.capture and op in ("matmul", "mul", "sdpa") and module.rsplit(".", 1)[-1] == "attn":
            self._keep_attention(module, out)

    def _time_repeated(self, x: torch.Tensor) -> bool:
        T, B = self.T, self._batch_B
        if not T or T < 2 or not B or x.shape[0] != T * B:
            return False
        xt = x.reshape(T, B, *x.shape[1:])
        return bool((xt == xt[:1]).all())

    def report(self) -> "EnergyReport":
        if self.images == 0:
            raise UsageError("EnergyRecorder saw no forward pass: call the model inside the `with` block")
        ops = sorted(self.ops.values(), key=lambda r: r.order)
        neurons = sorted(self.neurons.values(), key=lambda r: r.order)
        return EnergyReport(ops=ops, neurons=neurons, images=self.images, T=self.T,
                            family=getattr(self.model, "family", None),
                            model_name=getattr(self.model, "model_name", type(self.model).__name__),
                            events=bool(self._event_batches) and all(self._event_batches))


# ----------------------------------------------------------------------------------------------
# Report, accountings, audit
# ----------------------------------------------------------------------------------------------
@dataclass
class AuditFinding:
    name: str
    op: str
    domains: list[str]
    flops_per_image: float
    shapes: list = field(default_factory=list)

    def __str__(self) -> str:
        shapes = " x ".join(str(list(s)) for s in self.shapes)
        return (f"{self.name} ({self.op}): {' x '.join(self.domains)}, {self.flops_per_image:,.0f} FLOPs/image"
                + (f", operands {shapes}" if shapes else ""))


@dataclass
class EnergyReport:
    ops: list[OpRecord]
    neurons: list[NeuronRecord]
    images: int
    T: int | None
    family: str | None = None
    model_name: str | None = None
    events: bool = False     # the inputs were event-camera frames (see ``EnergyRecorder``)

    # -- firing ------------------------------------------------------------------------------
    @property
    def spiking_neurons(self) -> list[NeuronRecord]:
        """Neuron layers whose outputs are spikes (binary or ternary)."""
        return [n for n in self.neurons if n.domain in SPIKE_DOMAINS]

    @property
    def silent_neurons(self) -> list[NeuronRecord]:
        """Neuron layers that never fired (every output zero) on the inputs measured."""
        return [n for n in self.neurons if n.stats.nonzero == 0]

    @property
    def fired(self) -> bool:
        """Whether any neuron fired. If none did, every tensor after the first layer is zero: the
        energy is that of a network that does nothing and the audit cannot tell a spike tensor
        from a real one (all-zero tensors look binary): both are inconclusive."""
        return any(n.stats.nonzero > 0 for n in self.neurons)

    # -- roles -------------------------------------------------------------------------------
    @property
    def first_layer(self) -> OpRecord | None:
        return next((r for r in self.ops if r.op in ("conv", "linear")), None)

    @property
    def classifier(self) -> OpRecord | None:
        return next((r for r in reversed(self.ops) if r.op in ("conv", "linear")), None)

    def role(self, r: OpRecord) -> str:
        if r is self.first_layer or r.reads_input:  # encoding layers: they see the analog image
            return "first"
        if r is self.classifier:
            return "classifier"
        return ""

    # -- per-op accounting -------------------------------------------------------------------
    def flops_per_image(self, r: OpRecord) -> float:
        return r.flops / self.images

    def sops(self, r: OpRecord) -> float:
        return 0.0 if r.op == "scale" else r.rate * self.flops_per_image(r)

    def classify(self, r: OpRecord, accounting: str) -> tuple[str, float, float]:
        """(class, MACs/image, ACs/image) of one op; class is mac | ac | free | excluded."""
        fl = self.flops_per_image(r)
        if r.op == "scale":
            return "free", 0.0, 0.0
        if accounting == "strict":
            if r.has_spike_operand:
                return "ac", 0.0, r.rate * fl
            return "mac", fl, 0.0
        if accounting != "paper":
            raise ConfigError(f"unknown accounting {accounting!r}; expected one of {ACCOUNTINGS}")
        rule = paper_rule(self.family)
        role = self.role(r)
        if role == "first":
            if rule.first_layer == "exclude":
                return "excluded", 0.0, 0.0
            if self.events and r.reads_input and r.operands and r.operands[0].domain in ("binary", "integer"):
                # event-camera frames: every event is a spike reaching the layer's synapses, so the
                # layer accumulates (events per input entry) x FLOPs; a count k is k events
                return "ac", 0.0, r.operands[0].mean_abs * fl
            once = fl / self.T if (r.time_repeated and self.T) else fl
            return "mac", once, 0.0
        if role == "classifier" and rule.classifier == "exclude":
            return "excluded", 0.0, 0.0
        if rule.masks_free and r.op == "mul" and any(o.domain == "binary" for o in r.operands):
            return "free", 0.0, 0.0
        return "ac", 0.0, r.rate * fl

    def totals(self, accounting: str) -> dict:
        macs = acs = 0.0
        for r in self.ops:
            _, m, a = self.classify(r, accounting)
            macs += m
            acs += a
        energy_pj = E_MAC_PJ * macs + E_AC_PJ * acs
        spk = [n for n in self.neurons if n.domain in SPIKE_DOMAINS]
        rule = paper_rule(self.family).description if accounting == "paper" else \
            "strict: AC = rate x FLOPs if an operand is binary/ternary, else MAC = FLOPs (Spikingformer tool)"
        if accounting == "paper" and self.events and paper_rule(self.family).first_layer != "exclude":
            rule += "; event-camera input: the first layer is AC, (events per input entry) x FLOPs"
        return {
            "accounting": accounting,
            "rule": rule,
            "macs": macs, "acs": acs, "sops": sum(self.sops(r) for r in self.ops),
            "energy_mj": energy_pj * 1e-9,
            "mean_firing_rate": (sum(n.rate for n in spk) / len(spk)) if spk else None,
            "fired": self.fired, "silent_neuron_layers": len(self.silent_neurons), "events": self.events,
            "images": self.images, "T": self.T, "family": self.family,
            "e_mac_pj": E_MAC_PJ, "e_ac_pj": E_AC_PJ,
        }

    def layer_rows(self, accountings: Iterable[str] = ACCOUNTINGS) -> list[dict]:
        rows = []
        for r in self.ops:
            row = {"name": r.name, "op": r.op, "role": self.role(r), "out_shape": list(r.out_shape),
                   "domains": r.domains, "rate": r.rate, "flops": self.flops_per_image(r),
                   "sops": self.sops(r)}
            for acc in accountings:
                c, m, a = self.classify(r, acc)
                row[acc] = {"class": c, "macs": m, "acs": a, "energy_pj": E_MAC_PJ * m + E_AC_PJ * a}
            rows.append(row)
        return rows

    def to_dict(self, accountings: Iterable[str] = ("paper",)) -> dict:
        accountings = list(accountings)
        tot = {acc: self.totals(acc) for acc in accountings}
        return {"model": self.model_name, "family": self.family, "images": self.images, "T": self.T,
                "events": self.events, "fired": self.fired,
                "total": tot[accountings[0]], "totals": tot,
                "layers": self.layer_rows(accountings),
                "neurons": [{"name": n.name, "kind": n.kind, "domain": n.domain, "rate": n.rate}
                            for n in self.neurons]}

    def write_json(self, path, accountings: Iterable[str] = ("paper",)) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(accountings), f, indent=2)

    def write_csv(self, path, accountings: Iterable[str] = ("paper",)) -> None:
        accountings = list(accountings)
        cols = ["name", "op", "role", "out_shape", "domains", "rate", "flops", "sops"]
        for acc in accountings:
            cols += [f"{acc}_class", f"{acc}_macs", f"{acc}_acs", f"{acc}_energy_pj"]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for row in self.layer_rows(accountings):
                line = [row["name"], row["op"], row["role"], "x".join(map(str, row["out_shape"])),
                        " x ".join(row["domains"]), f"{row['rate']:.6g}", f"{row['flops']:.6g}",
                        f"{row['sops']:.6g}"]
                for acc in accountings:
                    d = row[acc]
                    line += [d["class"], f"{d['macs']:.6g}", f"{d['acs']:.6g}", f"{d['energy_pj']:.6g}"]
                w.writerow(line)

    def table(self, accountings: Iterable[str] = ("paper",)) -> str:
        accountings = list(accountings)
        head = f"{'layer':<36} {'op':<6} {'operands':<22} {'rate':>6} {'FLOPs/img':>11} {'SOPs/img':>11}"
        for acc in accountings:
            head += f" {acc + ' class':>12} {acc + ' pJ':>12}"
        lines = [head, "-" * len(head)]
        for row in self.layer_rows(accountings):
            name = row["name"] + (f" [{row['role']}]" if row["role"] else "")
            line = (f"{name[:36]:<36} {row['op']:<6} {' x '.join(row['domains'])[:22]:<22} "
                    f"{row['rate']:>6.3f} {_si(row['flops']):>11} {_si(row['sops']):>11}")
            for acc in accountings:
                line += f" {row[acc]['class']:>12} {_si(row[acc]['energy_pj']):>12}"
            lines.append(line)
        lines.append("")
        for acc in accountings:
            t = self.totals(acc)
            mfr = "n/a" if t["mean_firing_rate"] is None else f"{t['mean_firing_rate']:.4f}"
            lines.append(f"[{acc}] MACs {_si(t['macs'])}  ACs {_si(t['acs'])}  SOPs {_si(t['sops'])}  "
                         f"energy {t['energy_mj']:.4g} mJ/image  mean firing rate {mfr}")
            lines.append(f"[{acc}] rule: {t['rule']}")
        lines.append(f"per image, averaged over {self.images} {'event samples' if self.events else 'images'}, "
                     f"T={self.T}; E_MAC={E_MAC_PJ} pJ, E_AC={E_AC_PJ} pJ (45 nm)")
        return "\n".join(lines)

    def audit(self) -> list[AuditFinding]:
        return audit(self)


def _si(v: float) -> str:
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= unit:
            return f"{v / unit:.3f}{s}"
    return f"{v:.3g}"


def audit(report: EnergyReport) -> list[AuditFinding]:
    """Every product whose two operands are both non-spike (module docstring), in execution order.
    An empty list means the model is addition-only apart from its first layer and classifier."""
    found = []
    for r in report.ops:
        if r.op == "scale" or report.role(r) in ("first", "classifier"):
            continue
        if not r.has_spike_operand:
            found.append(AuditFinding(r.name, r.op, r.domains, report.flops_per_image(r), r.operand_shapes))
    return found


#: exit status of ``spikeformers audit`` / ``energy`` per verdict (2 is the command line's own usage error)
EXIT_CODES = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


@dataclass
class AuditResult:
    """The addition-only audit's verdict on one report (:func:`audit_verdict`).

    ``verdict``: ``"PASS"`` (every checked product had a spike operand that was seen to carry
    spikes), ``"FAIL"`` (``findings``: products with no spike operand) or ``"INCONCLUSIVE"`` (no
    neuron fired, nothing was checked, or some products passed only on spike operands that stayed
    all zero: ``unobserved``). ``checked``: the products judged (all but the first layer, the
    classifier and ``scale`` ops)."""

    verdict: str
    findings: list[AuditFinding]
    checked: int
    unobserved: list[str]
    reason: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def audit_verdict(report: EnergyReport) -> AuditResult:
    """:func:`audit` with a verdict that a silent network cannot pass (:class:`AuditResult`).

    Value domains are judged from the values seen, and an all-zero tensor looks binary: a network
    in which no neuron fires (untrained weights, a wrong input scale) would "pass" with every
    product. A real x real product that *was* seen is a failure whatever else happened."""
    found = audit(report)
    checked = [r for r in report.ops if r.op != "scale" and report.role(r) not in ("first", "classifier")]
    unobserved = [r.name for r in checked if r.has_spike_operand and all(o.nonzero == 0 for o in r.spike_operands)]
    if found:
        return AuditResult("FAIL", found, len(checked), unobserved,
                           f"{len(found)} of the {len(checked)} checked products have no spike operand")
    if not checked:
        return AuditResult("INCONCLUSIVE", [], 0, [], "no product outside the first layer and the classifier "
                           "was recorded: nothing to check")
    if not report.fired:
        n = len(report.neurons)
        return AuditResult("INCONCLUSIVE", [], len(checked), unobserved,
                           f"no neuron fired ({'none' if not n else f'all {n}'} neuron layers silent): every tensor "
                           "after the first layer is zero, and a zero tensor looks binary, so the audit cannot tell "
                           "spikes from real values; measure trained weights on real data, or calibrate BatchNorm "
                           "(--calibrate-bn)")
    if unobserved:
        return AuditResult("INCONCLUSIVE", [], len(checked), unobserved,
                           f"{len(unobserved)} of the {len(checked)} checked products passed only on spike operands "
                           f"that stayed all zero ({', '.join(unobserved[:3])}{', ...' if len(unobserved) > 3 else ''}); "
                           "measure more inputs or trained weights")
    return AuditResult("PASS", [], len(checked), [],
                       f"addition-only: each of the other {len(checked)} products has a binary or ternary operand")


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def measure(model: nn.Module, batches: Iterable, T: int | None = None,
            capture_attention: bool = False, events: bool | None = None) -> EnergyReport | tuple[EnergyReport, dict]:
    """Run ``model`` (in eval mode, no grad) over ``batches`` and return its :class:`EnergyReport`
    (and the captured attention maps if ``capture_attention``).

    ``batches``: an iterable of inputs, each a tensor ``[B,C,H,W]`` (static images) or
    ``[B,T,C,H,W]`` (frames), or an ``(x, y)`` pair as data loaders yield; each is moved to the
    model's device. ``events``: whether the inputs are event-camera frames, whose first layer the
    ``paper`` accounting counts as accumulates of events (``None``: frames of non-negative
    integers are). The model's train/eval mode is restored afterwards.

    >>> report = measure(model, loader)          # any model built of our neurons
    >>> report.totals("paper")["energy_mj"], audit_verdict(report).verdict
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    rec = EnergyRecorder(model, T=T, capture_attention=capture_attention, events=events)
    try:
        with torch.no_grad(), rec:
            for b in batches:
                x = b[0] if isinstance(b, (tuple, list)) else b
                if device is not None and isinstance(x, torch.Tensor) and x.device != device:
                    x = x.to(device)
                model(x)
    finally:
        model.train(was_training)
    report = rec.report()
    return (report, rec.attention) if capture_attention else report


def calibrate_batchnorm(model: nn.Module, batches) -> nn.Module:
    """Set every BatchNorm's running statistics to the plain average over ``batches`` (one tensor or
    a list of input tensors; train-mode forwards, no gradient, weights untouched), then return the
    model in eval mode. Uses: give an *untrained* model live spikes (with the default small init
    every neuron stays silent, the rates are 0 and every tensor looks binary, which would make the
    audit pass trivially), and re-estimate statistics that lag the weights after a very short
    training budget (``spikeformers compare --recalibrate-bn``). Changes the BN buffers in place."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    device = _model_device(model)
    with torch.no_grad():
        for x in batches:
            x = x[0] if isinstance(x, (tuple, list)) else x
            model(x.to(device) if device is not None else x)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Inputs: the model's own dataset, any dataset `train` reads, or random images of its shape
# ----------------------------------------------------------------------------------------------
DATA_CHOICES = ("auto", "random", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "dvs128-gesture",
                "cifar10-dvs")
_EVENT_DATA = ("dvs128-gesture", "cifar10-dvs")
_DATA_ALIASES = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
                 "cifar-100": "cifar100", "cifar10dvs": "cifar10-dvs", "gesture": "dvs128-gesture",
                 "dvs-gesture": "dvs128-gesture", "imagenet": "imagefolder"}


def model_dataset(model: nn.Module, hint: str | None = None) -> str | None:
    """The dataset ``model`` is made for: ``hint`` (e.g. the ``data`` a checkpoint was trained on),
    else the ``data`` of its pretrained card, else what its registered name and input shape say
    (``*_fmnist``: fashion-mnist, ``*gesture*`` / ``*dvsg``: dvs128-gesture, ``*cifar10dvs``:
    cifar10-dvs, ``*cifar*``: cifar10 or cifar100 by its classes; ``[1,28,28]``: fashion-mnist,
    ``[3,32,32]``: cifar10/100, 2 channels: an event dataset by its classes, ``[3,224,224]`` with 1000
    classes: imagefolder). ``None`` when nothing says."""
    card = (getattr(model, "pretrained", None) or {}).get("card") or {}
    for h in (hint, card.get("data")):
        if isinstance(h, str) and h:
            key = h.lower().replace("_", "-")
            key = _DATA_ALIASES.get(key, key)
            if key in DATA_CHOICES[2:]:
                return key
    name = (getattr(model, "model_name", None) or "").lower()
    c, s, k = getattr(model, "in_chans", None), getattr(model, "img_size", None), getattr(model, "num_classes", None)
    if "fmnist" in name:
        return "fashion-mnist"
    if "gesture" in name or name.endswith("dvsg"):
        return "dvs128-gesture"
    if "cifar10dvs" in name:
        return "cifar10-dvs"
    if "cifar" in name and k in (10, 100):
        return "cifar10" if k == 10 else "cifar100"
    if (c, s, k) == (1, 28, 10):
        return "fashion-mnist"
    if (c, s) == (3, 32) and k in (10, 100):
        return "cifar10" if k == 10 else "cifar100"
    if c == 2 and k in (10, 11):
        return "cifar10-dvs" if k == 10 else "dvs128-gesture"
    if c == 3 and k == 1000 and s and s >= 160:
        return "imagefolder"
    return None


def random_batches(model: nn.Module, batches: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``batches`` tensors of N(0,1) images ``[batch_size, C, H, W]`` of the model's input shape."""
    c, s = model.in_chans, model.img_size
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, c, s, s, generator=g) for _ in range(batches)]


def load_batches(model: nn.Module, data: str = "auto", data_dir=None, batches: int = 4, batch_size: int = 32,
                 seed: int = 0, hint: str | None = None, progress: bool = True) -> tuple[list[torch.Tensor], str, bool]:
    """Inputs to :func:`measure` ``model`` on: ``(list of input tensors, what they are, events)``.

    ``data``: ``"random"`` (:func:`random_batches`), a dataset ``train`` reads (the first
    ``batches x batch_size`` samples of its test split, through the loaders and transforms
    ``train`` uses (:func:`spikeformers.data.loaders.build_loaders`), resized to the model's input
    size; event data integrated into the model's ``T`` frames), or ``"auto"``: the model's own
    dataset (:func:`model_dataset`) when it is found on disk, else random images of the model's
    input shape (the description says why). ``events`` is True for the event-camera datasets."""
    if data not in DATA_CHOICES:
        raise ConfigError(f"unknown data {data!r}; expected one of {', '.join(DATA_CHOICES)}")
    c, s = model.in_chans, model.img_size
    why = ""
    if data == "auto":
        name = model_dataset(model, hint)
        if name is None:
            why = f"no dataset is known for {getattr(model, 'model_name', type(model).__name__)}"
        elif name in ("imagefolder",) + _EVENT_DATA and data_dir is None:
            why = f"{name} needs --data-dir"
        else:
            try:
                return load_batches(model, name, data_dir, batches, batch_size, seed, progress=progress)
            except DatasetError as e:
                why = f"{name} not found ({str(e).splitlines()[0].rstrip('.:')})"
        data = "random"
    if data == "random":
        desc = f"{batches} x {batch_size} N(0,1) random images [{c},{s},{s}] (seed {seed})"
        if why:
            desc += f", because {why}"
        return random_batches(model, batches, batch_size, seed), desc, False
    if data in ("imagefolder",) + _EVENT_DATA and data_dir is None:
        raise ConfigError(f"--data {data} needs --data-dir, the folder that holds it (see docs/datasets.md)")
    from ..data.loaders import build_loaders
    n = batches * batch_size
    opts = {}
    if data != "fashion-mnist":
        opts["img_size"] = s
    if data in _EVENT_DATA:
        opts.update(in_chans=c, T=getattr(model, "T", None))
    _, test, info = build_loaders(data, None if data_dir is None else str(data_dir), batch_size, seed=seed,
                                  workers=0, eval_images=n, progress=progress, **opts)
    if (info["in_chans"], info["img_size"]) != (c, s):
        raise ConfigError(f"model {getattr(model, 'model_name', type(model).__name__)} expects input "
                          f"[B,{c},{s},{s}]; {data} is [B,{info['in_chans']},{info['img_size']},{info['img_size']}] "
                          "(use --data random for this model, or a dataset of its input shape)")
    xs = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in test])[:n]
    out = list(xs.split(batch_size))
    kind = "event samples" if data in _EVENT_DATA else "images"
    return out, f"the first {len(xs)} {data} test {kind}", data in _EVENT_DATA


def capture_attention(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention tensors of one input ``x[1,...]`` per attention module: what passes through its
    ``attn_map`` (e.g. K^T V or Q K^T for A²OS²A, the channel mask for SDSA) or, without one, the
    first product of two activations inside a module named ``attn``. Each tensor is ``[T, ...]``."""
    _, maps = measure(model, [x[:1]], capture_attention=True)
    return maps


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------
def plot_firing_rates(report: EnergyReport, path, title: str | None = None) -> None:
    """Bar chart of the output firing rate of every neuron layer (fraction of non-zeros)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not report.neurons:
        raise ConfigError("no neuron layer was recorded: nothing to plot")
    names = [n.name for n in report.neurons]
    rates = [n.rate for n in report.neurons]
    colors = ["tab:blue" if n.domain == "binary" else "tab:orange" if n.domain == "ternary" else "tab:gray"
              for n in report.neurons]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), rates, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("firing rate (fraction of non-zeros)")
    ax.set_title(title or f"{report.model_name}: firing rate per neuron layer\n"
                          f"({report.images} images, T={report.T}; blue binary, orange ternary, grey real)",
                 fontsize=9)
    ax.set_ylim(0, max(1e-3, max(rates)) * 1.1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _as_maps(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """[T, ...] -> ([heads, rows, cols] averaged over T, True if the heads were stacked as rows)."""
    m = t.float().mean(0)
    if m.dim() == 3 and m.shape[1] == 1:     # one row per head (e.g. SDSA's channel mask): one map
        return m[:, 0][None], True
    if m.dim() == 1:
        m = m[None, None]
    elif m.dim() == 2:
        m = m[None]
    elif m.dim() > 3:
        m = m.reshape(-1, *m.shape[-2:])
    return m, False


def plot_attention(maps: dict[str, torch.Tensor], path, max_heads: int = 8) -> None:
    """Grid of attention maps (rows: attention modules, columns: heads), averaged over T."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not maps:
        raise ConfigError("no attention tensor was captured (no `attn_map` module and no product "
                         "of two activations inside a module named `attn`)")
    grids = {k: _as_maps(v) for k, v in maps.items()}
    grids = {k: (g[:max_heads], stacked) for k, (g, stacked) in grids.items()}
    cols = max(g.shape[0] for g, _ in grids.values())
    fig, axes = plt.subplots(len(grids), cols, figsize=(max(4.5, 2.0 * cols + 0.5), 2.0 * len(grids) + 0.8),
                             squeeze=False)
    for i, (k, (g, stacked)) in enumerate(grids.items()):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < g.shape[0]:
                ax.imshow(g[j].numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
                what = "heads x channels" if stacked else f"head {j}, {g.shape[1]}x{g.shape[2]}"
                ax.set_title(f"{k}: {what}" if j == 0 else what, fontsize=7)
            else:
                ax.axis("off")
    fig.suptitle("attention tensors of one input (mean over T)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
