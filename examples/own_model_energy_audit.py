"""Your own spiking network through the energy recorder and the addition-only audit.

    python examples/own_model_energy_audit.py

Any ``nn.Module`` built from spikeformers neurons works: the recorder sees every product the forward
pass computes (convolutions, linears, and the activation x activation products inside attention
that module hooks miss), classifies each operand as binary / ternary spikes, integers or reals,
and the audit lists every product with no spike operand outside the first layer and the classifier.
Here: a small convolutional SNN whose second layer is fed a *real* membrane by mistake, which the
audit catches; the fixed version passes.
"""

from __future__ import annotations

import torch
from torch import nn

from spikeformers.analysis.energy import audit, calibrate_batchnorm, measure
from spikeformers.nn.neurons import LIF


class TinySNN(nn.Module):
    """conv -> BN -> LIF -> conv -> BN -> LIF -> mean -> linear, time-first inside."""

    def __init__(self, T: int = 4, leak_membrane: bool = False):
        super().__init__()
        self.T, self.leak_membrane = T, leak_membrane
        self.conv1, self.bn1, self.lif1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), LIF(tau=2.0)
        self.conv2, self.bn2, self.lif2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), LIF(tau=2.0)
        self.head = nn.Linear(32, 10)

    def forward(self, x):                                     # x: [B, 1, H, W]
        T, B = self.T, x.shape[0]
        u = self.bn1(self.conv1(x)).unsqueeze(0).expand(T, -1, -1, -1, -1)   # [T, B, 16, H, W]
        s = self.lif1(u)                                                   # spikes
        feed = u if self.leak_membrane else s                              # the bug: the membrane, not spikes
        s = self.lif2(self.bn2(self.conv2(feed.flatten(0, 1))).reshape(T, B, 32, *x.shape[-2:]))
        return self.head(s.mean((0, 3, 4)))


def main(argv=None) -> dict:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    found = {}
    for leak in (True, False):
        model = calibrate_batchnorm(TinySNN(leak_membrane=leak), x)   # untrained: BatchNorm statistics from data
        report = measure(model, [x])
        problems = audit(report)
        t = report.totals("strict")
        print(f"leak_membrane={leak}: {t['energy_mj'] * 1e6:.1f} nJ/image (strict), "
              f"mean firing rate {t['mean_firing_rate']:.3f}, audit: {'FAIL' if problems else 'PASS'}")
        for p in problems:
            print("   ", p)
        found[leak] = problems
    return found


if __name__ == "__main__":
    main()
