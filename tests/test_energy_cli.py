"""`spikeformers energy` and `spikeformers audit` end to end (small models; random data and small
files in the real dataset formats), and their Python entry points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from spikeformers import create_model
from spikeformers.analysis import energy as E
from spikeformers.cli import main
from spikeformers.data import download
from spikeformers.neurons import LIF
from test_data_readers import make_cifar10, make_gesture

PNG = b"\x89PNG\r\n\x1a\n"
LIVE = ["--data", "random", "--batch-size", "2", "--calibrate-bn"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_energy_command_writes_table_json_csv_and_plots(tmp_path):
    j, c, p, a = (tmp_path / n for n in ("e.json", "e.csv", "rates.png", "attn.png"))
    r = CliRunner().invoke(main, ["energy", "--model", "a2os2a_fmnist", *LIVE, "--batches", "2",
                                  "--model-kwargs", '{"T": 2}',  # T > 1: the accountings differ
                                  "--json", str(j), "--csv", str(c), "--plot", str(p), "--plot-attention", str(a)])
    assert r.exit_code == 0, r.output
    assert "[paper] MACs" in r.output and "[strict] MACs" in r.output and "mJ/image" in r.output
    d = json.loads(j.read_text())
    t = d["total"]
    assert t["accounting"] == "paper" and d["images"] == 4
    assert t["energy_mj"] > 0 and t["acs"] > 0 and t["sops"] >= t["acs"]
    assert abs(t["energy_mj"] - (4.6 * t["macs"] + 0.9 * t["acs"]) * 1e-9) < 1e-12
    assert d["totals"]["strict"]["macs"] > t["macs"]     # the first layer: T steps vs once
    assert d["layers"][0]["role"] == "first" and d["layers"][-1]["role"] == "classifier"
    assert c.read_text().splitlines()[0].startswith("name,op,role")
    assert p.read_bytes()[:8] == PNG and a.read_bytes()[:8] == PNG


def test_energy_single_accounting_and_shape_error():
    r = CliRunner().invoke(main, ["energy", "--model", "a2os2a_fmnist", "--data", "random", "--batch-size", "1",
                                  "--batches", "1", "--accounting", "strict"])
    assert r.exit_code == 0, r.output
    assert "[strict]" in r.output and "[paper]" not in r.output
    r = CliRunner().invoke(main, ["energy", "--model", "sdt_2_512_cifar", "--data", "fashion-mnist"])
    assert r.exit_code != 0 and "expects input [B,3,32,32]" in r.output and "--data random" in r.output
    r = CliRunner().invoke(main, ["energy"])
    assert r.exit_code != 0 and "--model" in r.output


def test_audit_command_exit_codes():
    r = CliRunner().invoke(main, ["audit", "--model", "a2os2a_fmnist", *LIVE])
    assert r.exit_code == 0, r.output
    # IPSPS stem: 4 main convs + the shortcut conv (both on the image: exempt); block: q, k, v, the
    # two attention matmuls, proj, fc1, fc2; head (exempt): 8 + 3 = 11 products checked
    assert "PASS: addition-only: each of the other 11 products" in r.output
    assert "input layers patch_embed.proj_conv0 (real x weight), patch_embed.short_conv (real x weight)" in r.output
    r = CliRunner().invoke(main, ["audit", "--model", "a2os2a_fmnist", *LIVE,
                                  "--model-kwargs", '{"attn_kwargs": {"out_neuron": false}}'])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "block.0.attn.proj_conv (conv): real x weight" in r.output


def test_energy_and_audit_from_a_checkpoint(tmp_path):
    from spikeformers import create_model
    from spikeformers.engine.checkpoint import save_checkpoint
    from spikeformers.analysis.energy import calibrate_batchnorm
    torch.manual_seed(0)
    m = create_model("a2os2a_fmnist", attn_kwargs={"out_neuron": False})
    calibrate_batchnorm(m, torch.randn(4, 1, 28, 28))
    ck = save_checkpoint(tmp_path / "m.safetensors", m)
    # the checkpoint rebuilds its own config (no output neuron): the audit must see the real input
    r = CliRunner().invoke(main, ["audit", "--checkpoint", str(ck), "--data", "random", "--batch-size", "2"])
    assert r.exit_code == 1, r.output
    assert f"weights: {ck}" in r.output and "block.0.attn.proj_conv (conv): real x weight" in r.output
    r = CliRunner().invoke(main, ["energy", "--checkpoint", str(ck), "--model", "sdt_2_512_cifar"])
    assert r.exit_code != 0 and "expected 'sdt_2_512_cifar'" in r.output


# ----------------------------------------------------------------------------------------------
# data: every dataset `train` reads, the default shaped for the model, event input
# ----------------------------------------------------------------------------------------------
TINY_CIFAR = '{"embed_dim": 32, "num_heads": 2, "depth": 1, "T": 2}'


def _run(args):
    return CliRunner().invoke(main, [*args, "--threads", "1"])


def test_default_data_is_shaped_for_the_model(tmp_path, monkeypatch):
    # a CIFAR model with no CIFAR-10 anywhere: random images of its input shape, and the output says why
    monkeypatch.delenv("SPIKEFORMERS_DATA", raising=False)
    monkeypatch.setattr(download, "CACHE_ROOT", tmp_path / "empty")
    r = _run(["audit", "--model", "a2os2a_2_384_cifar", "--model-kwargs", TINY_CIFAR, "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert "N(0,1) random images [3,32,32]" in r.output and "because cifar10 not found" in r.output
    assert "BatchNorm statistics calibrated" in r.output and "PASS" in r.output
    # with CIFAR-10 where $SPIKEFORMERS_DATA says, the same command measures its test images
    make_cifar10(tmp_path / "data", np.random.default_rng(0), n=4)
    monkeypatch.setenv("SPIKEFORMERS_DATA", str(tmp_path / "data"))
    j = tmp_path / "e.json"
    r = _run(["energy", "--model", "a2os2a_2_384_cifar", "--model-kwargs", TINY_CIFAR, "--batch-size", "2",
              "--batches", "2", "--json", str(j)])
    assert r.exit_code == 0, r.output
    assert "the first 4 cifar10 test images" in r.output and json.loads(j.read_text())["images"] == 4


def test_load_batches_reads_the_normalised_test_split(tmp_path):
    batches = make_cifar10(tmp_path, np.random.default_rng(1), n=4)
    m = create_model("a2os2a_2_384_cifar", embed_dim=32, num_heads=2, depth=1)
    xs, desc, events = E.load_batches(m, "cifar10", tmp_path, batches=2, batch_size=2, progress=False)
    assert [tuple(x.shape) for x in xs] == [(2, 3, 32, 32)] * 2 and not events
    img = torch.from_numpy(batches["test_batch"][b"data"]).reshape(4, 3, 32, 32).float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)   # CIFAR-10 training-set statistics
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    assert torch.allclose(torch.cat(xs), (img - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="needs --data-dir"):
        E.load_batches(m, "cifar10-dvs")


def test_event_input_is_counted_as_spikes_in_the_paper_accounting(tmp_path):
    truth = make_gesture(tmp_path, np.random.default_rng(3))
    t, *_, rows = truth["user24_led"]                   # the test split: two samples of this recording
    events = [int(((t >= s) & (t < e)).sum()) for _, s, e in rows]
    j = tmp_path / "e.json"
    r = _run(["energy", "--model", "sdt_2_256_gesture", "--data", "dvs128-gesture", "--data-dir", str(tmp_path),
              "--model-kwargs", '{"embed_dim": 16, "num_heads": 2, "depth": 1, "T": 2}', "--batch-size", "2",
              "--batches", "1", "--json", str(j)])
    assert r.exit_code == 0, r.output
    assert "the first 2 dvs128-gesture test event samples" in r.output
    d = json.loads(j.read_text())
    assert d["events"] and d["T"] == 2 and d["images"] == 2
    first = d["layers"][0]
    assert first["role"] == "first" and first["name"] == "patch_embed.proj_conv"
    # a 3x3, stride-1, padding-1 conv from 2 to 2 channels: every event reaches 2 x 9 synapses, so the
    # layer accumulates 18 x (events per sample) times (the mean over positions, borders included)
    assert first["paper"]["class"] == "ac" and first["paper"]["macs"] == 0
    assert first["paper"]["acs"] == pytest.approx(18 * sum(events) / 2, rel=1e-9)
    assert "event-camera input" in d["totals"]["paper"]["rule"]


def test_measure_decides_event_input_by_its_values():
    torch.manual_seed(0)
    m = create_model("sdt_2_256_gesture", embed_dim=16, num_heads=2, depth=1, T=2, img_size=16)
    counts = torch.randint(0, 3, (1, 2, 2, 16, 16)).float()      # frames of event counts
    assert E.measure(m, [counts]).events
    assert not E.measure(m, [counts + 0.5]).events               # frames of real values are not events
    assert not E.measure(m, [torch.rand(1, 2, 16, 16)]).events   # nor is a static image
    rep = E.measure(m, [counts], events=False)
    assert rep.classify(rep.first_layer, "paper")[0] == "mac"


# ----------------------------------------------------------------------------------------------
# INCONCLUSIVE: nothing fired, or a product passed only on zeros
# ----------------------------------------------------------------------------------------------
def _silent_checkpoint(tmp_path):
    """A model whose every BatchNorm has weight 0 and bias 0: every membrane stays 0, no neuron fires."""
    from spikeformers.engine.checkpoint import save_checkpoint
    m = create_model("a2os2a_fmnist", embed_dim=32)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
    return save_checkpoint(tmp_path / "silent.safetensors", m)


def test_a_network_where_no_neuron_fires_is_inconclusive(tmp_path):
    ck = _silent_checkpoint(tmp_path)
    r = _run(["audit", "--checkpoint", str(ck), "--data", "random", "--batch-size", "2"])
    assert r.exit_code == 3, r.output
    assert "INCONCLUSIVE: no neuron fired" in r.output and "PASS" not in r.output
    j = tmp_path / "e.json"
    r = _run(["energy", "--checkpoint", str(ck), "--data", "random", "--batch-size", "2", "--batches", "1",
              "--json", str(j)])
    assert r.exit_code == 3 and "INCONCLUSIVE: no neuron fired" in r.output
    assert json.loads(j.read_text())["fired"] is False


def test_untrained_weights_get_batchnorm_calibration_by_default():
    r = _run(["audit", "--model", "a2os2a_fmnist", "--data", "random", "--batch-size", "2"])
    assert r.exit_code == 0 and "BatchNorm statistics calibrated" in r.output and "PASS" in r.output
    # without it, the default initialisation leaves every neuron of this model silent
    r = _run(["audit", "--model", "a2os2a_fmnist", "--data", "random", "--batch-size", "2", "--no-calibrate-bn"])
    assert r.exit_code == 3 and "INCONCLUSIVE" in r.output


class HalfSilent(nn.Module):
    """conv -> LIF (fires) -> conv (weights 0) -> LIF (never fires) -> conv -> LIF -> linear."""
    T, family = 1, None

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(1, 1, 1, bias=False) for _ in range(3))
        self.l1, self.l2, self.l3 = LIF(), LIF(), LIF()
        self.fc = nn.Linear(16, 2)
        with torch.no_grad():
            self.c1.weight.fill_(4.0)
            self.c2.weight.zero_()
            self.c3.weight.fill_(1.0)

    def forward(self, x):                                   # x [B,1,4,4] -> [1,B,1,4,4] through the LIFs
        s1 = self.l1(self.c1(x)[None])[0]
        s2 = self.l2(self.c2(s1)[None])[0]
        s3 = self.l3(self.c3(s2)[None])[0]
        return self.fc(s3.flatten(1))


def test_a_product_seen_only_on_zero_spikes_is_inconclusive():
    rep = E.measure(HalfSilent(), [torch.ones(2, 1, 4, 4)])
    assert [n.rate for n in rep.neurons] == [1.0, 0.0, 0.0]
    res = E.audit_verdict(rep)
    # c2 reads live spikes; c3 reads l2's spikes, which never came: its "binary" operand proves nothing
    assert (res.verdict, res.checked, res.unobserved, res.exit_code) == ("INCONCLUSIVE", 2, ["c3"], 3)
    assert E.audit(rep) == []


def test_a_real_product_fails_even_when_nothing_fired():
    class RealProduct(nn.Module):
        T, family = 1, None

        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Linear(16, 2)
            self.lif = LIF()

        def forward(self, x):
            u = self.a(x)
            return self.fc((self.b(u) * 0 + self.lif(u[None])[0] * 0).flatten(1))

    res = E.audit_verdict(E.measure(RealProduct(), [torch.randn(2, 1, 4, 4)]))
    assert res.verdict == "FAIL" and [f.name for f in res.findings] == ["b"]


def test_spikformer_with_its_initial_statistics_is_not_a_pass():
    # one neuron layer fires, the others never do: the products behind them prove nothing
    r = _run(["audit", "--model", "spikformer_4_384_cifar", "--data", "random", "--batch-size", "2",
              "--model-kwargs", '{"embed_dim": 32, "num_heads": 2, "depths": 1, "T": 2}', "--no-calibrate-bn"])
    assert r.exit_code == 3, r.output
    assert "INCONCLUSIVE" in r.output and "passed only on spike operands that stayed all zero" in r.output


def test_spikformer_integer_residual_fails_the_audit_with_a_note():
    r = _run(["audit", "--model", "spikformer_4_384_cifar", "--data", "random", "--batch-size", "2",
              "--model-kwargs", '{"embed_dim": 32, "num_heads": 2, "depths": 1, "T": 2}'])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output and "integer x weight" in r.output and "sum of spikes" in r.output


# ----------------------------------------------------------------------------------------------
# weights from a pretrained folder, the device, the short module name
# ----------------------------------------------------------------------------------------------
def test_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    m = create_model("a2os2a_fmnist", embed_dim=32)
    E.calibrate_batchnorm(m, torch.randn(8, 1, 28, 28))
    m.save_pretrained(tmp_path / "pre")
    r = _run(["audit", "--pretrained", str(tmp_path / "pre"), "--data", "random", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert f"weights: pretrained {tmp_path / 'pre'}" in r.output and "calibrated" not in r.output
    r = _run(["energy", "--pretrained", str(tmp_path / "pre"), "--model", "sdt_2_512_cifar"])
    assert r.exit_code != 0 and "holds model 'a2os2a_fmnist'" in r.output
    r = _run(["energy", "--pretrained", str(tmp_path / "pre"), "--checkpoint", "x.safetensors"])
    assert r.exit_code != 0 and "not both" in r.output


def test_device_option():
    r = _run(["audit", "--model", "a2os2a_fmnist", "--data", "random", "--batch-size", "2", "--device", "cpu"])
    assert r.exit_code == 0 and "device cpu" in r.output
    r = _run(["audit", "--model", "a2os2a_fmnist", "--device", "gpu0"])
    assert r.exit_code != 0 and "is not a device" in r.output
    if not torch.cuda.is_available():
        r = _run(["audit", "--model", "a2os2a_fmnist", "--device", "cuda"])
        assert r.exit_code != 0 and "no CUDA GPU" in r.output


def test_short_module_name():
    import spikeformers.energy as short
    assert short.measure is E.measure and short.audit_verdict is E.audit_verdict
