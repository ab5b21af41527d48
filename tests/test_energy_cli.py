"""`spikeformers energy` and `spikeformers audit` end to end (small models, random data)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from spikeformers.cli import main

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
