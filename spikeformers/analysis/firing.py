"""Firing rates of the spiking neurons of any model: per layer, per time step, binary and ternary.

::

    from spikeformers import FiringRateMonitor

    with FiringRateMonitor(model) as mon:
        model(x)                     # as many forward passes as you like
    mon.rate                         # non-zero outputs / all outputs, over every spiking layer
    mon.rates()                      # {layer name: rate}
    mon.per_step()                   # {layer name: [rate at t = 0, 1, ..., T-1]}
    mon.layers["blocks.0.attn.v_lif"].positive_rate    # ternary neurons: +1 and -1 apart
    mon.summary()                    # all of it as one JSON-ready dict
    mon.plot("rates.png")            # per-layer bars and per-time-step lines

A *spiking layer* is every module that :func:`spikeformers.analysis.energy.is_neuron` recognises
(LIF, IF, PLIF, Ternary, or any module with ``is_neuron = True``) except the ReLU "neuron" of
A²OS²A's keys, whose output is a real number, not a spike. A neuron's output is time-first
``[T, B, ...]``; the rate of a layer at step ``t`` is the fraction of non-zero entries of ``out[t]``,
so a binary neuron's rate is its mean spike count per neuron and step and a ternary neuron's rate
counts +1 and -1 alike (:attr:`LayerRate.positive_rate` and :attr:`LayerRate.negative_rate` split it).
The mean over layers (:attr:`FiringRateMonitor.rate`) weighs each layer by its number of outputs:
it is the fraction of all spiking outputs that are non-zero.

The counts are kept as tensors on the model's device (no host synchronisation per call) and read
only when a rate is asked for; for our neurons, whose outputs are exactly 0/1 or -1/0/+1, they are
sums of the outputs (exact below 2^24 outputs per step and call, float32 summation beyond). A forward hook on a neuron switches off the fused BatchNorm+LIF
training kernel of an :func:`~spikeformers.accel.optimize`-d model (it would skip the hook), so the
:class:`~spikeformers.engine.trainer.Trainer` watches the test pass, where that kernel is not used.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, UsageError
from ..nn.neurons import ReLUNeuron, Ternary, _BaseLIF
from .energy import is_neuron

__all__ = ["FiringRateMonitor", "LayerRate", "spiking_layers"]


def spiking_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every spiking neuron layer of ``model`` (the ReLU "neuron" excluded),
    in module order; the model itself is named ``""`` when it is a neuron."""
    return [(n, m) for n, m in model.named_modules() if is_neuron(m) and not isinstance(m, ReLUNeuron)]


def _is_ternary(m: nn.Module) -> bool:
    return isinstance(m, Ternary) or bool(getattr(m, "ternary", False))


def _known_values(m: nn.Module) -> bool:
    """Whether ``m``'s outputs are exactly 0/1 (our LIF family) or -1/0/+1 (our Ternary)."""
    return isinstance(m, (_BaseLIF, Ternary)) and not getattr(m, "smooth", False)


@dataclass
class LayerRate:
    """The counts of one neuron layer. ``nonzero[t]`` (and ``positive[t]`` for a ternary layer) are
    summed over every call and batch; ``outputs[t]`` is how many outputs step ``t`` produced.
    ``exact_values``: the layer's outputs are known to be 0/1 (binary) or -1/0/+1 (ternary), so the
    counts are sums (``sum(o)``, ``sum(|o|)``: a tenth to a fiftieth of the cost of counting
    non-zeros on CPU); other layers (``is_neuron = True`` modules of unknown values, neurons with
    ``smooth=True``) count non-zeros."""

    name: str
    kind: str                                   # "binary" or "ternary"
    exact_values: bool = False
    calls: int = 0
    outputs: list[int] = field(default_factory=list)
    nonzero: torch.Tensor | None = None         # float64 [T] (integer values)
    positive: torch.Tensor | None = None        # float64 [T], ternary only

    def _add(self, out: torch.Tensor) -> None:
        o = out.detach()
        if o.dim() == 1:
            o = o.unsqueeze(1)
        T, dims = o.shape[0], tuple(range(1, o.dim()))
        acc = torch.float32 if o.dtype in (torch.float16, torch.bfloat16) else None
        pos = None
        if not self.exact_values or not o.is_floating_point():
            nz = torch.count_nonzero(o, dim=dims)
            if self.kind == "ternary":
                pos = torch.count_nonzero(o > 0, dim=dims)
        elif self.kind == "ternary":                  # |o| sums the spikes of either sign, o their difference
            nz = torch.linalg.vector_norm(o, ord=1, dim=dims, dtype=acc)
            pos = (nz + o.sum(dims, dtype=acc)) / 2
        else:
            nz = o.sum(dims, dtype=acc)
        if self.nonzero is None or self.nonzero.device != nz.device:
            self.nonzero = torch.zeros(0, dtype=torch.float64, device=nz.device)
            self.positive = torch.zeros(0, dtype=torch.float64, device=nz.device) if pos is not None else None
        if T > len(self.outputs):                # a longer sequence than before (event data): grow
            grow = T - len(self.outputs)
            self.outputs += [0] * grow
            self.nonzero = torch.cat([self.nonzero, self.nonzero.new_zeros(grow)])
            if self.positive is not None:
                self.positive = torch.cat([self.positive, self.positive.new_zeros(grow)])
        per_step = o[0].numel()
        for t in range(T):
            self.outputs[t] += per_step
        self.nonzero[:T] += nz
        if pos is not None:
            self.positive[:T] += pos
        self.calls += 1

    # ------------------------------------------------------------------------------ read-outs
    def _counts(self) -> tuple[list[int], list[int]]:
        nz = self.nonzero.tolist() if self.nonzero is not None else []
        pos = self.positive.tolist() if self.positive is not None else [0] * len(nz)
        return nz, pos

    @property
    def T(self) -> int:
        return len(self.outputs)

    @property
    def rate(self) -> float:
        """Non-zero outputs / outputs over every step (NaN before any call)."""
        total = sum(self.outputs)
        return sum(self._counts()[0]) / total if total else math.nan

    @property
    def positive_rate(self) -> float:
        """Fraction of +1 outputs (a binary neuron's spikes are all +1: equal to :attr:`rate`)."""
        if self.kind != "ternary":
            return self.rate
        total = sum(self.outputs)
        return sum(self._counts()[1]) / total if total else math.nan

    @property
    def negative_rate(self) -> float:
        """Fraction of -1 outputs (0 for a binary neuron)."""
        if self.kind != "ternary":
            return 0.0 if self.outputs else math.nan
        total = sum(self.outputs)
        nz, pos = self._counts()
        return (sum(nz) - sum(pos)) / total if total else math.nan

    def per_step(self) -> list[float]:
        """The rate at each time step."""
        nz, _ = self._counts()
        return [c / n if n else math.nan for c, n in zip(nz, self.outputs)]

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "rate": self.rate, "per_step": self.per_step(), "calls": self.calls,
             "outputs_per_step": list(self.outputs)}
        if self.kind == "ternary":
            d["positive_rate"], d["negative_rate"] = self.positive_rate, self.negative_rate
        return d


class FiringRateMonitor:
    """Counts the non-zero outputs of every spiking neuron layer of ``model`` while active (a context
    manager, or :meth:`start` / :meth:`stop`). ``include`` keeps only the layers whose name matches
    one of its glob patterns (``"blocks.*"``). Counts add up over calls until :meth:`reset`."""

    def __init__(self, model: nn.Module, include: str | list[str] | None = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"FiringRateMonitor expects a torch.nn.Module, got {type(model).__name__}")
        patterns = [include] if isinstance(include, str) else include
        found = spiking_layers(model)
        if patterns:
            found = [(n, m) for n, m in found if any(fnmatch.fnmatch(n, p) for p in patterns)]
            if not found:
                raise ConfigError(f"no spiking neuron layer of the model matches {patterns}; its layers are "
                                  f"{[n for n, _ in spiking_layers(model)][:8]}")
        self.model = model
        self._modules = found
        self.layers: dict[str, LayerRate] = {
            n: LayerRate(n, "ternary" if _is_ternary(m) else "binary", _known_values(m)) for n, m in found}
        self._handles: list = []

    # ------------------------------------------------------------------------------ hooks
    def start(self) -> "FiringRateMonitor":
        """Attach the hooks (counting starts)."""
        if self._handles:
            raise UsageError("this FiringRateMonitor is already watching its model; stop() it first")
        for name, m in self._modules:
            self._handles.append(m.register_forward_hook(self._hook(self.layers[name])))
        return self

    def stop(self) -> "FiringRateMonitor":
        """Remove the hooks (the counts stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        return self

    def reset(self) -> None:
        """Forget the counts."""
        for name, layer in self.layers.items():
            self.layers[name] = LayerRate(name, layer.kind, layer.exact_values)
        if self._handles:                       # the hooks hold the old LayerRate objects
            self.stop()
            self.start()

    def __enter__(self) -> "FiringRateMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def _hook(layer: LayerRate):
        def hook(_module, _inputs, out):
            if isinstance(out, torch.Tensor) and out.dim() >= 1:
                layer._add(out)
        return hook

    # ------------------------------------------------------------------------------ read-outs
    @property
    def rate(self) -> float:
        """Non-zero outputs / outputs over every spiking layer and step (NaN when nothing was seen)."""
        total = sum(sum(layer.outputs) for layer in self.layers.values())
        if not total:
            return math.nan
        return sum(sum(layer._counts()[0]) for layer in self.layers.values()) / total

    def rates(self) -> dict[str, float]:
        """``{layer: rate}`` of the layers that ran."""
        return {n: layer.rate for n, layer in self.layers.items() if layer.calls}

    def per_step(self) -> dict[str, list[float]]:
        """``{layer: [rate at each time step]}`` of the layers that ran."""
        return {n: layer.per_step() for n, layer in self.layers.items() if layer.calls}

    def step_rates(self) -> list[float]:
        """The rate at each time step over every layer that ran that step (weighted by outputs)."""
        T = max((layer.T for layer in self.layers.values()), default=0)
        nz, n = [0] * T, [0] * T
        for layer in self.layers.values():
            counts, _ = layer._counts()
            for t in range(layer.T):
                nz[t] += counts[t]
                n[t] += layer.outputs[t]
        return [a / b if b else math.nan for a, b in zip(nz, n)]

    def summary(self) -> dict:
        """The rates as one JSON-ready dict (``None`` for a rate of nothing seen): ``firing_rate``,
        ``firing_rate_per_step``, ``firing_rates`` per layer and, with ternary layers,
        ``firing_rates_ternary`` ``{layer: [+1 rate, -1 rate]}``."""
        def num(v: float):
            return None if math.isnan(v) else v
        out = {"firing_rate": num(self.rate), "firing_rate_per_step": [num(v) for v in self.step_rates()],
               "firing_rates": {n: num(v) for n, v in self.rates().items()}}
        tern = {n: [num(layer.positive_rate), num(layer.negative_rate)]
                for n, layer in self.layers.items() if layer.kind == "ternary" and layer.calls}
        if tern:
            out["firing_rates_ternary"] = tern
        return out

    def plot(self, path, title: str | None = None):
        """A PNG of the per-layer rates (bars; ternary split into +1 / -1) and, for T > 1, the rate of
        each layer at each time step (lines). Returns the path."""
        from .plots import plot_firing
        return plot_firing(self.summary(), path, title=title, per_step=self.per_step())

    def __repr__(self) -> str:
        return f"FiringRateMonitor({len(self.layers)} spiking layers, rate {self.rate:.4f})"
