"""Pretrained folders: save_pretrained / from_pretrained / create_model(pretrained=...), the card,
the shipped Fashion-MNIST model, `convert` writing a folder, and the Hugging Face Hub (offline)."""

import glob
import importlib.util
import json
import os
import shutil
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import spikeformers as sf
from spikeformers.cli import main
from spikeformers.errors import CheckpointError, ConfigError, UnsupportedError
from spikeformers.models import pretrained as P

from conftest import OFFICIAL_FIXTURES

TINY = {"embed_dim": 16, "num_heads": 2, "depth": 1}
X = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
needs_hub = pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is None,
                               reason="huggingface_hub is not installed (the `hub` extra)")


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return sf.create_model("a2os2a_fmnist", **{**TINY, **kw}).eval()


def _fmnist_dir():
    from spikeformers.data.fashion_mnist import find_fashion_mnist
    try:
        return find_fashion_mnist()
    except Exception:
        return None


def test_save_and_load_back_gives_the_same_logits(tmp_path, one_thread):
    model = _tiny(T=2)
    folder = model.save_pretrained(tmp_path / "m", data="fashion-mnist", accuracy=12.5, license="MIT",
                                   recipe="spikeformers train --epochs 1", source="a test")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for loaded in (sf.from_pretrained(folder), sf.create_model("a2os2a_fmnist", pretrained=str(folder)).eval()):
        assert loaded.T == 2 and loaded.model_name == "a2os2a_fmnist"
        with torch.no_grad():
            assert torch.equal(loaded(X), model(X))            # float32 kept: bit-identical
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"] == "a2os2a_fmnist" and cfg["kwargs"]["embed_dim"] == 16 and cfg["dtype"] == "float32"
    assert cfg["parameters"] == sum(p.numel() for p in model.parameters())
    card = (folder / "README.md").read_text()
    for fact in ("12.50 % top-1", "Fashion-MNIST", "spikeformers train --epochs 1", "a test", "license: mit",
                 "Firing rate**: not stated", "Energy**: not stated"):
        assert fact in card, fact


def test_float16_weights_are_the_rounded_weights(tmp_path, one_thread):
    model = _tiny()
    folder = model.save_pretrained(tmp_path / "h", dtype=torch.float16)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16, torch.int64}               # BatchNorm's num_batches_tracked stays int64
    rounded = _tiny()
    with torch.no_grad():
        for v in rounded.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
        assert torch.equal(sf.from_pretrained(folder)(X), rounded(X))
    big = _tiny()
    with torch.no_grad():
        big.head.weight[0, 0] = 1e6                             # over float16's 65504
    with pytest.raises(ConfigError, match="does not fit float16"):
        big.save_pretrained(tmp_path / "big", dtype="float16")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        big.save_pretrained(tmp_path / "x", dtype="int8")


def test_errors_name_what_is_wrong(tmp_path):
    folder = _tiny().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="holds model 'a2os2a_fmnist', not 'sdt_2_256_cifar'"):
        sf.create_model("sdt_2_256_cifar", pretrained=str(folder))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        sf.from_pretrained(folder, num_classes=7)
    with pytest.raises(CheckpointError, match="not a folder, not a shipped model"):
        sf.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="is a file"):
        sf.from_pretrained(folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="no pretrained weights ship for model 'sdt_2_256_cifar'"):
        sf.create_model("sdt_2_256_cifar", pretrained=True)
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        sf.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        sf.from_pretrained(folder)
    plain = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="built by spikeformers.create_model"):
        P.save_pretrained(plain, tmp_path / "plain")


# ------------------------------------------------------------------------------------ the shipped model
def test_the_shipped_model_is_small_float16_and_loads(one_thread):
    assert "a2os2a_fmnist" in P.shipped()
    folder = P.SHIPPED_DIR / "a2os2a_fmnist"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2 * 2**20
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["dtype"] == "float16" and cfg["card"]["data"] == "fashion-mnist"
    acc = cfg["card"]["accuracy"]
    assert acc["images"] == 10000 and acc["split"] == "test" and 88.0 < acc["top1"] < 95.0
    assert f"{acc['top1']:.2f} % top-1" in (folder / "README.md").read_text()
    for model in (sf.from_pretrained("a2os2a_fmnist"), sf.create_model("a2os2a_fmnist", pretrained=True).eval()):
        with torch.no_grad():
            y = model(X)
        assert y.shape == (3, 10) and torch.isfinite(y).all()


@pytest.mark.skipif(_fmnist_dir() is None, reason="Fashion-MNIST is not on this machine")
def test_the_shipped_model_classifies_the_first_test_images(one_thread):
    """1,000 of the 10,000 test images (the whole set is the slow test below): the accuracy of a
    sample of 1,000 lies within 3 points of the card's over the whole set (a binomial standard
    deviation at 91 % is 0.9 point)."""
    from spikeformers.engine import TrainConfig, evaluate
    from spikeformers.engine.trainer import data_loaders
    model = sf.from_pretrained("a2os2a_fmnist")
    _, test, _ = data_loaders(TrainConfig.from_dict(batch_size=500, eval_images=1000), progress=False)
    m = evaluate(model, test, progress=False)
    assert m["n"] == 1000 and abs(m["acc"] - model.pretrained["card"]["accuracy"]["top1"]) < 3.0


@pytest.mark.slow
@pytest.mark.skipif(_fmnist_dir() is None, reason="Fashion-MNIST is not on this machine")
def test_the_shipped_model_has_the_accuracy_its_card_states():
    from spikeformers.engine import TrainConfig, evaluate
    from spikeformers.engine.trainer import data_loaders
    model = sf.from_pretrained("a2os2a_fmnist")
    _, test, _ = data_loaders(TrainConfig.from_dict(batch_size=500), progress=False)
    m = evaluate(model, test, progress=False)
    card = model.pretrained["card"]["accuracy"]
    assert m["n"] == card["images"] == 10000
    assert m["acc"] == pytest.approx(card["top1"], abs=0.1)    # 10 images: float order on another CPU


def test_cli_eval_pretrained_uses_the_cards_data(tmp_path, monkeypatch):
    calls = {}
    import spikeformers.engine.trainer as tr
    real = tr.data_loaders

    def spy(cfg, *a, **kw):
        calls["data"] = cfg.data.name
        return real(cfg.replace(eval_images=64), *a, **kw)

    monkeypatch.setattr(tr, "data_loaders", spy)
    d = tmp_path / "fm"
    d.mkdir()
    from test_data import _fake_dataset
    _fake_dataset(d, compress=False)
    res = CliRunner().invoke(main, ["eval", "--pretrained", "a2os2a_fmnist", "--data-dir", str(d)])
    assert res.exit_code == 0, res.output
    assert calls["data"] == "fashion-mnist" and "a2os2a_fmnist on fashion-mnist test (64 images" in res.output
    res = CliRunner().invoke(main, ["eval"])
    assert res.exit_code != 0 and "--checkpoint FILE or --pretrained SOURCE" in res.output


# ------------------------------------------------------------------------------------ convert
@pytest.mark.skipif(not glob.glob(os.path.join(OFFICIAL_FIXTURES, "spikformer_cifar_a.pt")),
                    reason="no official fixtures")
def test_convert_writes_a_folder_with_the_official_logits(tmp_path, one_thread):
    fx = torch.load(os.path.join(OFFICIAL_FIXTURES, "spikformer_cifar_a.pt"), map_location="cpu", weights_only=True)
    pth = tmp_path / "official.pth"
    torch.save({"model": fx["state_dict"]}, pth)
    res = CliRunner().invoke(main, ["convert", str(pth), "--source", fx["source"], "--kwargs",
                                    json.dumps(fx["config"]), "--out", str(tmp_path / "s.safetensors"),
                                    "--data", "cifar10"])
    assert res.exit_code == 0, res.output
    model = sf.from_pretrained(tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(model(fx["input"]), fx["eval_logits"], rtol=1e-5, atol=1e-5)
    card = (tmp_path / "s" / "README.md").read_text()
    repo = fx["source"].split(":")[0].split("@")[0]
    assert f"https://github.com/{repo}" in card and "CIFAR-10" in card


# ------------------------------------------------------------------------------------ the Hub
def test_hub_without_the_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)     # import fails as if not installed
    with pytest.raises(UnsupportedError, match=r"spikeformers\[hub\]"):
        sf.from_pretrained("hf-hub:someone/model")
    with pytest.raises(UnsupportedError, match=r"spikeformers\[hub\]"):
        _tiny().push_to_hub("someone/model")
    with pytest.raises(ConfigError, match="hf-hub:owner/name"):
        sf.from_pretrained("hf-hub:not a repo")


@needs_hub
def test_push_then_load_from_an_offline_hub_cache(tmp_path, monkeypatch, one_thread):
    """push_to_hub's upload captured (no network), then the uploaded files laid out in the Hub's
    documented cache layout (models--OWNER--NAME/refs/main + snapshots/COMMIT/) and loaded with
    HF_HUB_OFFLINE=1."""
    import huggingface_hub
    from huggingface_hub import constants

    uploaded = {}

    def create_repo(self, repo_id, **kw):
        uploaded["created"] = repo_id

    def upload_folder(self, repo_id, folder_path, **kw):
        uploaded["repo"] = repo_id
        uploaded["files"] = {p: open(os.path.join(folder_path, p), "rb").read() for p in os.listdir(folder_path)}
        return "https://huggingface.co/someone/tiny/commit/0123"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = _tiny(T=2)
    url = model.push_to_hub("someone/tiny", dtype="float16", data="fashion-mnist", license="MIT")
    assert url.endswith("/commit/0123") and uploaded["created"] == uploaded["repo"] == "someone/tiny"
    assert sorted(uploaded["files"]) == ["README.md", "config.json", "model.safetensors"]

    cache = tmp_path / "hub"
    commit = "a" * 40
    snap = cache / "models--someone--tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in uploaded["files"].items():
        (snap / name).write_bytes(data)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)      # the client reads both at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    loaded = sf.from_pretrained("hf-hub:someone/tiny")
    rounded = _tiny(T=2)
    with torch.no_grad():
        for v in rounded.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
        assert torch.equal(loaded(X), rounded(X))
    with pytest.raises(CheckpointError, match="cannot get hf-hub:someone/absent"):
        sf.from_pretrained("hf-hub:someone/absent")
    shutil.rmtree(cache)
