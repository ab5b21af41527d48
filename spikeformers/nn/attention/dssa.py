"""SpikingResformer's Dual Spike Self-Attention, DSSA (Shi et al., CVPR 2024)::

    S = SN(X);  [Y1, Y2] = BN(Conv_p(S))                 patch conv, p = patch_size: N' pooled tokens
    A = SN(Y1^T S * c1)                                   binary attention [T,B,h,N',HW]
    out = BN(W_proj SN(Y2 A * c2)) (+ X)                 c1 = 1/sqrt(r_x d), c2 = 1/sqrt(r_A N')

r_x and r_A are per-head firing rates (an EMA in training, frozen in eval), so the scales undo the
sparsity of the spike products. :class:`DSSAPlugin` puts it on the plug-in interface of
:mod:`spikeformers.nn.attention`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ..layers import lif, seq
from ..neurons import LIF, PLIF, ATan
from .common import check_attention_args

__all__ = ["DSSA", "DSSAPlugin", "resformer_neuron"]


def resformer_neuron(kind: str):
    """The official neurons: LIF or PLIF, tau 2, threshold 1, hard reset, ATan(alpha=2)."""
    if kind == "LIF":
        return lambda: LIF(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                           detach_reset=True, surrogate=ATan(2.0))
    if kind == "PLIF":
        return lambda: PLIF(init_tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                            detach_reset=True, surrogate=ATan(2.0))
    raise ConfigError(f"SpikingResformer neuron must be 'LIF' or 'PLIF', got {kind!r}")


class DSSA(nn.Module):
    """Dual Spike Self-Attention with its residual (formula in the module docstring).

    ``tokens`` is the official constant N' (used when ``fixed_tokens``); otherwise N' is the pooled
    token count of the input at run time.
    """

    momentum = 0.999

    def __init__(self, dim: int, num_heads: int, patch_size: int, tokens: int | None = None,
                 fixed_tokens: bool = False, neuron=None, residual: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"DSSA dim {dim} must be divisible by num_heads {num_heads}")
        if fixed_tokens and tokens is None:
            raise ConfigError("DSSA fixed_tokens=True needs the token count N' (tokens=...)")
        neuron = neuron or resformer_neuron("LIF")
        self.dim, self.num_heads, self.patch_size = dim, num_heads, patch_size
        self.tokens, self.fixed_tokens = tokens, fixed_tokens
        self.residual = residual      # False: return the increment only (plug-in use)
        self.attn_map = nn.Identity()  # hook point: the binary attention A [T,B,h,N',HW]
        self.register_buffer("firing_rate_x", torch.zeros(1, 1, num_heads, 1, 1))
        self.register_buffer("firing_rate_attn", torch.zeros(1, 1, num_heads, 1, 1))
        self._rate_started = {"firing_rate_x": False, "firing_rate_attn": False}
        self.activation_in = neuron()
        self.W = nn.Conv2d(dim, 2 * dim, patch_size, patch_size, bias=False)
        self.norm = nn.BatchNorm2d(2 * dim)
        self.activation_attn = neuron()
        self.activation_out = neuron()
        self.Wproj = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm_proj = nn.BatchNorm2d(dim)

    def _rate(self, name: str, spikes: torch.Tensor) -> torch.Tensor:
        """Per-head firing rate [1,1,h,1,1]: EMA-updated in training, frozen in eval."""
        batch_rate = spikes.detach().mean((0, 1, 3, 4), keepdim=True)
        buf = getattr(self, name)
        if self.training:
            if not self._rate_started[name] and torch.all(buf == 0):
                buf = batch_rate
            self._rate_started[name] = True
            buf = buf * self.momentum + batch_rate * (1 - self.momentum)
            setattr(self, name, buf)
            return buf
        # Untrained heads (rate exactly 0) would give an infinite scale: use the batch's rate.
        # (Only then: a trained buffer is a constant, not a function of this batch's activations.)
        if torch.compiler.is_compiling():   # graph capture (torch.export, ONNX): the same values, no branch on data
            return torch.where(buf == 0, batch_rate, buf)
        return torch.where(buf == 0, batch_rate, buf) if bool((buf == 0).any()) else buf

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, B, C, H, W], real-valued
        T, B, C, H, W = x.shape
        h, d = self.num_heads, C // self.num_heads
        xs = self.activation_in(x)
        y = seq(lambda z: self.norm(self.W(z)), xs)
        n_pooled = y.shape[-2] * y.shape[-1]
        y = y.reshape(T, B, h, 2 * d, -1)
        y1, y2 = y[:, :, :, :d, :], y[:, :, :, d:, :]
        xs = xs.reshape(T, B, h, d, -1)

        scale1 = 1.0 / torch.sqrt(self._rate("firing_rate_x", xs) * (self.dim // h))
        attn = self.attn_map(self.activation_attn(torch.matmul(y1.transpose(-1, -2), xs) * scale1))

        tokens = self.tokens if self.fixed_tokens else n_pooled
        scale2 = 1.0 / torch.sqrt(self._rate("firing_rate_attn", attn) * tokens)
        out = (torch.matmul(y2, attn) * scale2).reshape(T, B, C, H, W)
        out = self.activation_out(out)
        out = seq(lambda z: self.norm_proj(self.Wproj(z)), out)
        return out + x if self.residual else out


class DSSAPlugin(DSSA):
    """SpikingResformer's Dual Spike Self-Attention (``resformer.DSSA``, per-head firing-rate
    scaling, patch size ``patch_size``) on the plug-in interface: its own input neuron is the
    membrane stream's (``activation_in``; an identity on the spike stream), the residual is left to
    the block, and on the spike stream the projection is fired (``proj_lif``). Neurons are the
    backbone's (``neuron``), not SpikingResformer's ATan LIF. N' is the pooled token count of the
    input (``fixed_tokens=False``)."""

    def __init__(self, dim: int, num_heads: int = 8, patch_size: int = 2, stream: str = "membrane",
                 neuron=lif):
        check_attention_args(dim, num_heads, stream)
        super().__init__(dim, num_heads, patch_size, neuron=neuron, residual=False)
        self.stream = stream
        if stream == "spike":
            self.activation_in = nn.Identity()
        self.proj_lif = neuron() if stream == "spike" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.patch_size or x.shape[-2] < self.patch_size:
            raise ConfigError(f"DSSA patch_size {self.patch_size} is larger than the {x.shape[-2]}x{x.shape[-1]} "
                             "token map; pass attn_kwargs={'patch_size': ...}")
        y = super().forward(x)
        return self.proj_lif(y) if self.proj_lif is not None else y
