"""Registry, shapes, input errors, parameter counts and the addition-only property."""

import pytest
import torch

import spikeformers as sf
from _products import ProductRecorder
from spikeformers.nn.attention import A2OS2A, SpikeDrivenSelfAttention

SMALL = dict(embed_dim=64, num_heads=4, depth=1)


def test_registry_lists_issue_variants():
    names = set(sf.list_models())
    for n in ["a2os2a_2_384_cifar", "a2os2a_2_512_cifar", "a2os2a_8_384", "a2os2a_8_512", "a2os2a_8_768",
              "sdt_2_512_cifar", "a2os2a_fmnist"]:
        assert n in names
    assert sf.list_models("a2os2a_8_*") == ["a2os2a_8_384", "a2os2a_8_512", "a2os2a_8_768"]


def test_unknown_model_suggests_names():
    with pytest.raises(KeyError, match="did you mean a2os2a_fmnist"):
        sf.create_model("a2os2a_fmnst")


@pytest.mark.parametrize("name,overrides,shape", [
    ("a2os2a_fmnist", {}, (3, 1, 28, 28)),
    ("a2os2a_2_384_cifar", dict(SMALL, T=2), (2, 3, 32, 32)),
    ("sdt_2_512_cifar", dict(SMALL, T=2, num_classes=7), (2, 3, 32, 32)),
    ("a2os2a_8_384", dict(SMALL, T=1, img_size=64, num_classes=5), (1, 3, 64, 64)),
])
def test_forward_shapes_and_overrides(name, overrides, shape):
    m = sf.create_model(name, **overrides).eval()
    with torch.no_grad():
        y = m(torch.randn(shape))
    assert y.shape == (shape[0], overrides.get("num_classes", m.num_classes))
    assert m.config["name"] == name and all(m.config[k] == v for k, v in overrides.items())
    if "T" in overrides:
        assert m.T == overrides["T"]


def test_frames_input_uses_its_own_T():
    m = sf.create_model("a2os2a_fmnist", T=4).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 1, 28, 28))  # [B, T=3, C, H, W]
    assert y.shape == (2, 10)


@pytest.mark.parametrize("x,match", [
    (torch.randn(2, 3, 32, 32), r"expected input \[B,1,28,28\].*got \[B,3,32,32\]"),
    (torch.randn(2, 1, 32, 32), r"got \[B,1,32,32\]"),
    (torch.randn(1, 28, 28), r"got \[B,28,28\]"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "floating-point"),
])
def test_bad_input_is_named(x, match):
    m = sf.create_model("a2os2a_fmnist")
    with pytest.raises((ValueError, TypeError), match=match):
        m(x)


def test_param_counts_match_official_sdt():
    # BICLab/Spike-Driven-Transformer model/spikeformer.py, counted with the dead talking_heads conv (h^2 = 64 per block).
    official = {"sdt_2_512_cifar": (10_233_546, 2), }
    for name, (count, depth) in official.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in sf.create_model(name).parameters())
        assert n == count - depth * 64
    # SDT-8-768 ImageNet is 66,339,144 with its 8 dead 8x8 talking-heads convs; A2OS2A reuses the
    # same shapes (Q/K/V/proj 1x1 convs), so a2os2a_8_768 must have exactly the remaining weights.
    with torch.device("meta"):
        n = sum(p.numel() for p in sf.create_model("a2os2a_8_768").parameters())
    assert n == 66_339_144 - 8 * 64 - 1000 * 768 - 1000 + 1000 * 768 + 1000


# ---------------------------------------------------------------------------------------------
# Addition-only property
# ---------------------------------------------------------------------------------------------
def _domain(t: torch.Tensor) -> str:
    vals = torch.unique(t.detach().float())
    if bool((vals == 0).all()):
        return "zero"
    if bool(((vals == 0) | (vals == 1)).all()):
        return "binary"
    if bool(((vals == 0) | (vals == 1) | (vals == -1)).all()):
        return "ternary"
    return "real"


def _attention_products(attn: torch.nn.Module, train: bool) -> list:
    torch.manual_seed(0)
    u = torch.randn(3, 2, attn.proj_conv.in_channels, 5, 5) * 2.0
    if not train:  # calibrate BN running stats on this batch so eval-mode neurons fire
        for m in attn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        attn.train()
        with torch.no_grad():
            attn(u)
    attn.train(train)
    mode = ProductRecorder(lambda name, a, b: (name, _domain(a), _domain(b)))
    with mode, torch.no_grad():
        attn(u)
    return mode.records


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("make", [
    lambda: A2OS2A(32, num_heads=4),
    lambda: A2OS2A(32, num_heads=4, order="qk_v"),
    lambda: SpikeDrivenSelfAttention(32, num_heads=4),
])
def test_attention_is_addition_only(make, train):
    recs = _attention_products(make(), train)
    kinds = {r[0] for r in recs}
    assert "convolution" in kinds  # q/k/v/proj convs were seen
    bad = [r for r in recs if "real" in r[1:] and not ({"binary", "ternary", "zero"} & set(r[1:]))]
    assert not bad, f"products with no spike operand: {bad}"


def test_a2os2a_products_see_binary_q_relu_k_ternary_v():
    recs = _attention_products(A2OS2A(32, num_heads=4), train=False)
    mm = [r for r in recs if r[0] in ("bmm", "mm")]
    assert ("bmm", "real", "ternary") in mm      # K^T V: keys real (ReLU), values ternary
    assert ("bmm", "binary", "real") in mm       # Q (K^T V): queries binary


def test_audit_detects_real_products_without_output_neuron():
    # Negative control: without the output neuron the projection multiplies real by real.
    recs = _attention_products(A2OS2A(32, num_heads=4, out_neuron=False), train=True)
    assert any(r[0] == "convolution" and r[1] == "real" and r[2] == "real" for r in recs)


def test_a2os2a_factorisation_orders_agree():
    torch.manual_seed(0)
    a = A2OS2A(32, num_heads=4, order="q_kv").double().eval()
    b = A2OS2A(32, num_heads=4, order="qk_v").double().eval()
    b.load_state_dict(a.state_dict())
    u = torch.randn(3, 2, 32, 4, 4, dtype=torch.float64) * 2
    with torch.no_grad():
        torch.testing.assert_close(a(u), b(u), rtol=1e-9, atol=1e-9)


def test_a2os2a_attention_matches_formula_by_hand():
    """Q (K^T V) per head and time step against an explicit loop over heads/steps/tokens."""
    torch.manual_seed(1)
    attn = A2OS2A(8, num_heads=2, out_neuron=False).double().eval()
    u = torch.randn(2, 1, 8, 2, 2, dtype=torch.float64) * 2
    captured = {}
    attn.attn_map.register_forward_hook(lambda m, i, o: captured.setdefault("kv", o))
    s = attn.shortcut_lif(u)
    q = attn.q_lif(attn.project("q", s))
    k = torch.relu(attn.project("k", s))
    v = attn.v_ternary(attn.project("v", s))
    with torch.no_grad():
        attn(u)
    T, B, C, H, W = u.shape
    d = C // 2
    for t in range(T):
        for h in range(2):
            Q = q[t, 0, h * d:(h + 1) * d].reshape(d, H * W).T  # [N, d]
            K = k[t, 0, h * d:(h + 1) * d].reshape(d, H * W).T
            V = v[t, 0, h * d:(h + 1) * d].reshape(d, H * W).T
            kv = sum(K[n][:, None] * V[n][None, :] for n in range(H * W))  # [d, d]
            torch.testing.assert_close(captured["kv"][t, 0, h], kv.detach())
            assert set(torch.unique(Q).tolist()) <= {0.0, 1.0}
            assert set(torch.unique(V).tolist()) <= {-1.0, 0.0, 1.0}
