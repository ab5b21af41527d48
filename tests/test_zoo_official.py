"""Our models against the official implementations' outputs (the official fixtures; see conftest.py).

Each fixture holds an official state dict, an input, and the official eval / train logits,
gradients and buffers (see that README). The model comes from ``from_official`` exactly as a user
would build it from the fixture's ``source`` and ``config``.
"""

from __future__ import annotations

import glob
import os

import pytest

from spikeformers.errors import CheckpointError
import torch

import spikeformers
from spikeformers.models.official import load_official_state_dict

from conftest import OFFICIAL_FIXTURES

FILES = sorted(glob.glob(os.path.join(OFFICIAL_FIXTURES, "*.pt")))

pytestmark = pytest.mark.skipif(not FILES, reason=f"no official fixtures in {OFFICIAL_FIXTURES}")

_cache: dict = {}


def fixture(name):
    if name not in _cache:
        _cache[name] = torch.load(name, map_location="cpu", weights_only=True)
    return _cache[name]


def build(fx):
    return spikeformers.from_official(fx["state_dict"], fx["source"], **fx["config"])


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f)[:-3] for f in FILES])
def test_official_fixture(path):
    fx = fixture(path)
    # eval logits
    model = build(fx)
    with torch.no_grad():
        out = model(fx["input"])
    torch.testing.assert_close(out, fx["eval_logits"], rtol=1e-5, atol=1e-5)

    # train logits, weighted gradients (input and first conv), buffers after the pass
    model = build(fx).train()
    x = fx["input"].clone().requires_grad_(True)
    out = model(x)
    torch.testing.assert_close(out, fx["train_logits"], rtol=1e-5, atol=1e-5)
    (out * fx["loss_weights"]).sum().backward()
    first_conv = dict(model.named_parameters())[_our_key(fx, fx["first_conv_key"])]
    for ours, ref in ((x.grad, fx["train_grad_input_weighted"]),
                      (first_conv.grad, fx["train_grad_first_conv_weighted"])):
        assert rel_err(ours, ref) < 1e-4, f"gradient off by {rel_err(ours, ref):.2e} of its max magnitude"

    buffers = dict(model.named_buffers())
    for k, ref in fx["train_buffers_after"].items():
        ours = buffers[_our_key(fx, k)]
        if ref.dtype == torch.int64:
            assert torch.equal(ours, ref), k
        else:
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def _our_key(fx, key):
    from spikeformers.models.official import _lookup
    return _lookup(fx["source"]).keys(key)


def test_containers_and_module_prefix(tmp_path):
    fx = fixture(FILES[0])
    sd = fx["state_dict"]
    for wrapped in ({"model": sd, "epoch": 3}, {"state_dict": {f"module.{k}": v for k, v in sd.items()}}):
        assert load_official_state_dict(wrapped).keys() == sd.keys()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 1}, path)
    assert load_official_state_dict(path).keys() == sd.keys()
    model = spikeformers.from_official(str(path), fx["source"], **fx["config"])
    assert isinstance(model, torch.nn.Module)


def test_key_mismatch_is_reported_by_name():
    fx = fixture(next(f for f in FILES if "spikformer_cifar" in f))
    sd = dict(fx["state_dict"])
    sd["block.0.attn.extra.weight"] = torch.zeros(1)
    del sd["head.bias"]
    with pytest.raises(CheckpointError, match=r"block\.0\.attn\.extra\.weight[\s\S]*head\.bias"):
        spikeformers.from_official(sd, fx["source"], **fx["config"])
    with pytest.raises(ValueError, match="wrong shapes"):
        spikeformers.from_official(fx["state_dict"], fx["source"], **{**fx["config"], "num_classes": 7})
    with pytest.raises(ValueError, match="unknown official source"):
        spikeformers.from_official(fx["state_dict"], "ZK-Zhou/spikformer:cifar100/model.py:Spikformer")
    with pytest.raises(ValueError, match="bogus"):   # a ConfigError
        spikeformers.from_official(fx["state_dict"], fx["source"], bogus=1, **fx["config"])


def test_dead_official_parameters_are_dropped_and_listed():
    fx = fixture(next(f for f in FILES if "spikformer_cifar" in f))
    model = build(fx)
    assert model.official_dropped and all(".norm1." in k or ".norm2." in k for k in model.official_dropped)


def test_cli_convert_then_load_checkpoint(tmp_path):
    from click.testing import CliRunner
    from spikeformers.engine.checkpoint import load_checkpoint
    from spikeformers.cli import main
    import json
    for stem in ("spikformer_cifar_a", "spikingresformer_dvs_a"):
        fx = fixture(next(f for f in FILES if stem in f))
        pth = tmp_path / f"{stem}.pth"
        torch.save({"model": fx["state_dict"], "epoch": 7}, pth)
        out = tmp_path / f"{stem}.safetensors"
        res = CliRunner().invoke(main, ["convert", str(pth), "--source", fx["source"],
                                        "--kwargs", json.dumps(fx["config"]), "--out", str(out)])
        assert res.exit_code == 0, res.output
        model, meta = load_checkpoint(out)
        assert meta["official_source"] == fx["source"]
        with torch.no_grad():
            y = model.eval()(fx["input"])
        ref = fx["eval_logits"] if fx["eval_logits"].dim() == 2 else fx["eval_logits"].mean(0)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    res = CliRunner().invoke(main, ["convert", str(pth), "--source", "nobody/nothing:x.py:Y", "--out", str(out)])
    assert res.exit_code != 0 and "unknown official source" in res.output


# State-dict entry counts of the official files (ZK-Zhou/spikformer, BICLab/Spike-Driven-Transformer,
# zhouchenlin2096/QKFormer, xyshi2000/SpikingResformer) = ours + the entries the official forward never uses.
@pytest.mark.parametrize("name,official_entries,dead", [
    ("spikformer_4_384_cifar", 216, 4 * 4),          # norm1/norm2 weight+bias per block
    ("spikformer_8_384", 376, 8 * 4),
    ("spikformer_2_256_cifar10dvs", 121, 2 * 4 + 3),  # + pos_embed, norm.weight, norm.bias
    ("sdt_2_256_cifar", 112, 2),                      # talking_heads.weight per block
    ("sdt_8_384", 352, 8),
    ("qkformer_4_384_cifar", 200, 0),
    ("qkformer_10_384", 434, 0),
    ("qkformer_2_256_cifar10dvs", 122, 0),
    ("spikingresformer_ti", 211, 0),
])
def test_state_dict_entry_counts(name, official_entries, dead):
    with torch.device("meta"):
        model = spikeformers.create_model(name)
    assert len(model.state_dict()) + dead == official_entries


def _official_names_qkformer_dvs(k):
    """Our QKFormer key -> the DVS files' names (the inverse of the converter's map)."""
    import re
    k = re.sub(r"^(stage\d+\.\d+)\.attn\.", r"\1.ssa.", k)
    k = re.sub(r"\.mlp\.fc([12])_", r".mlp.mlp\1_", k)
    return re.sub(r"^patch_embed2\.proj3_", "patch_embed2.proj_", k)


@pytest.mark.parametrize("source,kwargs,variant,K", [
    ("zhouchenlin2096/QKFormer:cifar10-dvs/model.py:QKFormer", {}, "qkformer_2_256_cifar10dvs", 10),
    ("zhouchenlin2096/QKFormer:dvs128-gesture/model.py:QKFormer", {}, "qkformer_2_256_gesture", 11),
    ("zhouchenlin2096/QKFormer:dvs128-gesture/model.py:vit_snn",
     dict(embed_dims=256, num_heads=16, mlp_ratios=4, in_channels=2, num_classes=11, depths=4),
     "qkformer_2_256_gesture", 11),
    ("ZK-Zhou/spikformer:cifar10dvs/model.py:spikformer", {}, "spikformer_2_256_cifar10dvs", 10),
])
def test_dvs_sources_load_and_run(source, kwargs, variant, K):
    torch.manual_seed(0)
    ours = spikeformers.create_model(variant).state_dict()
    if "QKFormer" in source:
        sd = {_official_names_qkformer_dvs(k): v for k, v in ours.items()}
        # shapes of the official DVS files (zhouchenlin2096/QKFormer cifar10-dvs/model.py)
        assert sd["patch_embed1.proj_conv.weight"].shape == (16, 2, 3, 3)
        assert sd["patch_embed1.proj_res_conv.weight"].shape == (128, 32, 1, 1)
        assert sd["patch_embed2.proj_conv.weight"].shape == (256, 128, 3, 3)
        assert sd["stage2.0.ssa.q_conv.weight"].shape == (256, 256, 1)
    else:
        sd = dict(ours)
        sd.update({"pos_embed": torch.zeros(1, 64, 256), "norm.weight": torch.ones(256), "norm.bias": torch.zeros(256)})
        for i in range(2):
            for n in ("norm1", "norm2"):
                sd[f"block.{i}.{n}.weight"], sd[f"block.{i}.{n}.bias"] = torch.ones(256), torch.zeros(256)
    model = spikeformers.from_official({"model": sd}, source, **kwargs)
    assert len(model.official_dropped) == (0 if "QKFormer" in source else 11)
    with torch.no_grad():
        y = model(torch.randint(0, 3, (1, 2, 2, 128, 128)).float())   # official layout [B, T, 2, 128, 128]
    assert y.shape == (1, K) and torch.isfinite(y).all()


@pytest.mark.parametrize("source,params", [
    ("ZK-Zhou/spikformer:imagenet/model.py:spikformer", 29_689_384),          # 8-512, without the dead LayerNorms
    ("ZK-Zhou/spikformer:cifar10dvs/model.py:spikformer", 2_566_666),
    ("zhouchenlin2096/QKFormer:imagenet/qkformer.py:QKFormer_10_384", 16_473_688),
    ("zhouchenlin2096/QKFormer:imagenet/qkformer.py:QKFormer_10_512", 29_079_336),
    ("zhouchenlin2096/QKFormer:imagenet/qkformer.py:QKFormer_10_768", 64_962_760),
    ("zhouchenlin2096/QKFormer:cifar10-dvs/model.py:QKFormer", 1_504_138),
    ("zhouchenlin2096/QKFormer:dvs128-gesture/model.py:QKFormer", 1_999_371),
    ("xyshi2000/SpikingResformer:models/spikingresformer.py:spikingresformer_ti", 11_180_992),
    ("xyshi2000/SpikingResformer:models/spikingresformer.py:spikingresformer_dvsg", 2_709_830),  # 11 classes
])
def test_official_factories_build_with_their_defaults(source, params):
    from spikeformers.models.official import _lookup
    kw = {"num_classes": 11, "img_size": 64} if source.endswith("dvsg") else {}
    with torch.device("meta"):
        model = _lookup(source).build(**kw)
    assert sum(p.numel() for p in model.parameters()) == params
