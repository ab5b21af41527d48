"""Block-level token mechanisms: TP-Spikformer token pruning and STAS-style adaptive halting.

Both decide, per block, which tokens the block updates; the others *skip the block unchanged* (they
are not deleted, later blocks see them again). They work on the membrane-shortcut backbone
(:class:`spikeformers.models.sdt.SpikeDrivenTransformer`, ``token_keep=`` / ``halting=``) and need no
retraining: set them on a trained model (``model.set_token_pruning(...)``,
``model.set_halting(...)``) and evaluate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["ir_score", "select_tokens", "gather_tokens", "scatter_tokens", "AdaptiveHalting"]

IR_LOCAL = ("per_channel", "official")


def ir_score(u: torch.Tensor, local: str = "per_channel") -> torch.Tensor:
    """TP-Spikformer's information-retaining score of every token of a block input ``u[T,B,C,H,W]``
    (Wei et al., ICLR 2026; official code). Returns ``[B, H*W]`` (one score per
    token, shared by all time steps)::

        m   = mean_C u                                           [T,B,N]
        s_t = softmax_N( mean_t |m[t] - m[t-1]| )                temporal change (0 when T = 1)
        x   = mean_T u                                           [B,C,H,W]
        L   = 3x3 local average of x (zero padding)
        s_s = softmax_N( -cos_C(x, L) )                          local dissimilarity
        score = s_t + s_s

    ``local="official"`` reproduces the official local average exactly: an all-ones C x C x 3 x 3
    kernel / 9, which sums the local means of *all* channels and writes that one value into every
    channel, so the cosine reduces to sign(L) * sum_c x_c / (sqrt(C) |x|) (it scores how uniform a
    token's channels are; the neighbourhood enters only through the sign). ``"per_channel"``
    (default) is the evident intent, a per-channel (depthwise) 3x3 average [I].

    The score is real-valued arithmetic on the membrane (means, a cosine, softmaxes): it is not
    addition-only, and an energy audit of a pruned model lists its products.
    """
    if local not in IR_LOCAL:
        raise ConfigError(f"local must be one of {IR_LOCAL}, got {local!r}")
    T, B, C, H, W = u.shape
    m = u.mean(2).flatten(2)                                         # [T,B,N]
    if T > 1:
        s_t = (m[1:] - m[:-1]).abs().mean(0)
    else:
        s_t = torch.zeros_like(m[0])
    s_t = s_t.softmax(-1)
    x = u.mean(0)                                                    # [B,C,H,W]
    if local == "official":
        kernel = torch.ones(C, C, 3, 3, dtype=x.dtype, device=x.device) / 9.0
        loc = F.conv2d(x, kernel, padding=1)
    else:
        loc = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    s_s = (-F.cosine_similarity(x, loc, dim=1)).flatten(1).softmax(-1)
    return s_t + s_s


def select_tokens(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k*k]`` of the top-k² tokens of ``score[B, N]``, in raster order (so the k x k
    map keeps the kept tokens' relative order)."""
    if k < 1 or k * k > score.shape[-1]:
        raise ConfigError(f"token_keep k={k} must satisfy 1 <= k^2 <= N={score.shape[-1]}")
    return score.topk(k * k, dim=-1).indices.sort(-1).values


def gather_tokens(u: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """``u[T,B,C,H,W]``, ``idx[B,k*k]`` -> the kept tokens as a k x k map ``[T,B,C,k,k]``."""
    T, B, C = u.shape[:3]
    g = u.flatten(3).gather(3, idx[None, :, None, :].expand(T, B, C, idx.shape[-1]))
    return g.reshape(T, B, C, k, k)


def scatter_tokens(u: torch.Tensor, idx: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    """``u`` with the tokens ``idx`` replaced by ``sub[T,B,C,k,k]`` (the others unchanged)."""
    T, B, C, H, W = u.shape
    out = u.flatten(3).scatter(3, idx[None, :, None, :].expand(T, B, C, idx.shape[-1]), sub.flatten(3))
    return out.reshape(T, B, C, H, W)


class AdaptiveHalting(nn.Module):
    """STAS-style adaptive computation time over blocks *and* time steps (Kang et al., arXiv
    2508.14138).

    **Inferred [I], not verified: STAS has no public code and this formula is an inference
    from the abstract (ACT / A-ViT-style halting); its constants are arguments.** After each block
    l, every token gets a halting score from its membrane, accumulated over blocks::

        h[l,t,n] = sigmoid( gamma * mean_C U_l[t,:,n] + beta )       (A-ViT's gamma 5, beta -10)
        c[l,t,n] = sum_{l' <= l} h[l',t,n]
        halted after block l at step t:  c[l,t,n] >= 1 - eps,  or halted at an earlier step t' < t

    A halted token skips every later block at this and every later time step: its membrane input
    to the block is zeroed (its input spikes vanish, so the event-driven cost of its own spikes
    goes) and its membrane keeps its value. The first block always runs on every token.
    ``ponder`` (after a forward) is the mean number of blocks each token ran, differentiable
    through h as in ACT (the training engine does not add it to the loss: set the constants, or
    add ``weight * model.halting.ponder`` in your own loop). STAS's I-SPS stem is not built.
    """

    def __init__(self, gamma: float = 5.0, beta: float = -10.0, eps: float = 0.01):
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ConfigError(f"halting eps must be in [0, 1), got {eps}")
        self.gamma, self.beta, self.eps = gamma, beta, eps
        self.ponder = None
        self.active_fraction: list[float] = []

    def score(self, u: torch.Tensor) -> torch.Tensor:
        """h ``[T,B,N]`` of a block output ``u[T,B,C,H,W]``."""
        return torch.sigmoid(self.gamma * u.mean(2).flatten(2) + self.beta)

    def run(self, blocks, u: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = u.shape
        cum = u.new_zeros(T, B, H * W)
        halted = torch.zeros(T, B, H * W, dtype=torch.bool, device=u.device)
        ponder, self.active_fraction = 0.0, []
        for i, blk in enumerate(blocks):
            active = (~halted).to(u.dtype)
            self.active_fraction.append(float(active.mean()))
            u = blk(u, active=active.reshape(T, B, 1, H, W)) if i > 0 else blk(u)
            h = self.score(u) * active
            ponder = ponder + active.mean() + (h - h.detach()).mean()  # value: blocks run; grad: via h
            cum = cum + h
            halted = halted | (cum >= 1.0 - self.eps)
            halted = torch.cummax(halted.to(torch.uint8), dim=0).values.bool()
        self.ponder = ponder
        return u

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, beta={self.beta}, eps={self.eps}"
