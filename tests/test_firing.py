"""FiringRateMonitor: per layer, per time step, binary and ternary neurons, on any module; the
Trainer's per-epoch rates in metrics.jsonl; the firing-rate plot."""

import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

import spikeformers as sf
from spikeformers import FiringRateMonitor
from spikeformers.errors import ConfigError, UsageError
from spikeformers.nn.neurons import LIF, ReLUNeuron, Ternary

TINY = {"embed_dim": 16, "num_heads": 2, "depth": 1}


class Echo(nn.Module):
    """A "neuron" (``is_neuron``) that returns the tensor it is handed: outputs chosen by the test."""
    is_neuron = True

    def forward(self, x):
        return x


def test_per_step_and_per_layer_rates_are_the_hand_counts():
    net = Echo()
    out1 = torch.tensor([[1., 0, 0, 0], [1, 1, 1, 0]])        # T=2, 4 neurons: 1 of 4, then 3 of 4
    out2 = torch.tensor([[0., 0, 0, 0], [1, 1, 1, 1]])        # a second call: 0 of 4, 4 of 4
    with FiringRateMonitor(net) as mon:
        net(out1)
    assert mon.layers[""].per_step() == [0.25, 0.75] and mon.rate == 0.5
    with mon:                                                  # counts add up over calls
        net(out2)
    assert mon.per_step() == {"": [1 / 8, 7 / 8]} and mon.rate == 8 / 16
    net(out2)                                                  # not watching: not counted
    assert mon.rate == 0.5
    mon.reset()
    assert math.isnan(mon.rate) and mon.rates() == {}
    with mon:                                                  # a module of unknown values: non-zeros counted
        net(torch.tensor([[0.5, 0, -2, 0]]))
    assert mon.rate == 0.5


def test_lif_closed_form_rate_per_time_step():
    # LIF tau=2, threshold 1, hard reset to 0, constant input 1.5: H0 = 0.75 (no spike), H1 = 0.75 +
    # (1.5 - 0.75) / 2 = 1.125 (spike, V <- 0), H2 = 0.75 (no spike): every neuron fires at t=1 only.
    net = nn.Sequential(nn.Identity(), LIF(tau=2.0, v_threshold=1.0))
    with FiringRateMonitor(net) as mon:
        net(torch.full((3, 5, 7), 1.5))
    assert mon.per_step() == {"1": [0.0, 1.0, 0.0]}
    assert mon.rate == pytest.approx(1 / 3) and mon.layers["1"].kind == "binary"
    assert mon.layers["1"].negative_rate == 0.0
    with FiringRateMonitor(net) as half:                       # bfloat16 spikes (autocast): the same counts
        net(torch.full((3, 5, 7), 1.5, dtype=torch.bfloat16))
    assert half.per_step() == {"1": [0.0, 1.0, 0.0]}


def test_ternary_counts_plus_and_minus_apart():
    # one step (T=1), u = x: +1 where x >= 0.5, -1 where x <= -0.5 (Ternary Spike, threshold 0.5)
    net = nn.Sequential(Ternary(decay=0.25, v_threshold=0.5))
    x = torch.tensor([[[0.7, -0.9, 0.1, 0.6, -0.2, -0.5, 0.0, 2.0]]])   # +, -, 0, +, 0, -, 0, +
    with FiringRateMonitor(net) as mon:
        net(x)
    layer = mon.layers["0"]
    assert layer.kind == "ternary"
    assert (layer.rate, layer.positive_rate, layer.negative_rate) == (5 / 8, 3 / 8, 2 / 8)
    assert mon.summary()["firing_rates_ternary"] == {"0": [3 / 8, 2 / 8]}


def test_any_module_with_our_neurons_and_the_relu_neuron_left_out():
    net = nn.Sequential(nn.Linear(4, 6), ReLUNeuron(), nn.Linear(6, 6), LIF(), Ternary())
    with FiringRateMonitor(net) as mon:
        net(torch.randn(2, 3, 4))
    assert list(mon.layers) == ["3", "4"]                      # the ReLU "neuron" is not a spiking layer
    with FiringRateMonitor(net, include="4") as only:
        net(torch.randn(2, 3, 4))
    assert list(only.rates()) == ["4"]
    with pytest.raises(ConfigError, match="no spiking neuron layer"):
        FiringRateMonitor(net, include="blocks.*")
    none = FiringRateMonitor(nn.Sequential(ReLUNeuron()))
    with none:
        none.model(torch.randn(2, 3))
    assert math.isnan(none.rate) and none.summary()["firing_rate"] is None
    mon = FiringRateMonitor(net).start()
    with pytest.raises(UsageError, match="already watching"):
        mon.start()
    mon.stop()
    assert not any(m._forward_hooks for m in net.modules())    # hooks removed


def test_zoo_model_rates_match_an_independent_count(one_thread):
    torch.manual_seed(0)
    model = sf.create_model("a2os2a_fmnist", T=2, **TINY).train()   # batch statistics: the neurons fire
    seen = {}

    def count(name):
        def hook(_m, _i, out):
            nz, n = seen.get(name, (0, 0))
            seen[name] = (nz + int((out != 0).sum()), n + out.numel())
        return hook

    handles = [m.register_forward_hook(count(n)) for n, m in model.named_modules()
               if isinstance(m, (LIF, Ternary))]
    with FiringRateMonitor(model) as mon:
        model(torch.randn(4, 1, 28, 28))
    for h in handles:
        h.remove()
    assert set(mon.rates()) == set(seen)
    for name, (nz, n) in seen.items():
        assert mon.rates()[name] == pytest.approx(nz / n)
    assert mon.rate == pytest.approx(sum(a for a, _ in seen.values()) / sum(b for _, b in seen.values()))
    assert 0 < mon.rate < 1 and all(len(v) == 2 for v in mon.per_step().values())
    assert [k for k, v in mon.layers.items() if v.kind == "ternary"] == ["block.0.attn.v_ternary"]


def test_plot_writes_bars_and_time_steps(tmp_path):
    net = nn.Sequential(LIF(tau=2.0), Ternary())
    with FiringRateMonitor(net) as mon:
        net(torch.randn(3, 2, 8) * 2)
    path = mon.plot(tmp_path / "rates.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 500
    with pytest.raises(ConfigError, match="no firing rate"):
        FiringRateMonitor(net).plot(tmp_path / "empty.png")


@pytest.fixture
def small_fmnist(fake_fmnist, monkeypatch):
    """``fake_fmnist`` read as 128 training and 96 test images (a run takes a second or two)."""
    from spikeformers.data import fashion_mnist as fm
    real = fm.load_fashion_mnist

    def small(split, data_dir=None):
        x, y = real(split, data_dir)
        return (x[:128], y[:128]) if split == "train" else (x[:96], y[:96])

    monkeypatch.setattr(fm, "load_fashion_mnist", small)
    return fake_fmnist


def test_trainer_writes_the_test_pass_rates_into_metrics(tmp_path, small_fmnist, one_thread):
    from spikeformers.engine.checkpoint import load_checkpoint
    from spikeformers.engine.config import TrainConfig
    from spikeformers.engine.trainer import data_loaders, fit

    cfg = TrainConfig.from_dict(data_dir=str(small_fmnist), epochs=1, batch_size=32, out=str(tmp_path / "run"),
                                model_kwargs=dict(TINY), T=2, warmup_epochs=0.0, plot=False,
                                fast_layers=False, precision="fp32")   # the same float operations as below
    fit(cfg, progress=False)
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    # the same test pass, counted here by hand on the saved weights
    model, _ = load_checkpoint(tmp_path / "run" / "last.safetensors")
    model.eval()
    nz, n, per_layer = 0, 0, {}

    def hook(name):
        def f(_m, _i, out):
            a, b = per_layer.get(name, (0, 0))
            per_layer[name] = (a + int((out != 0).sum()), b + out.numel())
        return f

    for name, m in model.named_modules():
        if isinstance(m, (LIF, Ternary)):
            m.register_forward_hook(hook(name))
    _, test, _ = data_loaders(cfg, progress=False)
    with torch.no_grad():
        for x, _ in test:
            model(x)
    nz, n = sum(a for a, _ in per_layer.values()), sum(b for _, b in per_layer.values())
    assert rec["firing_rate"] == pytest.approx(nz / n)
    assert rec["firing_rates"] == pytest.approx({k: a / b for k, (a, b) in per_layer.items()})
    assert len(rec["firing_rate_per_step"]) == 2 and "block.0.attn.v_ternary" in rec["firing_rates_ternary"]
    off = cfg.replace(out=str(tmp_path / "off"), firing_rates=False)
    fit(off, progress=False)
    assert "firing_rate" not in json.loads((tmp_path / "off" / "metrics.jsonl").read_text())
