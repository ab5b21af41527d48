"""Spiking self-attentions: one file per mechanism, one interface, and the registry that builds
one by name for any backbone that takes ``attention=NAME``.

Every attention is built as ``Attention(dim, num_heads=..., stream=..., **options)`` and maps the
block's residual stream ``x[T,B,D,H,W]`` to the increment the block adds back to it (the ``stream``
convention is in :mod:`~spikeformers.nn.attention.common`: ``"membrane"`` in the Spike-driven
Transformer, ``"spike"`` in Spikformer)::

    create_model("sdt_2_256_cifar", attention="statten")
    create_model("spikformer_4_256_cifar", attention="a2os2a", attn_kwargs={"order": "qk_v"})

==============  ========================================================  ================  =====================
name            attention                                                 class             source
==============  ========================================================  ================  =====================
``ssa``         Spikformer SSA, Q (K^T V) * 0.125                         ``SSA``           official code
``sdsa``        Spike-driven self-attention (SDSA)                        ``SpikeDrivenSelfAttention``  official code
``qk_token``    QKFormer Q-K token attention                              ``QKToken``       official code
``qk_channel``  QKFormer Q-K channel attention                            ``QKChannel``     paper only
``dssa``        SpikingResformer dual spike self-attention                ``DSSAPlugin``    official code
``a2os2a``      A²OS²A: binary Q, ReLU K, ternary V                       ``A2OS2A``        paper abstract
``statten``     STAtten chunked spatial-temporal Q (K^T V)                ``SpatioTemporalAttention``  official code
``stmixer``     STMixer learned token mixing                              ``SpikingTokenMixer``  official code
``ms``          MSViT multi-scale Q-K token attention                     ``MultiScaleTokenAttention``  official code
``ds2ta``       DS2TA attenuated attention + denoiser                     ``AttenuatedSpatioTemporalAttention``  paper only
==============  ========================================================  ================  =====================

The official classes keep their official numerics (``tests/test_zoo_official.py``); the plug-in
adapters only add the input neuron of the membrane stream and switch off the output neuron there
(``proj_neuron=False`` / ``residual=False``), both flags that default to the official behaviour.

To add an attention: write its class in a new file here (subclass
:class:`~spikeformers.nn.attention.common.QKVProjections` for the usual Q/K/V projections), then
:func:`register_attention` it; every backbone that takes ``attention=`` can use it.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from .a2os2a import A2OS2A
from .common import STREAMS, QKVProjections, check_attention_args
from .ds2ta import AttenuatedSpatioTemporalAttention
from .dssa import DSSA, DSSAPlugin
from .ms import MultiScaleTokenAttention
from .qk import ChannelQKAttention, QKChannel, QKToken, TokenQKAttention
from .sdsa import SpikeDrivenSelfAttention
from .ssa import SSA, ConvSSA, LinearSSA
from .statten import SpatioTemporalAttention
from .stmixer import SpikingTokenMixer

__all__ = ["ATTENTIONS", "build_attention", "list_attentions", "register_attention", "STREAMS", "QKVProjections",
           "check_attention_args", "A2OS2A", "AttenuatedSpatioTemporalAttention", "DSSA", "DSSAPlugin",
           "MultiScaleTokenAttention", "ChannelQKAttention", "QKChannel", "QKToken", "TokenQKAttention",
           "SpikeDrivenSelfAttention", "SSA", "ConvSSA", "LinearSSA", "SpatioTemporalAttention", "SpikingTokenMixer"]

ATTENTIONS: dict[str, type[nn.Module]] = {
    "ssa": SSA,
    "sdsa": SpikeDrivenSelfAttention,
    "qk_token": QKToken,
    "qk_channel": QKChannel,
    "dssa": DSSAPlugin,
    "a2os2a": A2OS2A,
    "statten": SpatioTemporalAttention,
    "stmixer": SpikingTokenMixer,
    "ms": MultiScaleTokenAttention,
    "ds2ta": AttenuatedSpatioTemporalAttention,
}


def register_attention(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls`` available as ``attention=name`` in every backbone that takes one. ``cls`` must
    accept ``(dim, num_heads=..., stream=..., **options)`` and map ``x[T,B,D,H,W]`` to an increment
    of the same shape. Returns ``cls`` (usable as a decorator through ``functools.partial``)."""
    if name in ATTENTIONS and ATTENTIONS[name] is not cls:
        raise ConfigError(f"attention {name!r} is registered already ({ATTENTIONS[name].__name__}); "
                         "expected a new name")
    ATTENTIONS[name] = cls
    return cls


def list_attentions() -> list[str]:
    """The registered attention names, in registration order."""
    return list(ATTENTIONS)


def build_attention(name: str, dim: int, num_heads: int, stream: str = "membrane",
                    num_tokens: int | None = None, **options) -> nn.Module:
    """The plug-in ``name`` for width ``dim``; ``num_tokens`` (H*W) goes to the attentions that need
    it (``stmixer``) unless ``options`` set it; ``options`` are the class's own arguments."""
    if name not in ATTENTIONS:
        raise ConfigError(f"unknown attention {name!r}; expected one of {sorted(ATTENTIONS)}")
    if stream not in STREAMS:
        raise ConfigError(f"stream must be one of {STREAMS}, got {stream!r}")
    cls = ATTENTIONS[name]
    if cls is SpikingTokenMixer:
        options.setdefault("num_tokens", num_tokens)
    try:
        return cls(dim, num_heads=num_heads, stream=stream, **options)
    except TypeError as e:
        raise ConfigError(f"attention {name!r} ({cls.__name__}): {e}") from None
