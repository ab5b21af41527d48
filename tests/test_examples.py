"""The scripts in examples/ run, on tiny settings, and do what their docstrings say."""

import glob
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import OFFICIAL_FIXTURES
from test_data import _fake_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_example_is_tested():
    tested = {"official_checkpoint_energy", "own_model_energy_audit", "custom_attention", "train_python_api"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.skipif(not glob.glob(os.path.join(OFFICIAL_FIXTURES, "spikformer_cifar_a.pt")), reason="no official fixtures")
def test_official_checkpoint_energy(tmp_path, one_thread):
    fx = torch.load(os.path.join(OFFICIAL_FIXTURES, "spikformer_cifar_a.pt"), weights_only=True)
    pth = tmp_path / "official.pth"
    torch.save({"state_dict": fx["state_dict"]}, pth)        # as the official training script saves it
    out = _load("official_checkpoint_energy").main(["--pth", str(pth), "--source", fx["source"],
                                                    "--kwargs", json.dumps(fx["config"]), "--images", "2"])
    assert out["strict"] >= out["paper"] > 0      # strict counts every non-spike product as a MAC


def test_own_model_energy_audit(one_thread):
    found = _load("own_model_energy_audit").main([])
    assert [p.name for p in found[True]] == ["conv2"] and found[True][0].domains == ["real", "weight"]
    assert found[False] == []


def test_custom_attention(one_thread):
    mod = _load("custom_attention")
    results = mod.main([])
    shape, problems = results["spikedriven_fmnist"]
    assert shape == (4, 10) and problems == []
    shape, problems = results["spikformer_4_256_cifar"]
    assert shape == (4, 10) and problems and all(p.domains == ["integer", "weight"] for p in problems)
    assert all(p.op in ("conv", "linear") for p in problems)   # its own products (the masks) are not among them


def test_train_python_api(tmp_path, one_thread, monkeypatch):
    data = tmp_path / "fmnist"
    data.mkdir()
    _fake_dataset(data, compress=False)
    from spikeformers.data import fashion_mnist as fm
    real = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:128] for t in real(s, d)))
    m = _load("train_python_api").main(["--max-steps", "2", "--out", str(tmp_path / "run"), "--data-dir", str(data),
                                        "--model-kwargs", '{"embed_dim": 16, "num_heads": 2}'])
    assert m["step"] == 2 and (tmp_path / "run" / "best.safetensors").is_file()
