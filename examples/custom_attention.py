"""A new spiking attention, plugged into existing backbones by name.

    python examples/custom_attention.py

(The Spikformer backbone's residual stream adds spikes, so it holds small integers, and the layers
reading it multiply integers by weights: the audit reports those products, attention or not.)

An attention takes ``(dim, num_heads=..., stream=..., **options)`` and maps the block's stream
``x[T, B, D, H, W]`` to the increment the block adds to it. ``QKVProjections`` gives the usual
Q / K / V 1x1 conv + BatchNorm projections, the input neuron of the membrane stream and the output
projection. Registered under a name, it works in every backbone that takes ``attention=``.
"""

from __future__ import annotations

import torch

import spikeformers
from spikeformers.analysis.energy import audit, calibrate_batchnorm, measure
from spikeformers.nn.attention import QKVProjections, register_attention
from spikeformers.nn.attention.common import heads, unheads
from spikeformers.nn.layers import lif


class KeyGatedAttention(QKVProjections):
    """out = BN(W_proj (Q * SN_th(sum over tokens of K))): each head keeps the channels its keys
    fire in often enough. Q and K are binary spikes, so both products are masks (additions only)."""

    def __init__(self, dim: int, num_heads: int = 8, threshold: float = 2.0, stream: str = "membrane", neuron=lif):
        super().__init__(dim, num_heads, stream, neuron, qkv="qk")
        self.q_lif, self.k_lif = neuron(), neuron()
        self.gate_lif = neuron(v_threshold=threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # [T, B, D, H, W]
        s = self.shortcut_lif(x)
        q = heads(self.fire("q", s), self.num_heads)                 # [T, B, h, N, d] binary
        k = heads(self.fire("k", s), self.num_heads)
        gate = self.attn_map(self.gate_lif(k.sum(dim=-2, keepdim=True)))   # [T, B, h, 1, d] binary
        return self.output(unheads(q * gate, x.shape))


def main(argv=None) -> dict:
    register_attention("key_gated", KeyGatedAttention)
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    results = {}
    for backbone in ("spikedriven_fmnist", "spikformer_4_256_cifar"):
        kw = {"img_size": 28, "in_chans": 1} if "spikformer" in backbone else {}
        model = spikeformers.create_model(backbone, attention="key_gated", attn_kwargs={"threshold": 1.0},
                                          embed_dim=32, num_heads=2, **kw)
        xb = x if model.in_chans == 1 else x.repeat(1, 3, 1, 1)
        calibrate_batchnorm(model, xb)
        logits = model(xb)
        problems = audit(measure(model, [xb]))
        kinds = sorted({" x ".join(p.domains) for p in problems})
        print(f"{backbone} with key_gated attention: logits {tuple(logits.shape)}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, audit "
              f"{'PASS' if not problems else f'{len(problems)} products of {kinds}'}")
        results[backbone] = (tuple(logits.shape), problems)
    return results


if __name__ == "__main__":
    main()
