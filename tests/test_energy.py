"""Energy recorder, accountings and the addition-only audit, checked against hand counts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spikeformers import create_model
from spikeformers.analysis.energy import (E_AC_PJ, E_MAC_PJ, EnergyRecorder, audit, measure, plot_attention,
                                 plot_firing_rates)
from spikeformers.analysis import energy
from spikeformers.neurons import LIF


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------------------------
# A tiny model counted on paper: repeat T=2 -> conv3x3 (1->2, no bias) -> LIF -> linear(32->3)
# ----------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    T = 2
    family = None

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.lif = LIF()  # tau 2, threshold 1, hard reset
        self.fc = nn.Linear(32, 3)
        with torch.no_grad():
            # channel 0 copies the pixel (centre tap = gain), channel 1 is always 0
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = gain
            self.fc.weight.normal_()

    def forward(self, x):  # x [B,1,4,4]
        T, B = self.T, x.shape[0]
        y = self.conv(x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1))      # [T*B,2,4,4]
        s = self.lif(y.reshape(T, B, 2, 4, 4))                               # [T,B,2,4,4]
        return self.fc(s.flatten(2)).mean(0)                                 # [B,3]


def image(n3: int, n15: int) -> torch.Tensor:
    """A [1,1,4,4] image with n3 pixels of 3.0, n15 pixels of 1.5, the rest 0.

    LIF(tau=2) on a constant input X: H0 = X/2, fires at t0 iff X >= 2; without a spike
    H1 = 3X/4, fires at t1 iff X >= 4/3; after a spike (hard reset) t1 repeats t0.
    So a 3.0 pixel spikes at t0 and t1, a 1.5 pixel at t1 only, a 0 never."""
    x = torch.zeros(16)
    x[:n3] = 3.0
    x[n3:n3 + n15] = 1.5
    return x.reshape(1, 1, 4, 4)


CONV_FLOPS_PER_STEP = 2 * 4 * 4 * 9       # outputs (2 ch x 16 px) x (1 in-ch x 3x3 taps) = 288
FC_FLOPS_PER_STEP = 32 * 3                # 96


def test_tiny_model_hand_counts():
    rep = measure(Tiny(), [image(4, 4)])
    names = [r.name for r in rep.ops]
    assert names == ["conv", "fc"]
    conv, fc = rep.ops
    # spikes: 4 (t0) + 8 (t1) = 12 out of T * 32 = 64 neuron outputs
    assert fc.rate == pytest.approx(12 / 64)
    assert rep.neurons[0].rate == pytest.approx(12 / 64)
    assert fc.domains == ["binary", "weight"] and conv.domains == ["real", "weight"]
    assert rep.flops_per_image(conv) == 2 * CONV_FLOPS_PER_STEP
    assert rep.flops_per_image(fc) == 2 * FC_FLOPS_PER_STEP
    assert conv.time_repeated is True

    paper = rep.totals("paper")
    # first layer: its input repeats over T, counted once (E_MAC x FL1); fc: one AC per spike and output
    assert paper["macs"] == CONV_FLOPS_PER_STEP
    assert paper["acs"] == pytest.approx(12 * 3)
    assert paper["energy_mj"] == pytest.approx((4.6 * 288 + 0.9 * 36) * 1e-9)
    strict = rep.totals("strict")
    assert strict["macs"] == 2 * CONV_FLOPS_PER_STEP        # real input: MAC at every time step
    assert strict["acs"] == pytest.approx(36)
    assert strict["energy_mj"] == pytest.approx((4.6 * 576 + 0.9 * 36) * 1e-9)
    assert E_MAC_PJ == 4.6 and E_AC_PJ == 0.9
    assert paper["sops"] == pytest.approx(0.5 * 576 + 36)    # 8 of 16 pixels non-zero; same in both
    assert paper["accounting"] == "paper" and strict["accounting"] == "strict"
    assert audit(rep) == []                                  # only the first layer and the classifier


def test_all_zero_spikes_count_zero_acs():
    rep = measure(Tiny(gain=0.0), [image(4, 4)])               # conv output 0: the LIF never fires
    fc = rep.ops[1]
    assert fc.rate == 0.0 and fc.domains[0] == "binary"
    for acc in ("paper", "strict"):
        _, macs, acs = rep.classify(fc, acc)
        assert (macs, acs) == (0.0, 0.0)
        assert rep.totals(acc)["acs"] == 0.0


def test_rates_average_over_batches():
    # image(4,4): 12 spikes / 64; image(16,0): every channel-0 pixel fires twice: 32 / 64
    rep = measure(Tiny(), [image(4, 4), image(16, 0)])
    assert rep.images == 2
    assert rep.ops[1].rate == pytest.approx((12 / 64 + 32 / 64) / 2)
    assert rep.totals("strict")["acs"] == pytest.approx((12 * 3 + 32 * 3) / 2)   # per image
    # unequal batches: the rate is the per-element (per-image) average, not the mean of batch means
    rep = measure(Tiny(), [image(4, 4), torch.cat([image(16, 0)] * 3)])
    assert rep.ops[1].rate == pytest.approx((12 + 3 * 32) / (4 * 64))


def test_domains_merge_least_restrictive_wins():
    class Two(nn.Module):
        T = 1

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    m = Two()
    rep = measure(m, [torch.tensor([[0., 1, 0, 1]]), torch.tensor([[0., 2, 1, 1]])])
    assert rep.ops[0].domains[0] == "integer"                      # {0,1} then {0,1,2}
    assert rep.ops[0].rate == pytest.approx(5 / 8)
    rep = measure(m, [torch.tensor([[0., 1, 0, 1]]), torch.tensor([[0., -1, 1, 0]])])
    assert rep.ops[0].domains[0] == "ternary"
    rep = measure(m, [torch.tensor([[0., 1, 0, 1]]), torch.tensor([[0., 0.5, 1, 0]])])
    assert rep.ops[0].domains[0] == "real"
    rep = measure(m, [torch.tensor([[0., 3, -2, 1]])])
    assert rep.ops[0].domains[0] == "signed-integer"


# ----------------------------------------------------------------------------------------------
# The audit
# ----------------------------------------------------------------------------------------------
class Planted(nn.Module):
    """first conv -> LIF -> real projections a, b -> a @ b^T (real x real) -> LIF -> integer sum
    of spikes into a linear (integer x weight) -> constant scales (free) -> classifier."""

    T = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.lif = LIF()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.lif2 = LIF(v_threshold=0.1)
        self.mix = nn.Linear(16, 16)
        self.register_buffer("head_scale", torch.full((1, 1, 16), 0.5))
        self.cls = nn.Linear(16, 3)
        with torch.no_grad():
            self.conv.weight.mul_(6.0)

    def forward(self, x):  # [B,1,4,4]
        T, B = self.T, x.shape[0]
        s = self.lif(self.conv(x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)).reshape(T, B, 4, 16))
        tok = s.transpose(-1, -2)                                     # [T,B,16,4] binary
        att = self.a(tok) @ self.b(tok).transpose(-1, -2)             # [T,B,16,16] real x real
        z = self.lif2(att.mean(-1))                                   # [T,B,16] binary
        y = self.mix(z + s.sum(2).clamp(max=1))                       # {0,1,2}: integer x weight
        y = y * 0.125 * self.head_scale.sqrt()                        # constants: scale ops
        return self.cls(y).mean(0)


def test_audit_catches_planted_real_by_real_matmul_and_reports_integer():
    torch.manual_seed(1)
    rep = measure(Planted(), [torch.randn(2, 1, 4, 4)])
    found = {f.name: f for f in audit(rep)}
    assert set(found) == {"(model):matmul0", "mix"}, found
    assert found["(model):matmul0"].domains == ["real", "real"]
    assert found["(model):matmul0"].flops_per_image == 2 * 16 * 4 * 16   # T x (16x4 @ 4x16)
    assert found["mix"].domains == ["integer", "weight"]                 # not "binary"
    scales = [r for r in rep.ops if r.op == "scale"]
    assert len(scales) == 2                                              # x 0.125 and x buffer.sqrt()
    assert all(rep.classify(r, acc)[0] == "free" for r in scales for acc in ("paper", "strict"))
    # strict: the real x real matmul and the integer-input linear are MACs, paper calls them SOPs
    mm = next(r for r in rep.ops if r.name == "(model):matmul0")
    assert rep.classify(mm, "strict") == ("mac", 2 * 16 * 4 * 16, 0.0)
    assert rep.classify(mm, "paper")[0] == "ac"
    # the first layer and the classifier are exempt even though their inputs are real
    assert rep.role(rep.ops[0]) == "first" and rep.role(rep.ops[-1]) == "classifier"


def test_neuron_internals_are_not_recorded():
    # LIF's reset multiplies (H * (1 - S)) must not appear as products
    rep = measure(Tiny(), [image(4, 4)])
    assert all(r.module != "lif" for r in rep.ops)


# ----------------------------------------------------------------------------------------------
# Registered models
# ----------------------------------------------------------------------------------------------
def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give an untrained model live spikes (see energy.calibrate_batchnorm)."""
    return energy.calibrate_batchnorm(model, x)


def _live(name, **kw):
    torch.manual_seed(0)
    m = create_model(name, **kw)
    x = torch.randn(2, m.in_chans, m.img_size, m.img_size)
    return calibrate(m, x), x


def test_a2os2a_is_addition_only():
    m, x = _live("a2os2a_fmnist")
    rep = measure(m, [x])
    assert audit(rep) == []
    by_name = {n.name: n for n in rep.neurons}
    # the audit must not pass trivially: K is real, V ternary, and the attention products see them
    assert by_name["block.0.attn.k_relu"].domain == "real"
    assert by_name["block.0.attn.v_ternary"].domain == "ternary"
    mats = [r for r in rep.ops if r.op == "matmul"]
    assert sorted(tuple(sorted(r.domains)) for r in mats) == [("binary", "real"), ("real", "ternary")]
    assert all(r.rate > 0 for r in mats)


class TwoReaders(nn.Module):
    """Two convs read the analog image (the second through a view and a cast, as IPSPS's shortcut
    does); a third conv reads a real activation that is not the input."""
    T = 1
    family = None

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.b = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.c = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        u = self.a(x)
        v = self.b(x.reshape(1, 1, 4, 4).to(torch.float64).float())
        w = self.c(u + v)                       # real x weight: must be reported
        return self.fc(w.flatten(1))


def test_every_conv_on_the_input_is_an_encoding_layer():
    rep = measure(TwoReaders(), [image(4, 4)])
    roles = {r.name: rep.role(r) for r in rep.ops}
    assert roles == {"a": "first", "b": "first", "c": "", "fc": "classifier"}
    assert [f.name for f in audit(rep)] == ["c"]


def test_a2os2a_without_output_neuron_fails_audit():
    m, x = _live("a2os2a_fmnist", attn_kwargs={"out_neuron": False})
    found = audit(measure(m, [x]))
    assert [f.name for f in found] == ["block.0.attn.proj_conv"]
    assert found[0].domains == ["real", "weight"]


def test_sdt_is_addition_only():
    m, x = _live("sdt_2_512_cifar", embed_dim=64)
    rep = measure(m, [x])
    assert audit(rep) == []
    assert sum(n.rate for n in rep.neurons) > 0
    # SDT's paper: masks free; strict: masks are gated ACs
    masks = [r for r in rep.ops if r.op == "mul"]
    assert masks and all(rep.classify(r, "paper")[0] == "free" for r in masks)
    assert all(rep.classify(r, "strict")[0] == "ac" for r in masks)


def test_spikformer_integer_residual_is_reported_as_integer():
    m, x = _live("spikformer_4_384_cifar")
    rep = measure(m, [x[:1]])
    found = audit(rep)
    assert found, "Spikformer's integer residual stream should make q/k/v/fc1 fail the audit"
    assert all("binary" not in f.domains and "ternary" not in f.domains for f in found)
    assert any(f.domains == ["integer", "weight"] for f in found)


def test_json_and_csv_outputs(tmp_path):
    rep = measure(Tiny(), [image(4, 4)])
    rep.write_json(tmp_path / "e.json", ["paper", "strict"])
    d = json.loads((tmp_path / "e.json").read_text())
    assert {"macs", "acs", "sops", "energy_mj", "accounting"} <= set(d["total"])
    assert d["total"]["accounting"] == "paper" and set(d["totals"]) == {"paper", "strict"}
    assert [row["name"] for row in d["layers"]] == ["conv", "fc"]
    assert d["layers"][1]["strict"]["acs"] == pytest.approx(36)
    rep.write_csv(tmp_path / "e.csv", ["strict"])
    lines = (tmp_path / "e.csv").read_text().splitlines()
    assert lines[0].startswith("name,op,role") and len(lines) == 3
    assert "[paper]" in rep.table(["paper"]) and "[strict]" not in rep.table(["paper"])


def test_plots(tmp_path):
    rep = measure(Tiny(), [image(4, 4)])
    plot_firing_rates(rep, tmp_path / "rates.png")
    assert (tmp_path / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m, x = _live("a2os2a_fmnist", embed_dim=256)
    rec = EnergyRecorder(m, capture_attention=True)
    with torch.no_grad(), rec:
        m(x)
    assert list(rec.attention) == ["block.0.attn"]
    # A2OS2A's default order passes K^T V ([T, h, d, d] for image 0) through attn_map;
    # at D = 256 over a2os2a_fmnist's 8 heads, d = 32
    assert tuple(rec.attention["block.0.attn"].shape) == (m.T, 8, 32, 32)
    plot_attention(rec.attention, tmp_path / "attn.png")
    assert (tmp_path / "attn.png").read_bytes()[:4] == b"\x89PNG"


def test_recorder_errors():
    with pytest.raises(RuntimeError, match="no forward pass"):
        EnergyRecorder(Tiny()).report()
    rep = measure(Tiny(), [image(4, 4)])
    with pytest.raises(ValueError, match="unknown accounting"):
        rep.totals("magic")


def test_resformer_paper_rule_excludes_stem_and_classifier():
    m = Tiny()
    m.family = "spikingresformer"
    rep = measure(m, [image(4, 4)])
    paper, strict = rep.totals("paper"), rep.totals("strict")
    assert (paper["macs"], paper["acs"], paper["energy_mj"]) == (0.0, 0.0, 0.0)
    assert [rep.classify(r, "paper")[0] for r in rep.ops] == ["excluded", "excluded"]
    assert strict["macs"] == 576 and strict["acs"] == pytest.approx(36)    # strict excludes nothing
