"""Spikformer (Zhou et al., ICLR 2023, arXiv 2209.15425).

    x [T,B,C,H,W] -> SPS (4 x conv3x3-BN-SN[-MaxPool], then X0 = x + SN(BN(conv3x3(x))))
      -> L x { X <- X + SSA(X);  X <- X + MLP(X) }       (spike "ADD" residuals: X is integer-valued)
      -> mean over tokens -> mean over T -> Linear        -> logits [B, K]

Spiking Self-Attention (SSA), per head (d = D/h), all of Q, K, V binary::

    Q, K, V = SN(BN(W_q X)), SN(BN(W_k X)), SN(BN(W_v X))
    SSA(X)  = SN(BN(W_p SN_0.5( Q K^T V * s ) + b_p))        s = 0.125 (0.25 in the DVS file)

Q K^T V is a product of binary matrices, so every intermediate is an exact multiple of 2^-3 in
float32 and the order of the two products cannot change a spike. MLP: SN(BN(W2 SN(BN(W1 X + b1)) + b2)),
D -> 4D -> D. Every neuron is the SpikingJelly 0.0.0.0.12 multi-step LIF (tau 2, threshold 1, hard
reset to 0, detached reset, Sigmoid(4) surrogate); the attention neuron fires at 0.5.

The official repository has three model files with different layer types; a spike can flip
when the summation order of a layer changes, so ``layout`` reproduces each one's layers exactly:

    layout     file                   q/k/v/proj          MLP                  SPS pooling   scale
    "cifar"    cifar10/model.py       nn.Linear (+bias)   nn.Linear + BN1d     stages 3, 4   0.125
    "imagenet" imagenet/model.py      Conv1d k=1          Conv2d 1x1 + BN2d    all 4         0.125
    "dvs"      cifar10dvs/model.py    Conv1d k=1          Conv1d k=1 + BN1d    all 4         0.25

State-dict names are the official ones. The official blocks also carry LayerNorms ``norm1`` /
``norm2`` (and the DVS file ``pos_embed`` and ``norm``) that the forward never uses; ours omit them
(the paper's parameter counts exclude them too) and the converter drops them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import MaxPool, SpikingModel, conv_bn_fire, lif, seq, token_mean
from ..speed import _hooked, bn_fire
from .registry import register_model

__all__ = ["Spikformer", "SpikformerSPS", "LinearSSA", "LinearMLP", "ConvSSA", "ConvMLP"]

_LAYOUTS = ("cifar", "imagenet", "dvs")


class SpikformerSPS(nn.Module):
    """Spiking Patch Splitting: four conv3x3-BN-SN stages D/8 -> D/4 -> D/2 -> D, stage i max-pooling
    its spikes when ``pooling[i] == "1"``; then X0 = x + SN(BN(conv3x3_rpe(x))) (values in {0,1,2}).
    Returns [T, B, D, H', W']."""

    def __init__(self, in_chans: int, embed_dim: int, pooling: str = "1111"):
        super().__init__()
        if embed_dim % 8:
            raise ValueError(f"Spikformer embed_dim must be divisible by 8, got {embed_dim}")
        self.pooling = pooling
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        for i in range(4):
            sfx = "" if i == 0 else str(i)
            setattr(self, f"proj_conv{sfx}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False))
            setattr(self, f"proj_bn{sfx}", nn.BatchNorm2d(widths[i + 1]))
            setattr(self, f"proj_lif{sfx}", lif())
        self.rpe_conv = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dim)
        self.rpe_lif = lif()
        self.pool = MaxPool()

    def forward(self, x):  # [T, B, C, H, W]
        for i in range(4):
            sfx = "" if i == 0 else str(i)
            x = conv_bn_fire(getattr(self, f"proj_conv{sfx}"), getattr(self, f"proj_bn{sfx}"),
                             getattr(self, f"proj_lif{sfx}"), x)
            if self.pooling[i] == "1":
                x = seq(self.pool, x)
        return x + conv_bn_fire(self.rpe_conv, self.rpe_bn, self.rpe_lif, x)


def _heads(s: torch.Tensor, h: int) -> torch.Tensor:
    """[T, B, N, D] -> [T, B, h, N, d] (channel c -> head c // d)."""
    T, B, N, D = s.shape
    return s.reshape(T, B, N, h, D // h).permute(0, 1, 3, 2, 4).contiguous()


# ---------------------------------------------------------------- CIFAR file: tokens [T, B, N, D]
def _linear_bn_fire(m: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """``{name}_lif(BN1d({name}_linear(x)))`` on tokens ``x[T, B, N, D]`` -> spikes ``[T, B, N, D']``;
    BN1d normalises the channels of the transposed token matrix (speed.bn_fire may fuse it)."""
    y = getattr(m, f"{name}_linear")(x.flatten(0, 1))                                   # [TB, N, D']
    s = bn_fire(getattr(m, f"{name}_bn"), getattr(m, f"{name}_lif"), y.transpose(-1, -2), x.shape[0])
    return s.transpose(-1, -2).contiguous()                                             # [T, B, N, D']


class LinearSSA(nn.Module):
    """SSA of the CIFAR file: ``nn.Linear`` projections with bias, BN1d over channels."""

    def __init__(self, dim: int, num_heads: int, scale: float = 0.125):
        super().__init__()
        self.num_heads, self.scale = num_heads, scale
        for n in ("q", "k", "v", "proj"):
            setattr(self, f"{n}_linear", nn.Linear(dim, dim))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", lif())
        self.attn_lif = lif(v_threshold=0.5)

    def _branch(self, n: str, x: torch.Tensor) -> torch.Tensor:
        return _linear_bn_fire(self, n, x)

    def forward(self, x):  # [T, B, N, D]
        T, B, N, D = x.shape
        q, k, v = (_heads(self._branch(n, x), self.num_heads) for n in ("q", "k", "v"))
        y = ((q @ k.transpose(-2, -1)) * self.scale) @ v                                   # [T,B,h,N,d]
        y = self.attn_lif(y.transpose(2, 3).reshape(T, B, N, D).contiguous())
        return self._branch("proj", y)


class LinearMLP(nn.Module):
    """MLP of the CIFAR file: SN(BN1d(Linear)) twice, D -> hidden -> D."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_linear, self.fc1_bn, self.fc1_lif = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), lif()
        self.fc2_linear, self.fc2_bn, self.fc2_lif = nn.Linear(hidden, dim), nn.BatchNorm1d(dim), lif()

    def forward(self, x):  # [T, B, N, D]
        for i in (1, 2):
            x = _linear_bn_fire(self, f"fc{i}", x)
        return x


# ------------------------------------------------------- ImageNet / DVS files: tokens [T, B, D, N]
class ConvSSA(nn.Module):
    """SSA of the ImageNet and DVS files: ``Conv1d(k=1)`` projections (q/k/v without bias, proj with
    bias), BN1d.

    ``proj_lif_over_tb=True`` reproduces the QKFormer defect (its spec §6.1): the output neuron runs
    over the merged ``T*B`` axis, so its membrane flows from one sample of the batch into the next
    (outputs then depend on batch size and order). Off by default; QKFormer's converter sets it.
    """

    def __init__(self, dim: int, num_heads: int, scale: float = 0.125, proj_lif_over_tb: bool = False,
                 proj_neuron: bool = True):
        super().__init__()
        self.num_heads, self.scale = num_heads, scale
        self.proj_lif_over_tb = proj_lif_over_tb
        self.proj_neuron = proj_neuron  # False: return BN(proj(.)) (membrane-shortcut plug-in use)
        self.attn_map = nn.Identity()   # hook point: K^T V per head, [T,B,h,d,d]
        for n in ("q", "k", "v", "proj"):
            setattr(self, f"{n}_conv", nn.Conv1d(dim, dim, 1, bias=(n == "proj")))
            setattr(self, f"{n}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", lif())
        self.attn_lif = lif(v_threshold=0.5)

    def _branch(self, n: str, x: torch.Tensor) -> torch.Tensor:
        return conv_bn_fire(getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn"), getattr(self, f"{n}_lif"), x)

    def _qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Q K^T V of binary spikes, in the order with fewer products: Q (K^T V) (d x d per head,
        the official order) unless there are fewer tokens than head channels (QKFormer's last
        stage at 32x32 input: 4 tokens, d = 64, where the 64 x 64 K^T V product of inner size 4
        took 1.4 ms per call in bf16 here) and nothing watches ``attn_map``. Both orders give the
        same values: every partial sum is an integer (at most N, d or N*d) that float32, and bf16
        up to 256, hold exactly, and the products accumulate in float32."""
        N, d = q.shape[-2:]
        if N < d <= 256 and isinstance(self.attn_map, nn.Identity) and not _hooked(self.attn_map):
            return (q @ k.transpose(-2, -1)) @ v
        return q @ self.attn_map(k.transpose(-2, -1) @ v)

    def forward(self, x):  # [T, B, D, N]
        T, B, D, N = x.shape
        q, k, v = (_heads(self._branch(n, x).transpose(-1, -2), self.num_heads) for n in ("q", "k", "v"))
        y = self._qkv(q, k, v) * self.scale                                                # [T,B,h,N,d]
        y = self.attn_lif(y.transpose(3, 4).reshape(T, B, D, N).contiguous())
        if not self.proj_neuron:
            return seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
        if self.proj_lif_over_tb:
            y = seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
            return self.proj_lif(y.flatten(0, 1)).reshape(T, B, D, N)
        return self._branch("proj", y)


class ConvMLP(nn.Module):
    """MLP of the ImageNet file (``conv_dim=2``: Conv2d 1x1 + BN2d on the token grid) or of the DVS
    file (``conv_dim=1``: Conv1d k=1 + BN1d)."""

    def __init__(self, dim: int, hidden: int, conv_dim: int = 2):
        super().__init__()
        Conv, BN = (nn.Conv2d, nn.BatchNorm2d) if conv_dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv_dim = conv_dim
        self.fc1_conv, self.fc1_bn, self.fc1_lif = Conv(dim, hidden, 1), BN(hidden), lif()
        self.fc2_conv, self.fc2_bn, self.fc2_lif = Conv(hidden, dim, 1), BN(dim), lif()

    def forward(self, x, grid):  # x [T, B, D, N], grid (H, W)
        T, B, D, N = x.shape
        if self.conv_dim == 2:
            x = x.reshape(T, B, D, *grid)
        for i in (1, 2):
            x = conv_bn_fire(getattr(self, f"fc{i}_conv"), getattr(self, f"fc{i}_bn"), getattr(self, f"fc{i}_lif"), x)
        return x.reshape(T, B, D, N)


class Block(nn.Module):
    """X <- X + SSA(X); X <- X + MLP(X).

    ``attention``: None or ``"ssa"`` builds the layout's official SSA; any other plug-in name
    (:mod:`spikeformers.models.plugins`) builds that attention on the spike stream (its input is
    the integer-valued stream as is, its increment is fired), seen as a ``[T,B,D,H,W]`` token map.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layout: str, scale: float,
                 attention: str | None = None, attn_kwargs: dict | None = None, num_tokens: int | None = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.plugin = attention not in (None, "ssa")
        if self.plugin:
            from .plugins import build_attention  # plugins imports this module
            self.attn = build_attention(attention, dim, num_heads, stream="spike", num_tokens=num_tokens,
                                        **(attn_kwargs or {}))
        elif attn_kwargs:
            raise ValueError(f"attn_kwargs {attn_kwargs} need a plug-in attention; the official SSA takes attn_scale")
        if layout == "cifar":
            if not self.plugin:
                self.attn = LinearSSA(dim, num_heads, scale)
            self.mlp = LinearMLP(dim, hidden)
        else:
            if not self.plugin:
                self.attn = ConvSSA(dim, num_heads, scale)
            self.mlp = ConvMLP(dim, hidden, conv_dim=2 if layout == "imagenet" else 1)
        self.layout = layout

    def _plugin(self, x, grid):
        if self.layout == "cifar":  # [T,B,N,D]
            T, B, N, D = x.shape
            y = self.attn(x.transpose(-1, -2).reshape(T, B, D, *grid))
            return y.flatten(3).transpose(-1, -2)
        T, B, D, N = x.shape        # [T,B,D,N]
        return self.attn(x.reshape(T, B, D, *grid)).flatten(3)

    def forward(self, x, grid):
        x = x + (self._plugin(x, grid) if self.plugin else self.attn(x))
        return x + (self.mlp(x) if self.layout == "cifar" else self.mlp(x, grid))


class Spikformer(SpikingModel):
    """Spikformer-L-D: ``depths`` blocks of width ``embed_dim`` with ``num_heads`` heads.

    ``layout`` picks the official file whose layers are reproduced (see the module docstring);
    ``attn_scale`` defaults to that file's constant. ``attention`` (None: the official SSA) swaps
    in any plug-in attention by name, ``attn_kwargs`` its options (see :class:`Block`).
    """

    family = "spikformer"

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 512, depths: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0,
                 T: int = 4, layout: str = "imagenet", attn_scale: float | None = None,
                 attention: str | None = None, attn_kwargs: dict | None = None):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"Spikformer layout must be one of {_LAYOUTS}, got {layout!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.T, self.in_chans, self.img_size, self.num_classes = T, in_chans, img_size, num_classes
        self.layout = layout
        scale = attn_scale if attn_scale is not None else (0.25 if layout == "dvs" else 0.125)
        pooling = "0011" if layout == "cifar" else "1111"
        self.patch_embed = SpikformerSPS(in_chans, embed_dim, pooling)
        grid = img_size
        for p in pooling:
            grid = (grid - 1) // 2 + 1 if p == "1" else grid
        self.attention = attention
        self.block = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, layout, scale, attention, attn_kwargs,
                                         num_tokens=grid * grid)
                                   for _ in range(depths))
        self.head = nn.Linear(embed_dim, num_classes)
        for m in self.modules():  # the official init: trunc-normal Linear weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> token-mean features [T, B, D]."""
        x = self.patch_embed(x)                          # [T, B, D, H', W']
        grid = tuple(x.shape[-2:])
        if self.layout == "cifar":
            x = x.flatten(-2).transpose(-1, -2)          # [T, B, N, D]
        else:
            x = x.flatten(-2)                            # [T, B, D, N]
        for blk in self.block:
            x = blk(x, grid)
        return x.mean(2) if self.layout == "cifar" else token_mean(x, 1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(0))


_SRC = "ZK-Zhou/spikformer:"
_CIFAR = dict(img_size=32, in_chans=3, num_classes=10, T=4, mlp_ratio=4.0, layout="cifar")
_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, T=4, mlp_ratio=4.0, layout="imagenet")
_DVS = dict(img_size=128, in_chans=2, T=16, mlp_ratio=4.0, layout="dvs")


def _spikformer(**kw) -> Spikformer:
    return Spikformer(**kw)


def _meta(params, top1, path):
    return {"paper_params": params, "paper_top1": top1, "source": _SRC + path}


@register_model(**_CIFAR, embed_dim=256, depths=4, num_heads=8,
                meta=_meta("4.15 M", {"cifar10": 93.94, "cifar100": 75.96}, "cifar10/model.py:Spikformer"))
def spikformer_4_256_cifar(**kw):
    """Spikformer-4-256, CIFAR (heads not stated in the paper; 8 here, no effect on the count)."""
    return _spikformer(**kw)


@register_model(**_CIFAR, embed_dim=384, depths=2, num_heads=12,
                meta=_meta("5.76 M", {"cifar10": 94.80, "cifar100": 76.95}, "cifar10/model.py:Spikformer"))
def spikformer_2_384_cifar(**kw):
    """Spikformer-2-384, CIFAR."""
    return _spikformer(**kw)


@register_model(**_CIFAR, embed_dim=384, depths=4, num_heads=12,
                meta=_meta("9.32 M", {"cifar10": 95.19, "cifar100": 77.86}, "cifar10/model.py:Spikformer"))
def spikformer_4_384_cifar(**kw):
    """Spikformer-4-384, CIFAR (``cifar10.yml``; 95.51 / 78.21 with 400 epochs)."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=384, depths=8, num_heads=8,
                meta=_meta("16.81 M", {"imagenet": 70.24}, "imagenet/model.py:Spikformer"))
def spikformer_8_384(**kw):
    """Spikformer-8-384, ImageNet 224, T=4."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, depths=6, num_heads=8,
                meta=_meta("23.37 M", {"imagenet": 72.46}, "imagenet/model.py:Spikformer"))
def spikformer_6_512(**kw):
    """Spikformer-6-512, ImageNet 224, T=4."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, depths=8, num_heads=8,
                meta=_meta("29.68 M", {"imagenet": 73.38}, "imagenet/model.py:Spikformer"))
def spikformer_8_512(**kw):
    """Spikformer-8-512, ImageNet 224, T=4 (the official factory's configuration)."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=512, depths=10, num_heads=8,
                meta=_meta("36.01 M", {"imagenet": 73.68}, "imagenet/model.py:Spikformer"))
def spikformer_10_512(**kw):
    """Spikformer-10-512, ImageNet 224, T=4."""
    return _spikformer(**kw)


@register_model(**_IMAGENET, embed_dim=768, depths=8, num_heads=12,
                meta=_meta("66.34 M", {"imagenet": 74.81}, "imagenet/model.py:Spikformer"))
def spikformer_8_768(**kw):
    """Spikformer-8-768, ImageNet 224, T=4 (12 heads, as the Spikingformer energy tool assumes)."""
    return _spikformer(**kw)


@register_model(**_DVS, num_classes=10, embed_dim=256, depths=2, num_heads=16,
                meta=_meta("2.57 M", {"cifar10dvs": 80.9, "cifar10dvs@T10": 78.9}, "cifar10dvs/model.py:Spikformer"))
def spikformer_2_256_cifar10dvs(**kw):
    """Spikformer-2-256, CIFAR10-DVS 128x128 frames, T=16 (scale 0.25, 16 heads: the official factory)."""
    return _spikformer(**kw)


@register_model(**_DVS, num_classes=11, embed_dim=256, depths=2, num_heads=8,
                meta=_meta("2.57 M", {"dvs128": 98.3, "dvs128@T10": 96.9}, "cifar10dvs/model.py:Spikformer"))
def spikformer_2_256_gesture(**kw):
    """Spikformer-2-256, DVS128 Gesture, T=16. The repository has no Gesture code: this is the DVS
    file with 8 heads and 11 classes; the paper's extra 1-D max-pool after Q and K is not included."""
    return _spikformer(**kw)
