"""A²OS²A (Guo et al., CVPR 2025): the registered variants and their paper figures, parameter counts
against a count by hand from the layer shapes, the three readings of the attention's output
(formula, parameters, addition-only audit on firing activations), the head order of Eq. 18, and
`spikeformers compare` over settings of one attention."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import spikeformers as sf
from spikeformers.analysis.compare import parse_attention_spec, run_folder
from spikeformers.analysis.energy import audit, calibrate_batchnorm, measure
from spikeformers.errors import ConfigError
from spikeformers.models import list_models, model_entry
from spikeformers.nn.attention import A2OS2A, build_attention

DOCS = Path(__file__).resolve().parents[1] / "docs" / "a2os2a.md"
READINGS = ("sn_conv_bn", "none", "conv_bn")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def n_params(name, **kw):
    with torch.device("meta"):
        return sum(p.numel() for p in sf.create_model(name, **kw).parameters())


# ---------------------------------------------------------------------------------------------
# Parameter counts by hand, from the layer shapes
# ---------------------------------------------------------------------------------------------
def bn(c):                      # BatchNorm: weight + bias
    return 2 * c


def conv(cin, cout, k=1, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def sps_stem(C, D):
    """SPS: 3x3 convs C -> D/8 -> D/4 -> D/2 -> D (no bias) + BN, then the 3x3 RPE conv + BN."""
    w = [C, D // 8, D // 4, D // 2, D]
    return sum(conv(w[i], w[i + 1], 3) + bn(w[i + 1]) for i in range(4)) + conv(D, D, 3) + bn(D)


def ipsps_stem(C, D, strided_stages):
    """IPSPS: 3x3 convs C -> D/8 -> D/4 -> D/2 -> 7D/8 + BN, and a shortcut conv C -> D/8 whose
    kernel = stride = 2^(strided stages), + BN."""
    w = [C, D // 8, D // 4, D // 2, D - D // 8]
    f = 2 ** strided_stages
    return sum(conv(w[i], w[i + 1], 3) + bn(w[i + 1]) for i in range(4)) + conv(C, D // 8, f) + bn(D // 8)


def block(D, proj="sn_conv_bn", ratio=4):
    qkv = 3 * (conv(D, D) + bn(D))                              # bias-free 1x1 convs + BN
    out = {"sn_conv_bn": conv(D, D, bias=True) + bn(D), "none": 0, "conv_bn": conv(D, D) + bn(D)}[proj]
    H = ratio * D
    mlp = conv(D, H, bias=True) + bn(H) + conv(H, D, bias=True) + bn(D)
    return qkv + out + mlp


def by_hand(C, D, L, K, stem="sps", strided=2, proj="sn_conv_bn"):
    s = sps_stem(C, D) if stem == "sps" else ipsps_stem(C, D, strided)
    return s + L * block(D, proj) + D * K + K                  # head: Linear D -> K with bias


# name: (in_chans, D, L, classes, stem, strided stages)
VARIANTS = {
    "a2os2a_2_384_cifar": (3, 384, 2, 10, "sps", 2),
    "a2os2a_2_512_cifar": (3, 512, 2, 10, "sps", 2),
    "a2os2a_8_384": (3, 384, 8, 1000, "sps", 4),
    "a2os2a_8_512": (3, 512, 8, 1000, "sps", 4),
    "a2os2a_10_512": (3, 512, 10, 1000, "sps", 4),
    "a2os2a_8_768": (3, 768, 8, 1000, "sps", 4),
    "a2os2a_fmnist": (1, 192, 1, 10, "ipsps", 2),
}


def test_every_a2os2a_variant_is_counted_here():
    assert sorted(list_models("a2os2a_*")) == sorted(VARIANTS)


@pytest.mark.parametrize("proj", READINGS)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parameter_counts_by_hand(name, proj):
    C, D, L, K, stem, strided = VARIANTS[name]
    assert n_params(name, attn_kwargs={"proj": proj}) == by_hand(C, D, L, K, stem, strided, proj)


def test_hand_count_examples():
    # the closed forms above against numbers written out: fmnist's documented 647,218, and the
    # Spike-driven Transformer 10-512's official-code count (36,006,056 with 10 dead 8x8
    # talking-heads convs, BICLab/Spike-Driven-Transformer) that A²OS²A's default reading shares
    assert by_hand(1, 192, 1, 10, "ipsps", 2) == 647_218
    assert by_hand(3, 512, 10, 1000) == 36_006_056 - 10 * 64 == n_params("a2os2a_10_512")
    # each reading per block: no projection saves D^2 + 3D, a bias-free one D
    assert block(512) - block(512, "none") == 512 * 512 + 3 * 512
    assert block(512) - block(512, "conv_bn") == 512


def test_docs_table_lists_the_hand_counts():
    text = DOCS.read_text()
    for name, (C, D, L, K, stem, strided) in VARIANTS.items():
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/a2os2a.md has no table row for {name}"
        for proj in READINGS:
            assert f"{by_hand(C, D, L, K, stem, strided, proj):,}" in row, (name, proj)


# ---------------------------------------------------------------------------------------------
# Registry: variants and paper figures
# ---------------------------------------------------------------------------------------------
def test_10_512_has_the_imagenet_layout_and_the_78_66_figure():
    d, m = model_entry("a2os2a_10_512").defaults, model_entry("a2os2a_10_512").meta
    assert (d["img_size"], d["in_chans"], d["num_classes"], d["T"], d["pooling_stat"]) == (224, 3, 1000, 4, "1111")
    assert (d["embed_dim"], d["depth"], d["num_heads"], d["mlp_ratio"]) == (512, 10, 8, 4.0)
    assert m["paper_top1"] == {"imagenet": 78.66}
    ev = m["paper_top1_evidence"]["imagenet"]
    assert ev["secondary"] is True and ev["confidence"] == "medium" and "STEP" in ev["source"]
    for other in ("a2os2a_8_384", "a2os2a_8_512"):  # same layout apart from depth / width
        od = model_entry(other).defaults
        assert {k: v for k, v in od.items() if k not in ("embed_dim", "depth")} == \
               {k: v for k, v in d.items() if k not in ("embed_dim", "depth")}


def test_8_768_has_no_paper_figure():
    assert not model_entry("a2os2a_8_768").meta.get("paper_top1")


@pytest.mark.parametrize("name,top1", [("a2os2a_2_384_cifar", 95.70), ("a2os2a_2_512_cifar", 96.42)])
def test_cifar_figures_with_their_confidence(name, top1):
    m = model_entry(name).meta
    assert m["paper_top1"] == {"cifar10": top1}
    ev = m["paper_top1_evidence"]["cifar10"]
    assert ev["secondary"] is True and ev["confidence"] == "medium" and "HP-STAtten" in ev["source"]
    un = m["reported_unassigned"]
    assert (un["cifar10"], un["cifar100"]) == (96.32, 79.69) and "low" in un["confidence"]


def test_models_command_marks_secondary_figures():
    from spikeformers.cli import main
    r = CliRunner().invoke(main, ["models", "a2os2a_*", "--no-params"])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines() if ln.startswith("a2os2a_")}
    assert "78.66 imagenet†" in lines["a2os2a_10_512"] and "medium" in lines["a2os2a_10_512"]
    assert "96.42 cifar10†" in lines["a2os2a_2_512_cifar"]
    assert "paper:" not in lines["a2os2a_8_768"]
    assert "† secondary source" in r.output
    r = CliRunner().invoke(main, ["models", "sdt_8_768", "--no-params"])   # official figures: no mark
    assert "76.3 imagenet" in r.output and "†" not in r.output
    md = CliRunner().invoke(main, ["models", "a2os2a_10_512", "--markdown"]).output
    assert "78.66 (imagenet)† medium confidence" in md and "† secondary source" in md


# ---------------------------------------------------------------------------------------------
# The three readings of the output, against the formula written out
# ---------------------------------------------------------------------------------------------
def lif_ref(x, th=1.0):
    """SpikingJelly LIF, tau 2, decay_input, hard reset to 0: h = v + (x - v) / 2, s = [h >= th]."""
    v, out = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) / 2
        s = (h >= th).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def _calibrated_attention(u, **kw):
    torch.manual_seed(0)
    attn = A2OS2A(8, num_heads=2, **kw).double()
    for m in attn.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    attn.train()
    with torch.no_grad():
        attn(u)
    return attn.eval()


@pytest.mark.parametrize("proj", READINGS)
def test_output_readings_match_the_formula(proj):
    torch.manual_seed(1)
    u = torch.randn(3, 2, 8, 3, 3, dtype=torch.float64) * 2
    attn = _calibrated_attention(u, proj=proj)
    T, B, C, H, W = u.shape
    d, N = C // 2, H * W
    with torch.no_grad():
        y = attn(u)
        s = lif_ref(u)
        q = lif_ref(attn.project("q", s))
        k = torch.relu(attn.project("k", s))
        v = attn.v_ternary(attn.project("v", s))
    O = torch.zeros_like(u)
    for t in range(T):
        for b in range(B):
            for h in range(2):
                def tok(x):
                    return x[t, b, h * d:(h + 1) * d].reshape(d, N).T      # [N, d]
                Q, K, V = tok(q), tok(k), tok(v)
                o = torch.stack([sum(Q[n, i] * sum(K[m][i] * V[m] for m in range(N)) for i in range(d))
                                 for n in range(N)])                       # O = Q (K^T V), [N, d]
                O[t, b, h * d:(h + 1) * d] = o.T.reshape(d, H, W)
    assert q.sum() > 0 and (v == -1).any() and (v == 1).any()             # live spikes of all kinds
    assert not set(torch.unique(O).tolist()) <= {-1.0, 0.0, 1.0}         # O is real
    flat = O.flatten(0, 1)
    if proj == "none":
        want = lif_ref(O)
        assert 0 < want.mean() < 1
    elif proj == "sn_conv_bn":
        z = torch.nn.functional.conv2d(lif_ref(O).flatten(0, 1), attn.proj_conv.weight, attn.proj_conv.bias)
        want = attn.proj_bn(z).reshape(u.shape)
    else:
        z = torch.nn.functional.conv2d(flat, attn.proj_conv.weight)      # no bias
        want = attn.proj_bn(z).reshape(u.shape)
    torch.testing.assert_close(y, want)


def test_output_readings_parameters_and_options():
    sd = {p: set(A2OS2A(16, num_heads=2, proj=p).state_dict()) for p in READINGS}
    assert {"proj_conv.weight", "proj_conv.bias", "proj_bn.weight"} <= sd["sn_conv_bn"]
    assert not any(k.startswith("proj_") for k in sd["none"])
    assert "proj_conv.weight" in sd["conv_bn"] and "proj_conv.bias" not in sd["conv_bn"]
    assert A2OS2A(16, num_heads=2).proj == "sn_conv_bn" and A2OS2A(16, num_heads=2).out_lif is not None
    assert A2OS2A(16, num_heads=2, proj="conv_bn").out_lif is None
    # the older spelling still builds the same modules (and its state dicts load)
    assert set(A2OS2A(16, num_heads=2, out_neuron=True).state_dict()) == sd["sn_conv_bn"]
    legacy = A2OS2A(16, num_heads=2, out_neuron=False)
    assert legacy.proj == "conv_bn" and legacy.out_lif is None and legacy.proj_conv.bias is not None
    with pytest.raises(ConfigError, match="proj must be one of"):
        A2OS2A(16, num_heads=2, proj="linear")
    with pytest.raises(ConfigError, match="not both"):
        A2OS2A(16, num_heads=2, proj="none", out_neuron=False)
    with pytest.raises(ConfigError, match="no output neuron"):
        A2OS2A(16, num_heads=2, proj="conv_bn", attn_scale=2.0)
    with pytest.raises(ConfigError, match="proj must be one of"):
        build_attention("a2os2a", 16, 2, proj="bogus")


def test_none_reading_on_the_spike_stream_returns_spikes():
    torch.manual_seed(2)
    x = torch.randint(0, 2, (2, 3, 16, 3, 3)).float()
    y = A2OS2A(16, num_heads=2, proj="none", stream="spike")(x)
    assert y.shape == x.shape and set(torch.unique(y).tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------------
# The addition-only audit on firing activations
# ---------------------------------------------------------------------------------------------
def _measured(proj, name="a2os2a_fmnist", shape=(16, 1, 28, 28), **kw):
    torch.manual_seed(0)
    x = torch.rand(*shape)
    m = sf.create_model(name, embed_dim=32, num_heads=4, T=2, attn_kwargs={"proj": proj}, **kw)
    calibrate_batchnorm(m, [x])    # trained-like statistics: every neuron fires
    return measure(m, [x])


@pytest.mark.parametrize("name,shape,kw", [("a2os2a_fmnist", (16, 1, 28, 28), {}),
                                           ("a2os2a_2_384_cifar", (8, 3, 32, 32), {"depth": 1})])
@pytest.mark.parametrize("proj", READINGS)
def test_audit_per_reading(proj, name, shape, kw):
    report = _measured(proj, name, shape, **kw)
    rates = {n.name.split(".")[-1]: n.rate for n in report.neurons if ".attn." in n.name}
    # not a trivial pass: the attention's neurons fire, neither silent nor saturated
    for neuron in ("shortcut_lif", "q_lif", "v_ternary") + (("out_lif",) if proj != "conv_bn" else ()):
        assert 0.02 < rates[neuron] < 0.98, (neuron, rates)
    assert not any(n.domain == "real" for n in report.neurons if n.kind in ("LIF", "Ternary"))
    found = audit(report)
    if proj == "conv_bn":
        assert found and all(f.name.endswith("attn.proj_conv") and f.op == "conv" and f.domains == ["real", "weight"]
                             for f in found), [str(f) for f in found]
    else:
        assert found == [], [str(f) for f in found]


# ---------------------------------------------------------------------------------------------
# Head order (Eq. 18: fire, pool, classify)
# ---------------------------------------------------------------------------------------------
def test_head_order_defaults():
    for name in VARIANTS:
        assert model_entry(name).defaults["head_order"] == "fire_pool", name
    with torch.device("meta"):
        assert sf.create_model("a2os2a_8_384").head_order == "fire_pool"
        for name in ("sdt_2_512_cifar", "sdt_8_768", "spikedriven_fmnist"):
            assert "head_order" not in model_entry(name).defaults
            assert sf.create_model(name).head_order == "pool_fire"
    with pytest.raises(ConfigError, match="head_order must be one of"):
        sf.create_model("a2os2a_fmnist", head_order="pool")


def test_head_order_formula():
    torch.manual_seed(3)
    x = torch.rand(6, 1, 28, 28)
    m = calibrate_batchnorm(sf.create_model("a2os2a_fmnist", embed_dim=32, num_heads=4, T=3), [x])
    th = 0.5                                                   # a2os2a_fmnist's LIF threshold
    with torch.no_grad():
        u = m.block[0](m.patch_embed(m.to_time_first(x)))     # [T,B,D,H,W] membrane after the block
        fire_pool = m.head(lif_ref(u, th).mean((-2, -1))).mean(0)
        pool_fire = m.head(lif_ref(u.mean((-2, -1)), th)).mean(0)
        torch.testing.assert_close(m(x), fire_pool)
        m.head_order = "pool_fire"
        torch.testing.assert_close(m(x), pool_fire)
    assert not torch.allclose(fire_pool, pool_fire)


# ---------------------------------------------------------------------------------------------
# spikeformers compare over settings of one attention
# ---------------------------------------------------------------------------------------------
def test_parse_attention_spec():
    assert parse_attention_spec("a2os2a") == ("a2os2a", {})
    assert parse_attention_spec(" a2os2a:proj=none ") == ("a2os2a", {"proj": "none"})
    assert parse_attention_spec("statten:chunk=1:x=0.5:y=true:z=null:w=\"1\"") == \
        ("statten", {"chunk": 1, "x": 0.5, "y": True, "z": None, "w": "1"})
    for bad in ("a2os2a:proj", "a2os2a:=none", "a2os2a:proj=", ":proj=none", "a2os2a:proj=a:proj=b"):
        with pytest.raises(ConfigError):
            parse_attention_spec(bad)
    assert run_folder("a2os2a") == "a2os2a"
    assert run_folder("a2os2a:proj=none") == "a2os2a_proj=none"
    assert run_folder('statten:w="a b"') == "statten_w=_a_b_"


def test_compare_three_readings(fake_fmnist, tmp_path, monkeypatch):
    from spikeformers.cli import main
    from spikeformers.data import fashion_mnist as fm
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:64] for t in real_load(s, d)))
    out = tmp_path / "cmp"
    D = 16
    args = ["compare", "--attentions", "a2os2a,a2os2a:proj=none,a2os2a:proj=conv_bn", "--backbone", "a2os2a_fmnist",
            "--data-dir", str(fake_fmnist), "--max-steps", "1", "--batch-size", "32", "--T", "1",
            "--model-kwargs", json.dumps({"embed_dim": D, "num_heads": 2}), "--recalibrate-bn", "32",
            "--attn-kwargs", json.dumps({"a2os2a": {"order": "qk_v"}}),
            "--energy-images", "16", "--speed-images", "16", "--threads", "1", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [x["attention"] for x in rows] == ["a2os2a", "a2os2a:proj=none", "a2os2a:proj=conv_bn"]
    base = by_hand(1, D, 1, 10, "ipsps", 2)
    assert [x["params"] for x in rows] == [base, base - D * D - 3 * D, base - D]
    assert [x["non_spike_products"] == 0 for x in rows] == [True, True, False]
    for label in ("a2os2a", "a2os2a_proj=none", "a2os2a_proj=conv_bn"):
        cfg = json.loads((out / label / "last.json").read_text())["config"]
        assert cfg["attn_kwargs"]["order"] == "qk_v"                 # --attn-kwargs reaches every entry
        assert cfg["attn_kwargs"].get("proj", "sn_conv_bn") == (label.split("=")[1] if "=" in label else "sn_conv_bn")
    assert "| a2os2a:proj=conv_bn |" in (out / "compare.md").read_text()


@pytest.mark.parametrize("entries,message", [
    ("a2os2a,a2os2a", "repeat"),
    ("a2os2a:proj=none,a2os2a:proj=\"none\"", "same setting"),
    ("a2os2a:proj=bogus", "proj must be one of"),
    ("a2os2a:proj", "is not KEY=VALUE"),
    ("nope:x=1", "unknown attention"),
])
def test_compare_refuses_bad_entries_before_training(tmp_path, entries, message):
    from spikeformers.cli import main
    r = CliRunner().invoke(main, ["compare", "--attentions", entries, "--data-dir", str(tmp_path / "none"),
                                  "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and re.search(message, r.output), r.output
    assert not any((tmp_path / "c").glob("*/metrics.jsonl"))


def test_checkpoints_saved_before_head_order_existed_keep_their_head(tmp_path):
    """A checkpoint whose config has no ``head_order`` (written before the option existed) ran the
    pool-then-fire head: it must come back with that head, not today's default."""
    import json

    from spikeformers.engine.checkpoint import load_checkpoint, save_checkpoint
    torch.manual_seed(0)
    old = sf.create_model("a2os2a_fmnist", embed_dim=16, num_heads=2, head_order="pool_fire").eval()
    path = save_checkpoint(tmp_path / "old.safetensors", old)
    side = tmp_path / "old.json"
    meta = json.loads(side.read_text())
    del meta["config"]["head_order"]                   # as the sidecar of an older version had it
    side.write_text(json.dumps(meta))
    from safetensors.torch import load_file, save_file
    from spikeformers.engine.checkpoint import META_KEY
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        stored = json.loads(f.metadata()[META_KEY])
    del stored["config"]["head_order"]
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(stored)})
    model, _ = load_checkpoint(path)
    assert model.config["head_order"] == "pool_fire"
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), old(x))
    new = sf.create_model("a2os2a_fmnist", embed_dim=16, num_heads=2)
    assert load_checkpoint(save_checkpoint(tmp_path / "new.safetensors", new))[0].config["head_order"] == "fire_pool"
