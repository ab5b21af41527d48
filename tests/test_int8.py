"""Int8 inference products (``speed.quantize_int8``) against an independent float64 computation:
with spike (integer) inputs the int8 path must equal the float product with the rounded weights
``round(w / s) * s`` (s = max|w| / 127 per output channel) to float32 rounding, since oneDNN sums
the integer products exactly in int32. Plus the exact uint8 conversion that guards it, the
fall-back to the float layer for any other input, and the cheaper attention order of ConvSSA."""

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from spikeformers import kernels
from spikeformers.cli import main
from spikeformers.models import create_model
from spikeformers.nn.attention import ConvSSA
from spikeformers.accel import (Int8Products, MatmulConv1d, MatmulConv2d, SmallMapConv2d, fuse, int8_available,
                                optimize, quantize_int8)

needs_int8 = pytest.mark.skipif(not int8_available(), reason="no oneDNN int8 operators in this PyTorch build")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_kernel", [True, False], ids=["C", "torch"])
def test_uint8_conversion_is_exact_or_refused(dtype, use_kernel):
    if use_kernel and not kernels.available():
        pytest.skip(kernels.status())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 40, 9, 11), generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    ctx = kernels.disabled() if not use_kernel else torch.no_grad()
    with ctx:
        y = kernels.to_uint8_exact(x)
        assert y is not None and y.dtype == torch.uint8 and y.stride() == x.stride()
        assert torch.equal(y.long(), x.long()) and int(y.max()) == 255
        for bad in (0.5, -1.0, 256.0, 1e10, -1e10, 255.5, float("nan"), float("inf"), float("-inf")):
            z = x.clone()
            z[2, 17, 4, 6] = bad
            assert kernels.to_uint8_exact(z) is None, bad


def _rounded_reference(layer, x):
    """The layer's float64 output with its weight rounded as Int8Products rounds it."""
    w = layer.weight.detach().double()
    s = (w.flatten(1).abs().amax(1) / 127).view(-1, *[1] * (w.dim() - 1))
    wr = torch.round(w / s).clamp(-127, 127) * s
    b = None if layer.bias is None else layer.bias.detach().double()
    if isinstance(layer, torch.nn.Linear):
        return F.linear(x.double(), wr, b)
    if isinstance(layer, torch.nn.Conv1d):
        return F.conv1d(x.double(), wr, b)
    return F.conv2d(x.double(), wr, b, layer.stride, layer.padding, layer.dilation, layer.groups)


LAYERS = {
    "linear": (lambda: torch.nn.Linear(96, 40), (3, 5, 96)),
    "conv1d": (lambda: MatmulConv1d(64, 48, 1, bias=False), (4, 64, 9)),
    "pointwise": (lambda: MatmulConv2d(64, 48, 1), (4, 64, 5, 5)),
    "conv3x3/2": (lambda: torch.nn.Conv2d(16, 32, 3, 2, 1), (4, 16, 9, 9)),
    "groups": (lambda: torch.nn.Conv2d(16, 32, 3, 1, 1, groups=2, bias=False), (4, 16, 6, 6)),
    "smallmap2x2": (lambda: SmallMapConv2d(32, 48, 3, 1, 1), (4, 32, 2, 2)),
    "smallmap1x2": (lambda: SmallMapConv2d(32, 48, 3, 1, 1), (4, 32, 1, 2)),
    "smallmap4x4": (lambda: SmallMapConv2d(32, 48, 3, 1, 1), (4, 32, 4, 4)),
}


@needs_int8
@pytest.mark.parametrize("kind", list(LAYERS))
def test_int8_products_equal_the_rounded_float_product(kind):
    torch.manual_seed(0)
    make, shape = LAYERS[kind]
    layer = make().eval()
    x = (torch.rand(shape) < 0.3).float()
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    q = Int8Products(layer)
    with torch.no_grad():
        ref = _rounded_reference(layer, x)
        y = q(x)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
        y16 = q(x.bfloat16())                           # bf16 spikes in, bf16 out: one rounding at the end
        assert y16.dtype == torch.bfloat16
        torch.testing.assert_close(y16.double(), ref.to(torch.bfloat16).double(), rtol=8e-3, atol=1e-2)
        # not the float layer's result: the weights were rounded (so the test above could fail)
        assert not torch.allclose(layer(x).double(), ref, rtol=1e-7, atol=1e-7)
    assert q.int8_calls == 2 and q.float_calls == 0


@needs_int8
def test_int8_falls_back_to_the_float_layer():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(8, 16, 3, 1, 1).eval()
    q = Int8Products(layer)
    x = torch.rand(2, 8, 6, 6)                          # not integers: the float layer, bit for bit
    with torch.no_grad():
        assert torch.equal(q(x), layer(x))
    s = (torch.rand(2, 8, 6, 6) < 0.5).float().requires_grad_()
    q(s).sum().backward()                               # gradients wanted: the float layer, with grads
    assert s.grad is not None and layer.weight.grad is not None
    assert q.float_calls == 2 and q.int8_calls == 0
    assert q.stride == (1, 1) and q.out_channels == 16  # the wrapped layer's attributes stay readable


@needs_int8
def test_int8_weights_follow_an_in_place_update():
    layer = torch.nn.Linear(16, 8).eval()
    q = Int8Products(layer)
    x = (torch.rand(5, 16) < 0.5).float()
    with torch.no_grad():
        q(x)
        layer.weight.mul_(-2.0)
        torch.testing.assert_close(q(x).double(), _rounded_reference(layer, x), rtol=1e-6, atol=1e-6)


@needs_int8
def test_quantize_int8_on_a_zoo_model():
    """Every conv / linear of sdt_2_256_cifar is wrapped; all but the stem's first conv (which reads
    the analog image) see spikes and run in int8; the model refuses training mode first."""
    torch.manual_seed(0)
    model = create_model("sdt_2_256_cifar", T=2, img_size=16, num_classes=10)
    with pytest.raises(ValueError, match="eval"):
        quantize_int8(model)
    model = fuse(optimize(model).eval())
    n_layers = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) for m in model.modules())
    quantize_int8(model)
    assert not any(m.training for m in model.modules())   # the new wrappers and Identity modules too
    with torch.no_grad():
        out = model(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    wrapped = {n: m for n, m in model.named_modules() if isinstance(m, Int8Products)}
    assert model.int8_layers == len(wrapped) == n_layers
    floats = sorted(n for n, m in wrapped.items() if m.float_calls)
    assert floats == ["patch_embed.proj_conv"], floats
    assert all(m.int8_calls == 1 for n, m in wrapped.items() if n not in floats)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [4, 100])
def test_conv_ssa_orders_agree_exactly(dtype, tokens):
    """Q K^T V of binary spikes: the (Q K^T) V order taken for few tokens and the official
    Q (K^T V) order (forced by a hook on attn_map) both equal the float64 product exactly."""
    attn = ConvSSA(384, 6)
    g = torch.Generator().manual_seed(1)
    q, k, v = ((torch.rand(2, 2, 6, tokens, 64, generator=g) < 0.5).to(dtype) for _ in range(3))
    ref = ((q.double() @ k.double().transpose(-2, -1)) @ v.double()).to(dtype)
    a = attn._qkv(q, k, v)
    seen = []
    h = attn.attn_map.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    b = attn._qkv(q, k, v)
    h.remove()
    assert seen == [(2, 2, 6, 64, 64)]
    assert torch.equal(a, ref) and torch.equal(b, ref)


@needs_int8
def test_bench_reports_int8_and_float_inference():
    base = ["bench", "--model", "sdt_2_256_cifar", "--T", "1", "--batch", "2", "--img-size", "16", "--reps", "1",
            "--json"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["int8"] is True and d["infer_img_s"] > 0 and d["infer_float_img_s"] > 0
    r = CliRunner().invoke(main, base + ["--no-int8"])
    d = json.loads(r.output.strip().splitlines()[-1])
    assert d["int8"] is False and d["infer_float_img_s"] != d["infer_float_img_s"]   # NaN: not measured


@needs_int8
def test_int8_products_run_eagerly_inside_a_compiled_model():
    """torch.compile of a model holding Int8Products: inductor cannot lower the prepacked oneDNN
    weights (it crashed `spikeformers bench --compile`), so each int8 layer is a
    graph break that runs eagerly: the same output as the eager model, and the products in int8."""
    torch.manual_seed(0)
    first, second = Int8Products(torch.nn.Linear(24, 32)), Int8Products(torch.nn.Linear(32, 16))
    net = torch.nn.Sequential(first, torch.nn.Threshold(0.0, 0.0), second).eval()
    x = (torch.rand(6, 24) < 0.5).float()                # spikes: the first layer runs in int8
    with torch.no_grad():
        ref = net(x)
        out = torch.compile(net)(x)
    assert torch.equal(out, ref)
    assert first.int8_calls == 2 and first.float_calls == 0      # eager, then compiled: int8 both times
    assert second.float_calls == 2 and second.int8_calls == 0    # a ReLU output is no spike: the float layer


def test_bench_compile_defaults_to_float_inference():
    from spikeformers.analysis.bench import bench_model
    r = bench_model("sdt_2_256_cifar", T=1, batch=2, img_size=16, compile=True, train=False, infer=False,
                    peaks=False)
    assert r.int8 is False and r.compile is True
