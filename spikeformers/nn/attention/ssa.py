"""Spikformer's Spiking Self-Attention, SSA (Zhou et al., ICLR 2023), per head (d = D/h)::

    Q, K, V = SN(BN(W_q X)), SN(BN(W_k X)), SN(BN(W_v X))        binary
    SSA(X)  = SN(BN(W_p SN_0.5( Q K^T V * s ) + b_p))            s = 0.125 (0.25 in the DVS file)

Q K^T V is a product of binary matrices, so every intermediate is an exact multiple of 2^-3 in
float32 and the order of the two products cannot change a spike. :class:`LinearSSA` is the layer of
the official CIFAR file (``nn.Linear`` + BN1d on tokens ``[T,B,N,D]``), :class:`ConvSSA` the one of
the ImageNet and DVS files (``Conv1d(k=1)`` + BN1d on ``[T,B,D,N]``); :class:`SSA` puts ConvSSA on the
plug-in interface of :mod:`spikeformers.nn.attention`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fused import hooked
from ..layers import conv_bn_fire, lif, linear_bn_fire, seq
from .common import check_attention_args

__all__ = ["LinearSSA", "ConvSSA", "SSA"]


def _token_heads(s: torch.Tensor, h: int) -> torch.Tensor:
    """[T, B, N, D] -> [T, B, h, N, d] (channel c -> head c // d)."""
    T, B, N, D = s.shape
    return s.reshape(T, B, N, h, D // h).permute(0, 1, 3, 2, 4).contiguous()


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
        return linear_bn_fire(self, n, x)

    def forward(self, x):  # [T, B, N, D]
        T, B, N, D = x.shape
        q, k, v = (_token_heads(self._branch(n, x), self.num_heads) for n in ("q", "k", "v"))
        y = ((q @ k.transpose(-2, -1)) * self.scale) @ v                                   # [T,B,h,N,d]
        y = self.attn_lif(y.transpose(2, 3).reshape(T, B, N, D).contiguous())
        return self._branch("proj", y)


class ConvSSA(nn.Module):
    """SSA of the ImageNet and DVS files: ``Conv1d(k=1)`` projections (q/k/v without bias, proj with
    bias), BN1d.

    ``proj_lif_over_tb=True`` reproduces a defect of the official QKFormer code: the output neuron runs
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
        if N < d <= 256 and isinstance(self.attn_map, nn.Identity) and not hooked(self.attn_map):
            return (q @ k.transpose(-2, -1)) @ v
        return q @ self.attn_map(k.transpose(-2, -1) @ v)

    def forward(self, x):  # [T, B, D, N]
        T, B, D, N = x.shape
        q, k, v = (_token_heads(self._branch(n, x).transpose(-1, -2), self.num_heads) for n in ("q", "k", "v"))
        y = self._qkv(q, k, v) * self.scale                                                # [T,B,h,N,d]
        y = self.attn_lif(y.transpose(3, 4).reshape(T, B, D, N).contiguous())
        if not self.proj_neuron:
            return seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
        if self.proj_lif_over_tb:
            y = seq(lambda z: self.proj_bn(self.proj_conv(z)), y)
            return self.proj_lif(y.flatten(0, 1)).reshape(T, B, D, N)
        return self._branch("proj", y)


class SSA(ConvSSA):
    """Spikformer's Spiking Self-Attention (``spikformer.ConvSSA``, the ImageNet/DVS file's layers)
    on the plug-in interface: ``SN_0.5(Q (K^T V) * scale)`` then the projection; on the membrane
    stream the input is fired first (``shortcut_lif``) and the projection's output neuron is off."""

    def __init__(self, dim: int, num_heads: int = 8, scale: float = 0.125, stream: str = "membrane",
                 neuron=lif):
        check_attention_args(dim, num_heads, stream)
        super().__init__(dim, num_heads, scale, proj_neuron=stream == "spike")
        self.stream = stream
        self.shortcut_lif = neuron() if stream == "membrane" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T,B,C,H,W]
        return super().forward(self.shortcut_lif(x).flatten(3)).reshape(x.shape)
