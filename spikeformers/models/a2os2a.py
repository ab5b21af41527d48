"""A²OS²A: Accurate Addition-Only Spiking Self-Attention (Guo et al., CVPR 2025, arXiv 2503.00226).

No official code is public. Inferred with moderate confidence from the paper's abstract and
secondary sources (the block equations 14-18 as a re-implementation transcribes them), the model is
the Spike-driven Transformer V1 macro-architecture (SPS stem, membrane-shortcut blocks, spiking MLP)
with SDSA replaced by :class:`spikeformers.nn.attention.A2OS2A`, and the head of Eq. 18,
Y = CH(GAP(S_L)): fire, then pool, then classify (``head_order="fire_pool"``; the Spike-driven
Transformer's official head pools, then fires: ``head_order="pool_fire"``). The attention's
uncertain choices are its options (``attn_kwargs``, e.g. ``{"proj": "none"}``); ``docs/a2os2a.md``
gives each choice with its sources.

Paper figures: the ImageNet 78.66 % is the paper's abstract; which configuration reached it, and
every CIFAR figure, come from secondary sources. Each figure's source and confidence is in the
model's ``meta["paper_top1_evidence"]`` (``secondary=True`` marks a figure, or its attribution to
this configuration, that rests on a secondary source).
"""

from __future__ import annotations

from .registry import register_model
from .sdt import SpikeDrivenTransformer

_SRC = "Guo et al., CVPR 2025 (no official code)"
# Checkpoints saved before ``head_order`` existed ran the Spike-driven Transformer's head (pool, then
# fire): rebuilding one of them must not pick up today's default (spikeformers.engine.checkpoint).
_LEGACY = {"legacy_defaults": {"head_order": "pool_fire"}}
_A2 = dict(num_heads=8, mlp_ratio=4.0, head_order="fire_pool")
_CIFAR = dict(img_size=32, in_chans=3, num_classes=10, T=4, pooling_stat="0011", **_A2)
_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, pooling_stat="1111", **_A2)

_HP_STATTEN = "HP-STAtten internship report (Univ. Lille / IRCICA, in Layeser/snn), Table 5"
_STEP = "Fancyssc/STEP README, model zoo"

#: Figures reported for A²OS²A whose configuration the source does not name (not attributed to a
#: registered variant; kept in the CIFAR variants' meta and in ``docs/a2os2a.md``).
UNASSIGNED_TOP1 = {"cifar10": 96.32, "cifar100": 79.69, "source": _STEP + " (configuration not shown)",
                   "confidence": "medium on the values, low on the configuration"}


def _evidence(source: str, confidence: str, secondary: bool = True) -> dict:
    return {"source": source, "confidence": confidence, "secondary": secondary}


def _a2os2a(**kw) -> SpikeDrivenTransformer:
    kw.setdefault("attention", "a2os2a")
    model = SpikeDrivenTransformer(**kw)
    model.family = "a2os2a"
    return model


@register_model(**_CIFAR, embed_dim=384, depth=2,
                meta={**_LEGACY, "paper_top1": {"cifar10": 95.70},
                      "paper_top1_evidence": {"cifar10": _evidence(_HP_STATTEN, "medium")},
                      "reported_unassigned": UNASSIGNED_TOP1, "source": _SRC})
def a2os2a_2_384_cifar(**kw):
    """A²OS²A-2-384 on CIFAR (32x32, pooling 0011, T=4)."""
    return _a2os2a(**kw)


@register_model(**_CIFAR, embed_dim=512, depth=2,
                meta={**_LEGACY, "paper_top1": {"cifar10": 96.42},
                      "paper_top1_evidence": {"cifar10": _evidence(_HP_STATTEN + "; wizwand aggregator", "medium")},
                      "reported_unassigned": UNASSIGNED_TOP1, "source": _SRC})
def a2os2a_2_512_cifar(**kw):
    """A²OS²A-2-512 on CIFAR (32x32, pooling 0011, T=4)."""
    return _a2os2a(**kw)


@register_model(**_IMAGENET, embed_dim=384, depth=8, meta={**_LEGACY, "source": _SRC})
def a2os2a_8_384(**kw):
    """A²OS²A-8-384, ImageNet 224, T=4 (no paper figure)."""
    return _a2os2a(**kw)


@register_model(**_IMAGENET, embed_dim=512, depth=8, meta={**_LEGACY, "source": _SRC})
def a2os2a_8_512(**kw):
    """A²OS²A-8-512, ImageNet 224, T=4 (no paper figure)."""
    return _a2os2a(**kw)


@register_model(**_IMAGENET, embed_dim=512, depth=10,
                meta={**_LEGACY, "paper_top1": {"imagenet": 78.66},
                      "paper_top1_evidence": {"imagenet": _evidence(
                          "value: the paper's abstract; configuration 10-512, T=4: " + _STEP, "medium")},
                      "source": _SRC})
def a2os2a_10_512(**kw):
    """A²OS²A-10-512, ImageNet 224, T=4: the configuration a secondary source gives for the
    paper's 78.66 % (medium confidence)."""
    return _a2os2a(**kw)


@register_model(**_IMAGENET, embed_dim=768, depth=8,
                meta={**_LEGACY, "source": _SRC + "; no paper figure (the 78.66 % model is 10-512 per " + _STEP + ")"})
def a2os2a_8_768(**kw):
    """A²OS²A-8-768, ImageNet 224, T=4 (no paper figure: the 78.66 % once inferred for this width
    belongs to 10-512 by a secondary source)."""
    return _a2os2a(**kw)


@register_model(img_size=28, in_chans=1, num_classes=10, T=1, pooling_stat="1100", num_heads=8,
                mlp_ratio=4.0, embed_dim=192, depth=1, v_threshold=0.5, stem="ipsps", head_order="fire_pool",
                meta={**_LEGACY, "source": "spikeformers default for Fashion-MNIST (28x28x1)"})
def a2os2a_fmnist(**kw):
    """Small A²OS²A for 28x28x1 input (IPSPS stem, 7x7 tokens, D=192, one block; 647,218 parameters),
    sized so that `spikeformers train` reaches >= 90 % on Fashion-MNIST within 15 minutes on a 2-core
    CPU. Its head follows the paper's Eq. 18 (fire, pool, classify: ``head_order="fire_pool"``);
    with it the default recipe reached 91.23 % (seed 0, 1 thread, ``docs/a2os2a.md``), against
    91.16 % with the Spike-driven Transformer's head in the same setting.
    Measured (``docs/results.md``) with the Spike-driven Transformer's head (``head_order="pool_fire"``,
    the default until the head order became an option; pass it to reproduce these figures): on a 2-core
    AMD EPYC with AVX512-BF16 (bf16), with the trainer's
    default lr 3e-3, 90.81 / 91.27 / 90.80 % over seeds 0-2 (12.1 min for seed 0; lr 2e-3 gave 90.98 /
    90.82 / 90.00 % in 11.9-12.6 min); D=256 (``embed_dim=256``) reached 91.33 % there but
    took 18.6 min (91.4-91.5 % in 11.4-12.1 min on a Xeon with AMX). Choices made for that budget:
    the IPSPS stem of STMixer (an analog shortcut beside the spiking stem; the SPS stem at D=128 ended
    at 89.8-90.5 %, no margin), T=1 (the same accuracy per training step as T=2 or 4 in our runs, at
    half or a quarter of the cost) and LIF threshold 0.5 instead of the official 1.0 (faster learning
    at T=1-2). Override them (``embed_dim=128`` on a CPU without fast bf16, ``stem="sps",
    embed_dim=128`` for the first default; ``T=4, v_threshold=1.0`` for the paper's neuron setting)."""
    return _a2os2a(**kw)
