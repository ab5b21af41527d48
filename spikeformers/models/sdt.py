"""Spike-driven Transformer (Yao et al., NeurIPS 2023, arXiv 2307.01694), V1.

Official code: BICLab/Spike-Driven-Transformer ``model/spikeformer.py``. The whole
forward pass, on membrane potentials ``U`` (real) and spikes ``S`` (binary)::

    U0 = SPS(x)                                   stem, [T,B,D,H',W'] (layers.SPS)
    for each block:  U' = U + Attn(U)             attention fires its own input: SN(U)
                     U  = U' + MLP(U')            MLP fires its input: SN(U')
    y  = mean_T( Linear( SN( mean_HW(U) ) ) )     head: pool the membrane, fire, classify

``head_order`` says where the head's neuron sits: ``"pool_fire"`` (default, the official code
above) or ``"fire_pool"``, y = mean_T( Linear( mean_HW( SN(U) ) ) ): every token fires, the spikes
are averaged, then classified (the A²OS²A paper's Eq. 18, Y = CH(GAP(S_L)), as its Lille
re-implementation reads it; the A²OS²A models default to it).

The attention is a plug-in (``attention="sdsa"`` the paper's; any name of
:data:`spikeformers.nn.attention.ATTENTIONS`, e.g. ``"a2os2a"``, ``"statten"``, ``"ssa"``, with its
options in ``attn_kwargs``). Block-level options: ``token_keep`` (TP-Spikformer token pruning: per
block, only the top-k² tokens by information-retaining score run the block, the others skip it),
``halting`` (STAS-style adaptive halting, a dict of :class:`spikeformers.nn.tokens.AdaptiveHalting`
arguments), both also settable on a trained model (``set_token_pruning`` / ``set_halting``);
``stem="ipsps"`` (STMixer's information-protection SPS instead of SPS); ``v_threshold`` (the
threshold of every LIF that the official model fires at 1.0; the 0.5 attention-mask neurons keep
theirs). State-dict names equal the
official ones (``patch_embed.*``, ``block.{i}.attn.*``, ``block.{i}.mlp.*``, ``head.*``), without
the official attention's unused ``talking_heads`` weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..nn import tokens as tok
from ..nn.attention import ATTENTIONS, build_attention
from ..nn.layers import (
    IPSPS,
    SPS,
    SpikingMLP,
    SpikingModel,
    lif,
    token_mean,
    trunc_normal_init,
)
from ..nn.neurons import LIF
from .registry import register_model

__all__ = ["SpikeDrivenTransformer", "MembraneShortcutBlock", "ATTENTIONS", "HEAD_ORDERS"]

#: Where the head's neuron sits: pool the membrane then fire (official SDT), or fire then pool.
HEAD_ORDERS = ("pool_fire", "fire_pool")


class MembraneShortcutBlock(nn.Module):
    """One encoder block with membrane shortcuts: U' = U + Attn(U); U'' = U' + MLP(U').

    ``keep=k``: only the k² tokens of ``idx`` (TP pruning, gathered into a k x k map) run the
    block, the others pass unchanged. ``active[T,B,1,H,W]`` (halting): inactive tokens feed a zero
    membrane to the block and keep their own."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, attention: str = "sdsa",
                 attn_kwargs: dict | None = None, num_tokens: int | None = None):
        super().__init__()
        self.attn = build_attention(attention, dim, num_heads, stream="membrane", num_tokens=num_tokens,
                                    **(attn_kwargs or {}))
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio))

    def forward(self, u: torch.Tensor, keep: int | None = None, ir_local: str = "per_channel",
                active: torch.Tensor | None = None) -> torch.Tensor:
        if keep is not None and keep * keep < u.shape[-2] * u.shape[-1]:
            idx = tok.select_tokens(tok.ir_score(u, ir_local), keep)
            return tok.scatter_tokens(u, idx, self.forward(tok.gather_tokens(u, idx, keep)))
        if active is not None:
            v = u + self.attn(u * active)
            v = v + self.mlp(v * active)
            return torch.where(active.bool(), v, u)
        u = u + self.attn(u)
        return u + self.mlp(u)


class SpikeDrivenTransformer(SpikingModel):
    family = "sdt"

    def __init__(self, img_size: int = 32, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 512, depth: int = 2, num_heads: int = 8, mlp_ratio: float = 4.0,
                 T: int = 4, pooling_stat: str = "0011", dvs_mode: bool = False, tet: bool = False,
                 attention: str = "sdsa", attn_kwargs: dict | None = None, stem: str = "sps",
                 token_keep: int | list | None = None, ir_local: str = "per_channel",
                 halting: dict | None = None, v_threshold: float = 1.0, head_order: str = "pool_fire"):
        super().__init__()
        if head_order not in HEAD_ORDERS:
            raise ConfigError(f"head_order must be one of {HEAD_ORDERS} (pool then fire, as the official "
                              f"code; or fire then pool), got {head_order!r}")
        self.head_order = head_order
        self.img_size, self.in_chans, self.num_classes, self.T = img_size, in_chans, num_classes, T
        self.tet = tet
        self.attention = attention
        attn_kwargs = dict(attn_kwargs or {})
        if attention == "sdsa" and dvs_mode:
            attn_kwargs.setdefault("dvs_mode", True)
        if stem not in ("sps", "ipsps"):
            raise ConfigError(f"stem must be 'sps' or 'ipsps', got {stem!r}")
        self.patch_embed = (SPS if stem == "sps" else IPSPS)(in_chans, embed_dim, pooling_stat)
        grid = self.patch_embed.out_size(img_size)
        self.block = nn.ModuleList(MembraneShortcutBlock(embed_dim, num_heads, mlp_ratio, attention, attn_kwargs,
                                                         num_tokens=grid * grid)
                                   for _ in range(depth))
        self.head_lif = lif()
        self.head = nn.Linear(embed_dim, num_classes)
        trunc_normal_init(self.patch_embed)
        trunc_normal_init(self.block)
        if v_threshold != 1.0:  # every LIF at the official threshold 1.0 (the 0.5 mask neurons keep theirs)
            for m in self.modules():
                if isinstance(m, LIF) and m.v_threshold == 1.0:
                    m.v_threshold = float(v_threshold)
        self.token_keep: list | None = None
        self.halting: tok.AdaptiveHalting | None = None
        self.set_token_pruning(token_keep, ir_local)
        self.set_halting(halting)

    def set_token_pruning(self, keep: int | list | None, ir_local: str = "per_channel") -> None:
        """TP-Spikformer token pruning (:func:`spikeformers.nn.tokens.ir_score`): block i runs only on
        the top-``keep[i]``² tokens (an int applies to every block; None or k² >= N runs all), the
        others skip it. Works on a trained model without retraining."""
        if keep is not None:
            keep = [keep] * len(self.block) if isinstance(keep, int) else list(keep)
            if len(keep) != len(self.block):
                raise ConfigError(f"token_keep needs one k per block ({len(self.block)}), got {keep}")
            grid = self.patch_embed.out_size(self.img_size)
            for k in keep:
                if k is not None and not 1 <= k <= grid:
                    raise ConfigError(f"token_keep k must be in 1..{grid} (the {grid}x{grid} token map), got {k}")
            if self.attention == "stmixer":
                raise ConfigError("token pruning cannot run STMixer: its learned mixing matrix has a fixed token count")
            if self.halting is not None:
                raise ConfigError("token pruning and adaptive halting cannot be combined; disable one")
        if ir_local not in tok.IR_LOCAL:
            raise ConfigError(f"ir_local must be one of {tok.IR_LOCAL}, got {ir_local!r}")
        self.token_keep, self.ir_local = keep, ir_local

    def set_halting(self, halting: dict | None) -> None:
        """STAS-style adaptive halting (:class:`spikeformers.nn.tokens.AdaptiveHalting`; ``{}`` for
        its default constants, None to switch it off)."""
        if halting is not None and self.token_keep is not None:
            raise ConfigError("token pruning and adaptive halting cannot be combined; disable one")
        self.halting = None if halting is None else tok.AdaptiveHalting(**halting)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        u = self.patch_embed(x)                          # [T,B,D,H',W'] membrane
        if self.halting is not None:
            u = self.halting.run(self.block, u)
        else:
            for i, blk in enumerate(self.block):
                u = blk(u, keep=self.token_keep[i] if self.token_keep else None, ir_local=self.ir_local)
        if self.head_order == "pool_fire":
            s = self.head_lif(token_mean(u))             # [T,B,D] spikes of the pooled membrane
        else:
            s = token_mean(self.head_lif(u))             # [T,B,D] mean of every token's spikes
        y = self.head(s)                                 # [T,B,K]
        return y if self.tet else y.mean(0)


def _sdt(**kw) -> SpikeDrivenTransformer:
    return SpikeDrivenTransformer(**kw)


_CIFAR = dict(img_size=32, in_chans=3, num_classes=10, T=4, pooling_stat="0011", num_heads=8, mlp_ratio=4.0)
_SRC = "BICLab/Spike-Driven-Transformer"


@register_model(**_CIFAR, embed_dim=512, depth=2,
                meta={"paper_top1": {"cifar10": 95.6, "cifar100": 78.4}, "paper_params": "10.28 M", "source": _SRC})
def sdt_2_512_cifar(**kw):
    """SDT-2-512 on CIFAR (32x32, pooling 0011, T=4)."""
    return _sdt(**kw)


# Every other variant of the paper. Paper parameter counts include the dead
# talking-heads weights (h^2 per block), which these models do not build.
_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, pooling_stat="1111", num_heads=8, mlp_ratio=4.0)
_SRC_FILE = _SRC + ":model/spikeformer.py:SpikeDrivenTransformer"


def _meta(params, top1, conf):
    return {"paper_params": params, "paper_top1": top1, "source": _SRC_FILE, "config": conf}


@register_model(**_CIFAR, embed_dim=256, depth=2,
                meta=_meta("2.57 M", {}, "conf/cifar10/2_256_300E_t4.yml"))
def sdt_2_256_cifar(**kw):
    """SDT-2-256 on CIFAR (32x32, pooling 0011, T=4)."""
    return _sdt(**kw)


@register_model(**_IMAGENET, embed_dim=384, depth=8,
                meta=_meta("16.81 M", {"imagenet": 72.28}, "conf/imagenet/8_384_300E_t4.yml"))
def sdt_8_384(**kw):
    """SDT-8-384, ImageNet 224, T=4."""
    return _sdt(**kw)


@register_model(**_IMAGENET, embed_dim=512, depth=6,
                meta=_meta("23.37 M", {"imagenet": 74.11}, "conf/imagenet/6_512_300E_t4.yml"))
def sdt_6_512(**kw):
    """SDT-6-512, ImageNet 224, T=4."""
    return _sdt(**kw)


@register_model(**_IMAGENET, embed_dim=512, depth=8,
                meta=_meta("29.68 M", {"imagenet": 74.57}, "conf/imagenet/8_512_300E_t4.yml"))
def sdt_8_512(**kw):
    """SDT-8-512, ImageNet 224, T=4."""
    return _sdt(**kw)


@register_model(**_IMAGENET, embed_dim=512, depth=10,
                meta=_meta("36.01 M", {"imagenet": 74.66}, "conf/imagenet/10_384_300E_t4.yml (sets 10-512)"))
def sdt_10_512(**kw):
    """SDT-10-512, ImageNet 224, T=4 (the official config file is misnamed 10_384)."""
    return _sdt(**kw)


@register_model(**_IMAGENET, embed_dim=768, depth=8,
                meta=_meta("66.34 M", {"imagenet": 76.3, "imagenet@288": 77.07}, "conf/imagenet/8_768_300E_t4.yml"))
def sdt_8_768(**kw):
    """SDT-8-768, ImageNet 224, T=4 (the paper's 77.07 is at a 288x288 test; ~76.3 at 224)."""
    return _sdt(**kw)


@register_model(img_size=64, in_chans=2, num_classes=10, T=10, pooling_stat="0011", num_heads=8, mlp_ratio=4.0,
                embed_dim=256, depth=2, dvs_mode=True,
                meta=_meta("2.57 M", {"cifar10dvs": 80.0}, "conf/cifar10-dvs/2_256_200E_t10_TET.yml"))
def sdt_2_256_cifar10dvs(**kw):
    """SDT-2-256 on CIFAR10-DVS (64x64 frames, dvs mode with Erode, T=10; the official recipe trains
    with the TET loss: pass ``tet=True`` for per-step [T,B,K] logits)."""
    return _sdt(**kw)


@register_model(img_size=128, in_chans=2, num_classes=11, T=16, pooling_stat="0111", num_heads=8, mlp_ratio=4.0,
                embed_dim=256, depth=2,
                meta=_meta("2.57 M", {"dvs128": 99.3}, "conf/gesture/2_256_200E_t16.yml"))
def sdt_2_256_gesture(**kw):
    """SDT-2-256 on DVS128 Gesture (128x128 frames, pooling 0111, T=16)."""
    return _sdt(**kw)


@register_model(img_size=28, in_chans=1, num_classes=10, T=4, pooling_stat="1100", num_heads=8, mlp_ratio=4.0,
                embed_dim=128, depth=1, meta={"source": "spikeformers: backbone of `spikeformers compare` (28x28x1)"})
def spikedriven_fmnist(**kw):
    """Small Spike-driven Transformer for 28x28x1 input (SPS stem, 7x7 tokens, D=128, one block,
    T=4): the default backbone of ``spikeformers compare``. Any ``attention=`` plugs in."""
    return _sdt(**kw)
