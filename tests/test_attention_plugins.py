"""Attention plug-ins (one interface, every name), their value domains and addition-only audit,
TP token pruning, STAS-style halting, the IPSPS stem, the Spikformer backbone, `compare`."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

import spikeformers as sf
from _products import ProductRecorder
from spikeformers.nn import tokens as tok
from spikeformers.analysis.energy import calibrate_batchnorm as recalibrate_batchnorm
from spikeformers.nn.layers import IPSPS
from spikeformers.nn.attention import ATTENTIONS, build_attention

NAMES = sorted(ATTENTIONS)
DIM, HEADS, GRID = 32, 4, 5


def _calibrated(name, stream, x, **kw):
    """The plug-in with BN running stats set from ``x`` (so eval-mode neurons fire), in eval mode."""
    torch.manual_seed(0)
    attn = build_attention(name, DIM, HEADS, stream=stream, num_tokens=GRID * GRID, **kw)
    for m in attn.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    attn.train()
    with torch.no_grad():
        attn(x)
    return attn.eval()


def _membrane():
    torch.manual_seed(1)
    return torch.randn(2, 3, DIM, GRID, GRID) * 2.0   # T=2 (STAtten's chunk 2 divides it)


def _spikes(high=2):
    torch.manual_seed(2)
    return torch.randint(0, high, (2, 3, DIM, GRID, GRID)).float()


# ---------------------------------------------------------------------------------------------
# Shapes and value domains
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_membrane_stream_shape_and_real_increment(name):
    u = _membrane()
    attn = _calibrated(name, "membrane", u)
    with torch.no_grad():
        y = attn(u)
    assert y.shape == u.shape and torch.isfinite(y).all()
    first = attn.activation_in if name == "dssa" else attn.shortcut_lif  # DSSA's own input neuron
    assert not isinstance(first, torch.nn.Identity)
    # the increment is BN(W_proj .): real, not fired
    assert not set(torch.unique(y).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_spike_stream_fires_its_increment(name):
    x = _spikes()
    attn = _calibrated(name, "spike", x)
    with torch.no_grad():
        y = attn(x)
    assert y.shape == x.shape
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


def test_unknown_names_and_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown attention 'sda'.*expected one of"):
        build_attention("sda", 32, 4)
    with pytest.raises(ValueError, match="stream must be one of"):
        build_attention("sdsa", 32, 4, stream="membran")
    with pytest.raises(ValueError, match="attention 'statten'.*chunks"):   # a ConfigError
        build_attention("statten", 32, 4, chunks=2)
    with pytest.raises(ValueError, match="needs num_tokens"):
        build_attention("stmixer", 32, 4)
    with pytest.raises(ValueError, match="chunk 2 must divide.*T=3"):
        build_attention("statten", 32, 4)(torch.randn(3, 1, 32, 4, 4))
    with pytest.raises(ValueError, match="built for 25 tokens, got a 4x4"):
        build_attention("stmixer", 32, 4, num_tokens=25)(torch.randn(2, 1, 32, 4, 4))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        build_attention("ms", 30, 4)


# ---------------------------------------------------------------------------------------------
# Addition-only audit: every product must have a spike (binary / ternary) operand
# ---------------------------------------------------------------------------------------------
def _domain(t):
    v = torch.unique(t.detach().float())
    if bool(((v == 0) | (v == 1)).all()):
        return "binary"
    if bool(((v == 0) | (v == 1) | (v == -1)).all()):
        return "ternary"
    if bool((v == v.round()).all()):
        return "integer"
    return "real"


def _is_scale(a, b):
    """A per-head/per-channel constant broadcast onto the other operand (at most one non-1 dim, far
    fewer elements): it folds into the next neuron's threshold (e.g. DSSA's 1/sqrt(r d))."""
    return sum(s > 1 for s in a.shape) <= 1 and a.numel() * 4 <= b.numel()


def _describe(name, a, b):
    if _is_scale(a, b) or _is_scale(b, a):
        return None
    return (name, _domain(a), _domain(b), float((a != 0).float().mean()), float((b != 0).float().mean()))


def _products(attn, x):
    mode = ProductRecorder(_describe)
    with mode, torch.no_grad():
        attn(x)
    return mode.records


SPIKE = {"binary", "ternary"}


def _non_spike(recs):
    return [r for r in recs if not ({r[1], r[2]} & SPIKE)]


# The audit result each plug-in should have on the membrane stream: none of them multiplies two
# non-spike tensors (A²OS²A's real K meets only ternary V; DS2TA's denoised map meets binary V;
# DSSA's real BN(conv) maps meet binary spikes; STMixer's mixing matrix meets spikes).
EXPECTED_NON_SPIKE = {name: 0 for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_membrane_stream_audit(name):
    u = _membrane()
    recs = _products(_calibrated(name, "membrane", u), u)
    assert any(r[0] == "convolution" for r in recs)
    assert len(_non_spike(recs)) == EXPECTED_NON_SPIKE[name], _non_spike(recs)
    # not a trivial pass: some spike operand actually holds spikes (0 < rate < 1)
    assert any((r[1] == "binary" and 0 < r[3] < 1) or (r[2] == "binary" and 0 < r[4] < 1) for r in recs)


@pytest.mark.parametrize("name", ["sdsa", "a2os2a", "statten", "qk_token"])
def test_spike_stream_audit_flags_integer_stream(name):
    """On the Spikformer stream the input is used as is: binary input keeps the attention
    addition-only, an integer-valued stream (SEW ADD residuals: 0, 1, 2, ...) makes its input
    projections integer x weight products, exactly the Spikformer property the strict accounting
    counts as MAC."""
    x = _spikes(2)
    assert not _non_spike(_products(_calibrated(name, "spike", x), x))
    x3 = _spikes(3)
    bad = _non_spike(_products(_calibrated(name, "spike", x3), x3))
    assert bad and all(r[0] == "convolution" and "integer" in r[1:3] for r in bad)


def test_audit_catches_a_real_real_product():
    # negative control: A²OS²A without its output neuron feeds a real tensor to the projection
    u = _membrane()
    recs = _products(_calibrated("a2os2a", "membrane", u, out_neuron=False), u)
    assert any(r[0] == "convolution" and r[1] == "real" for r in _non_spike(recs))


# ---------------------------------------------------------------------------------------------
# Formulas against explicit loops
# ---------------------------------------------------------------------------------------------
def test_statten_chunked_attention_by_hand():
    torch.manual_seed(3)
    T, c, H = 4, 2, 3
    attn = build_attention("statten", 8, 2, chunk=c).double().eval()
    u = torch.randn(T, 1, 8, H, H, dtype=torch.float64) * 3
    got = {}
    attn.attn_lif.register_forward_pre_hook(lambda m, a: got.setdefault("o", a[0]))
    with torch.no_grad():
        attn(u)
        s = attn.shortcut_lif(u)
        q, k, v = (getattr(attn, f"{n}_lif")(attn.project(n, s)) for n in "qkv")
    d, N = 4, H * H
    for t in range(T):
        steps = range(t // c * c, t // c * c + c)
        for h in range(2):
            def tok_(x, tt):
                return x[tt, 0, h * d:(h + 1) * d].reshape(d, N).T  # [N, d]
            kv = sum(tok_(k, tt).T @ tok_(v, tt) for tt in steps)   # d x d over the chunk's c*N tokens
            want = tok_(q, t) @ kv / H
            torch.testing.assert_close(got["o"][t, 0, h * d:(h + 1) * d].reshape(d, N).T, want)


def test_stmixer_mixes_tokens_with_its_matrix():
    torch.manual_seed(4)
    attn = build_attention("stmixer", 8, 2, num_tokens=4).double().eval()
    u = torch.randn(2, 1, 8, 2, 2, dtype=torch.float64) * 3
    got = {}
    attn.mix_lif.register_forward_pre_hook(lambda m, a: got.setdefault("y", a[0]))
    with torch.no_grad():
        attn(u)
        x = attn.in_lif(attn.in_bn(attn.in_conv(attn.shortcut_lif(u).flatten(0, 1)))).reshape(2, 1, 8, 4)
    for h in range(2):
        want = torch.einsum("nm,tbcm->tbcn", attn.mixer[h].detach(), x[:, :, h * 4:(h + 1) * 4])
        torch.testing.assert_close(got["y"].reshape(2, 1, 8, 4)[:, :, h * 4:(h + 1) * 4], want)


# ---------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------
TINY_SDT = dict(embed_dim=32, num_heads=4, T=2)


@pytest.mark.parametrize("name", NAMES)
def test_sdt_backbone_takes_every_attention(name):
    m = sf.create_model("sdt_2_256_cifar", attention=name, **TINY_SDT).eval()
    assert m.config["attention"] == name
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["sdsa", "a2os2a", "stmixer", "dssa"])
def test_spikformer_backbone_takes_plugins_on_the_spike_stream(name):
    m = sf.create_model("spikformer_4_256_cifar", attention=name, embed_dim=32, depths=1, num_heads=4, T=2)
    outs = []
    m.block[0].attn.register_forward_hook(lambda mod, i, o: outs.append(o))
    y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and m.block[0].attn.stream == "spike"
    assert set(torch.unique(outs[0]).tolist()) <= {0.0, 1.0}


def test_spikformer_default_is_the_official_block():
    from spikeformers.nn.attention import ConvSSA, LinearSSA
    a = sf.create_model("spikformer_4_256_cifar", embed_dim=32, depths=1, num_heads=4)
    b = sf.create_model("spikformer_8_384", embed_dim=32, depths=1, num_heads=4, attention="ssa", img_size=64)
    assert type(a.block[0].attn) is LinearSSA and type(b.block[0].attn) is ConvSSA


def test_ipsps_stem_shapes():
    stem = IPSPS(1, 64, "1100")
    assert stem(torch.randn(2, 3, 1, 28, 28)).shape == (2, 3, 64, 7, 7) and stem.out_size(28) == 7
    m = sf.create_model("sdt_2_256_cifar", attention="stmixer", stem="ipsps", **TINY_SDT)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert m.patch_embed.short_conv.kernel_size == (4, 4) and m.patch_embed.short_conv.stride == (4, 4)
    with pytest.raises(ValueError, match="input size divisible by 4"):
        stem(torch.randn(1, 1, 1, 30, 30))


# ---------------------------------------------------------------------------------------------
# TP-Spikformer token pruning
# ---------------------------------------------------------------------------------------------
def _blocks_io(m, x):
    io, sizes = [], []
    hs = [b.register_forward_hook(lambda mod, i, o: io.append((i[0], o))) for b in m.block]
    hs += [b.attn.register_forward_pre_hook(lambda mod, a: sizes.append(tuple(a[0].shape[-2:]))) for b in m.block]
    with torch.no_grad():
        y = m(x)
    for h in hs:
        h.remove()
    return y, io, sizes


def test_token_pruning_keeps_exactly_k2_tokens_per_block():
    torch.manual_seed(5)
    x = torch.randn(3, 3, 32, 32)
    m = recalibrate_batchnorm(sf.create_model("sdt_2_256_cifar", **TINY_SDT), [x])  # 8x8 tokens, 2 blocks
    full, _, sizes = _blocks_io(m, x)
    assert sizes == [(8, 8), (8, 8)]
    m.set_token_pruning([5, 3])                                 # on the trained model, no retraining
    pruned, io, sizes = _blocks_io(m, x)
    assert sizes == [(5, 5), (3, 3)]
    for (u_in, u_out), k in zip(io, (5, 3)):
        changed = (u_out != u_in).flatten(3).any(0).any(1)      # [B, N]: tokens the block updated
        assert changed.sum(-1).tolist() == [k * k] * 3
    assert not torch.equal(full, pruned)
    m.set_token_pruning(8)                                      # k^2 = N: the unpruned model exactly
    assert torch.equal(_blocks_io(m, x)[0], full)
    m.set_token_pruning(None)
    assert torch.equal(_blocks_io(m, x)[0], full)
    with pytest.raises(ValueError, match="one k per block"):
        m.set_token_pruning([5])
    with pytest.raises(ValueError, match=r"in 1\.\.8"):
        m.set_token_pruning(9)
    with pytest.raises(ValueError, match="STMixer"):
        sf.create_model("sdt_2_256_cifar", attention="stmixer", token_keep=4, **TINY_SDT)


def test_ir_score_official_quirk_reduces_to_channel_uniformity():
    """TP-Spikformer's official ir_score: with the all-ones C x C kernel, cos(x, L) = sign(L) sum_c x_c / (sqrt(C) |x|)."""
    torch.manual_seed(6)
    u = torch.randn(1, 2, 6, 4, 4, dtype=torch.float64)         # T = 1: no temporal term
    x = u.mean(0)
    L = torch.nn.functional.conv2d(x.sum(1, keepdim=True), torch.ones(1, 1, 3, 3, dtype=x.dtype), padding=1) / 9
    cos = torch.sign(L[:, 0]) * x.sum(1) / (math.sqrt(6) * x.norm(dim=1))
    want = (-cos).flatten(1).softmax(-1) + 1.0 / 16             # + uniform softmax of a zero s_t
    torch.testing.assert_close(tok.ir_score(u, "official"), want)
    assert not torch.allclose(tok.ir_score(u, "per_channel"), want)


def test_ir_score_temporal_term():
    u = torch.zeros(3, 1, 2, 1, 2)
    u[1, 0, :, 0, 1] = 4.0                                      # token 1 changes over time, token 0 not
    s = tok.ir_score(u, "per_channel")
    assert s[0, 1] > s[0, 0]


# ---------------------------------------------------------------------------------------------
# STAS-style halting
# ---------------------------------------------------------------------------------------------
def test_halting_extremes_and_skipped_tokens():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 32, 32)
    m = recalibrate_batchnorm(sf.create_model("sdt_2_256_cifar", **TINY_SDT), [x])
    with torch.no_grad():
        full = m(x)
        m.set_halting({"beta": -50.0})                          # h ~ 0: nothing halts
        assert torch.equal(m(x), full) and m.halting.active_fraction == [1.0, 1.0]
        m.set_halting({"beta": 50.0})                           # h ~ 1: all halt after block 0
        y, io, _ = _blocks_io(m, x)
        assert m.halting.active_fraction == [1.0, 0.0]
        assert torch.equal(io[1][0], io[1][1])                  # block 1 left every token unchanged
        u = m.block[0](m.patch_embed(m.to_time_first(x)))
        assert torch.equal(y, m.head(m.head_lif(u.flatten(3).mean(3))).mean(0))
    with pytest.raises(ValueError, match="cannot be combined"):
        m.set_token_pruning(4)


def test_halting_propagates_over_time():
    h = tok.AdaptiveHalting(gamma=1.0, beta=0.0, eps=0.1)      # h(0) = 0.5 < 0.9: u = 0 does not halt
    seen = []

    class Blk(torch.nn.Module):
        def forward(self, u, active=None):
            if active is not None:
                seen.append(active.clone())
            return u

    u = torch.zeros(3, 1, 1, 1, 2)
    u[1, 0, 0, 0, 0] = 10.0                                     # token 0 halts at t = 1 after block 0
    u[:, 0, 0, 0, 1] = -10.0                                    # token 1 never halts
    h.run([Blk(), Blk()], u)
    assert seen[0][:, 0, 0, 0, 0].tolist() == [1.0, 0.0, 0.0]   # halted at t=1 and every later t
    assert seen[0][:, 0, 0, 0, 1].tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# spikeformers compare
# ---------------------------------------------------------------------------------------------
def test_compare_tiny_run(fake_fmnist, tmp_path, monkeypatch):
    from spikeformers.cli import main
    from spikeformers.data import fashion_mnist as fm
    real_load = fm.load_fashion_mnist
    monkeypatch.setattr(fm, "load_fashion_mnist", lambda s, d=None: tuple(t[:64] for t in real_load(s, d)))
    out = tmp_path / "cmp"
    args = ["compare", "--attentions", "sdsa,a2os2a", "--data-dir", str(fake_fmnist), "--max-steps", "2",
            "--batch-size", "32", "--T", "1", "--model-kwargs", json.dumps({"embed_dim": 16, "num_heads": 2}),
            "--energy-images", "16", "--speed-images", "16", "--tp-keep", "2", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [x["attention"] for x in rows] == ["sdsa", "sdsa +TP k=2", "a2os2a", "a2os2a +TP k=2"]
    assert all(x["steps"] == 2 for x in rows)
    for x in rows:
        assert 0.0 <= x["accuracy"] <= 100.0 and x["params"] > 0 and x["infer_img_s"] > 0
        assert x["energy_paper_mj"] > 0 and x["energy_strict_mj"] > 0   # the first layer alone costs MACs
    assert rows[0]["non_spike_products"] == 0 and rows[1]["non_spike_products"] > 0  # TP's real-valued score
    csv_lines = (out / "compare.csv").read_text().splitlines()
    assert csv_lines[0].startswith("attention,accuracy,params,mean_firing_rate,energy_paper_mj,energy_strict_mj")
    assert len(csv_lines) == 5
    md = (out / "compare.md").read_text()
    assert "| sdsa +TP k=2 |" in md and "max_steps=2" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sdsa" / "last.safetensors").is_file() and (out / "a2os2a" / "metrics.jsonl").is_file()
    r = CliRunner().invoke(main, ["compare", "--attentions", "sdsa,nope", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "unknown attention(s) ['nope']" in r.output
    r = CliRunner().invoke(main, ["compare", "--attentions", "sdsa", "--backbone", "spikformer_4_256_cifar",
                                  "--tp-keep", "2", "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "need a Spike-driven Transformer backbone" in r.output
    assert not (tmp_path / "y" / "sdsa").exists()                # refused before any training
