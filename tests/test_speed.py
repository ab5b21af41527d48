"""Every speed path against the plain path: the fused neuron kernel (bit-identical float32 forward,
gradients to rounding), 1x1-as-matmul + channels-last layers, BatchNorm folding, the bench CLI."""

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from click.testing import CliRunner

from spikeformers import kernels
from spikeformers.cli import main
from spikeformers.models import create_model
from spikeformers.neurons import IF, LIF, Ternary, Triangle
from spikeformers.accel import MatmulConv1d, MatmulConv2d, SmallMapConv2d, fuse, optimize
from spikeformers.nn.fused import FastBatchNorm2d, FastMaxPool2d, TokenBatchNorm1d, bn_fire

needs_kernel = pytest.mark.skipif(not kernels.available(), reason=f"no fused kernel: {kernels.status()}")

NEURONS = [
    LIF(), LIF(v_reset=None), LIF(decay_input=False), LIF(decay_input=False, v_reset=None),
    LIF(v_reset=0.3, v_threshold=0.8), LIF(tau=3.0, v_threshold=1.5, decay_input=False),
    LIF(v_reset=-0.2, decay_input=False, tau=1.5), LIF(tau=2.7, detach_reset=False),
    LIF(v_reset=None, detach_reset=False, surrogate="atan"),
    LIF(surrogate=Triangle(0.7), v_reset=0.2, detach_reset=False), IF(), IF(v_reset=None),
    Ternary(), Ternary(detach_reset=True), Ternary(decay=0.6, v_threshold=0.3, surrogate="sigmoid"),
]


@needs_kernel
@pytest.mark.parametrize("neuron", NEURONS, ids=lambda n: f"{type(n).__name__}({n.extra_repr()[:70]})")
@pytest.mark.parametrize("shape", [(6, 70000), (4, 3, 7, 5)], ids=str)
def test_kernel_equals_loop(neuron, shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 1.5 + 0.3).requires_grad_()
    gy = torch.randn(*shape, generator=g)
    y = neuron(x)
    y.backward(gy)
    gk = x.grad.clone()
    x.grad = None
    with kernels.disabled():
        y0 = neuron(x)
        y0.backward(gy)
        with torch.no_grad():
            y0n = neuron(x)
    with torch.no_grad():
        yn = neuron(x)
    assert torch.equal(y, y0) and torch.equal(yn, y0n) and torch.equal(y, yn)   # bit-identical spikes
    torch.testing.assert_close(gk, x.grad, rtol=1e-5, atol=1e-5 * x.grad.abs().max().item())
    assert 0 < y.abs().sum() < y.numel()


@needs_kernel
def test_kernel_bf16_and_channels_last():
    x = torch.randn(4 * 8, 16, 6, 6).contiguous(memory_format=torch.channels_last).reshape(4, 8, 16, 6, 6)
    assert not x.is_contiguous() and kernels.supports(x)
    y = LIF()(x)
    with kernels.disabled():
        assert torch.equal(y, LIF()(x))
    assert y.stride() == x.stride()
    xb = torch.randn(4, 5000).bfloat16()
    # bf16 input: state kept in float32 inside the kernel = the float32 loop on the same values
    assert torch.equal(LIF()(xb).float(), LIF()(xb.float()))
    assert torch.equal(Ternary()(xb).float(), Ternary()(xb.float()))


def test_fallback_when_disabled_or_unsupported():
    x = torch.randn(3, 10, dtype=torch.float64)
    assert not kernels.supports(x)
    with kernels.disabled():
        assert not kernels.supports(torch.randn(3, 10))
    assert not kernels.supports(torch.randn(3, 10).t())  # time axis not outermost


SMALL = dict(img_size=32, num_classes=10, T=2)
FAST_MODELS = [("sdt_2_256_cifar", dict(embed_dim=64)), ("spikformer_4_384_cifar", dict(embed_dim=64, depths=1, num_heads=4)),
               ("qkformer_10_384", dict(embed_dim=64, num_heads=4, depths=4)), ("a2os2a_fmnist", dict(img_size=28, in_chans=1))]


def _pair(name, kw):
    torch.manual_seed(0)
    a = create_model(name, **{**SMALL, **kw})
    b = create_model(name, **{**SMALL, **kw})
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, a.in_chans, a.img_size, a.img_size)
    return a, b, x


@pytest.mark.parametrize("name,kw", FAST_MODELS, ids=lambda v: v if isinstance(v, str) else "")
def test_fuse_equals_unfused_eval(name, kw):
    a, b, x = _pair(name, kw)
    a.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        for _ in range(2):
            a(x * 2 + 0.5)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    fuse(b)
    assert b.fused_batchnorms > 0
    acts_a, acts_b = [], []
    for m, acts in ((a, acts_a), (b, acts_b)):
        for mod in m.modules():
            if isinstance(mod, (LIF, Ternary)):
                mod.register_forward_hook(lambda _m, _i, o, acts=acts: acts.append(o))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert len(acts_a) == len(acts_b) > 0
    assert all(torch.equal(s, t) for s, t in zip(acts_a, acts_b))  # identical spikes everywhere
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="fused"):
        b.train()
    c = copy.deepcopy(b).to(torch.bfloat16)   # the bench's bf16 inference: weights cast once
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(b(x), c(x))         # autocast casts the float32 weights to these values


def test_fuse_needs_eval():
    m = create_model("sdt_2_256_cifar", embed_dim=64, **SMALL)
    with pytest.raises(ValueError, match="eval"):
        fuse(m)


@pytest.mark.parametrize("name,kw", [FAST_MODELS[0], FAST_MODELS[2]], ids=lambda v: v if isinstance(v, str) else "")
def test_optimize_matmul_matches_plain(name, kw):
    a, b, x = _pair(name, kw)
    optimize(b, channels_last=False)
    assert any(isinstance(m, (MatmulConv1d, MatmulConv2d)) for m in b.modules())
    assert list(a.state_dict()) == list(b.state_dict())
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    ya.sum().backward()
    yb.sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)


def test_channels_last_changes_only_summation_order():
    """Channels-last convolutions sum in another order: membranes agree to float rounding, but a
    spiking network amplifies a flipped spike, so only the first layer is compared exactly."""
    a, b, x = _pair(*FAST_MODELS[0])
    optimize(b)
    seen = {id(a): [], id(b): []}
    for m in (a, b):   # the first conv's output, and the first stage's spikes (the second conv's input)
        m.patch_embed.proj_conv.register_forward_hook(lambda _m, i, o, L=seen[id(m)]: L.append(o))
        m.patch_embed.proj_conv1.register_forward_hook(lambda _m, i, o, L=seen[id(m)]: L.append(i[0]))
        m(x)
    (ha, sa), (hb, sb) = seen[id(a)], seen[id(b)]
    torch.testing.assert_close(ha, hb, rtol=1e-5, atol=1e-5)
    assert sa.sum() > 0 and (sa != sb).float().mean() < 1e-3


def test_matmul_conv_equals_conv():
    torch.manual_seed(0)
    c2, c1 = torch.nn.Conv2d(8, 5, 1), torch.nn.Conv1d(8, 5, 1, bias=False)
    x2, x1 = torch.randn(3, 8, 4, 5), torch.randn(3, 8, 7)
    y2, y1 = c2(x2), c1(x1)
    optimize(c2, channels_last=False)
    optimize(c1, channels_last=False)
    assert type(c2) is MatmulConv2d and type(c1) is MatmulConv1d
    torch.testing.assert_close(c2(x2), y2)
    torch.testing.assert_close(c1(x1), y1)


def test_bench_cli_json():
    r = CliRunner().invoke(main, ["bench", "--model", "sdt_2_256_cifar", "--T", "1", "--batch", "2",
                                  "--img-size", "16", "--reps", "1", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output.strip().splitlines()[-1])
    for k in ("train_img_s", "infer_img_s", "peak_mem_mb", "gflops_s", "peak_fp32_gflops_s"):
        assert isinstance(d[k], float) and d[k] > 0, k
    from spikeformers.engine.hardware import bf16_native
    assert d["peak_bf16_gflops_s"] > 0 if bf16_native() else math.isnan(d["peak_bf16_gflops_s"])
    assert 0.0 <= d["infer_spike_rate"] <= 1.0


def test_bench_never_times_emulated_bf16(monkeypatch):
    """Where bf16 is not native (an AVX2-only CPU) a 2048^3 bf16 product takes about a minute: bench
    must not time it, and says so."""
    import spikeformers.analysis.bench as bench
    import spikeformers.engine.hardware as hw
    timed = []
    real = hw.matmul_peak

    def peak(dtype, **kw):
        timed.append(dtype)
        return real(dtype, n=64, reps=1)

    for mod in (bench, hw):
        monkeypatch.setattr(mod, "bf16_native", lambda device="cpu": False)
    monkeypatch.setattr(bench, "matmul_peak", peak)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    r = CliRunner().invoke(main, ["bench", "--model", "sdt_2_256_cifar", "--T", "1", "--batch", "2",
                                  "--img-size", "16", "--reps", "1", "--model-kwargs", '{"embed_dim": 32, "num_heads": 2}'])
    assert r.exit_code == 0, r.output
    assert timed == [torch.float32] and "bf16 not native" in r.output and ", fp32," in r.output
    with pytest.raises(Exception, match="not native"):
        hw.matmul_peak(torch.bfloat16, n=64, reps=1)


def test_spike_rate_of_counts_spiking_neurons_only():
    """One LIF step charges H = x / tau (tau 2, from rest): it fires where x >= 2; the ReLU "neuron"
    after it is not a spiking neuron and is not counted, though its outputs are nonzero."""
    from spikeformers.analysis.bench import spike_rate_of
    from spikeformers.neurons import ReLUNeuron
    x = torch.tensor([[[3.0, 2.5, 1.9, 0.5, -1.0, 4.0, 0.0, 1.0]]])   # [T=1, B=1, 8]: three at >= 2
    net = torch.nn.Sequential(LIF(tau=2.0, v_threshold=1.0), ReLUNeuron())
    assert spike_rate_of(net, x) == 3 / 8
    assert math.isnan(spike_rate_of(torch.nn.Sequential(ReLUNeuron()), x))   # no spiking neuron: no rate


def test_bench_cli_model_kwargs_reach_the_model():
    """--model-kwargs changes the benchmarked model: half the width, fewer FLOPs per step; bad JSON
    is one clear error naming the flag."""
    base = ["bench", "--model", "sdt_2_256_cifar", "--T", "1", "--batch", "2", "--img-size", "16", "--reps", "1",
            "--json", "--precision", "fp32"]
    flops = []
    for extra in ([], ["--model-kwargs", '{"embed_dim": 128}']):
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code == 0, r.output
        flops.append(json.loads(r.output.strip().splitlines()[-1])["train_gflop_per_step"])
    assert flops[1] < 0.5 * flops[0]
    r = CliRunner().invoke(main, base + ["--model-kwargs", "{embed_dim: 128}"])
    assert r.exit_code == 2 and "--model-kwargs" in r.output and "not valid JSON" in r.output
    r = CliRunner().invoke(main, ["train", "--model-kwargs", "[128]", "--max-steps", "1"])
    assert r.exit_code == 2 and "--model-kwargs" in r.output and "expected a JSON object" in r.output


@pytest.mark.slow
def test_compiled_lif_matches_eager():
    lif = LIF()
    x = torch.randn(4, 300)
    f = torch.compile(lambda z: lif(z))
    assert torch.equal(f(x), lif(x))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matmul_conv_is_one_matrix_product(layout):
    """A 1x1 conv-as-matmul on any input layout runs one 2-D product (mm/addmm), never a batched
    one over an expanded weight (which, under bf16 autocast, copied the weight per batch element
    and made qkformer_10_384 inference 14x slower)."""
    from _products import ProductRecorder

    c2, c1 = MatmulConv2d(16, 8, 1), MatmulConv1d(16, 8, 1)
    x2 = torch.randn(4, 16, 5, 6)
    if layout == "channels_last":
        x2 = x2.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x2 = torch.randn(4, 6, 16, 5).permute(0, 2, 3, 1)
    x1 = x2.flatten(2)
    for conv, x in ((c2, x2), (c1, x1)):
        for autocast in (False, True):
            ops = ProductRecorder(lambda name, a, b: name)
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast), ops:
                y = conv(x)
            assert "bmm" not in ops.records and {"mm", "addmm"} & set(ops.records), ops.records
            ref = torch.nn.functional.conv2d(x2, c2.weight, c2.bias) if conv is c2 else \
                torch.nn.functional.conv1d(x1, c1.weight, c1.bias)
            torch.testing.assert_close(y.float(), ref, rtol=2e-2 if autocast else 1e-5,
                                       atol=2e-2 if autocast else 1e-5)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("layout", ["tokens_transposed", "contiguous", "2d"])
def test_token_batchnorm_equals_batchnorm1d(layout, kernel):
    """TokenBatchNorm1d = nn.BatchNorm1d in training (output, input and affine gradients, running
    statistics, batch counter) and in eval, to float32 summation order, on the layouts it reroutes
    ([N, C, L] with stride 1 on C, the view Spikformer's blocks pass) and those it passes through."""
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm1d(12, momentum=0.3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    bn = torch.nn.BatchNorm1d(12, momentum=0.3)
    bn.load_state_dict(ref.state_dict())
    optimize(bn, channels_last=False)
    assert type(bn) is TokenBatchNorm1d
    x = {"tokens_transposed": torch.randn(5, 9, 12).transpose(1, 2) * 3 + 1,
         "contiguous": torch.randn(5, 12, 9) * 3 + 1, "2d": torch.randn(40, 12) * 3 + 1}[layout]
    with contextlib.nullcontext() if kernel else kernels.disabled():
        for gy in (torch.randn(x.shape), torch.randn(x.shape[::-1]).permute(*range(x.dim() - 1, -1, -1))):  # either grad layout
            outs = _bn_step(ref, bn, x, gy)
    if layout == "tokens_transposed":
        assert outs[1][0].stride(1) == 1                       # layout kept: no copy for the next layer
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    ref.eval(), bn.eval()
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2D or 3D"):
        bn(torch.randn(2, 12, 3, 3))


def _bn_step(ref, bn, x, gy):
    for _ in range(2):   # two steps: the running averages compound
        outs = []
        for m in (ref, bn):
            xi = x.detach().clone().requires_grad_()
            y = m(xi)
            y.backward(gy)
            outs.append((y, xi.grad, m.weight.grad.clone(), m.bias.grad.clone()))
            m.zero_grad()
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    return outs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_stops_page_faults():
    """A 64 MiB tensor allocated, filled and freed again and again: with glibc's defaults each one
    is a fresh mmap (one page fault per 4 KiB page); after keep_freed_memory() the heap is reused."""
    probe = ("import resource, torch; from spikeformers.accel import keep_freed_memory; "
             "on = keep_freed_memory(); f = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "for i in range(12):\n"
             "    f0 = f() if i == 4 else f0 if i > 4 else 0; torch.empty(2 ** 24).fill_(1).sum()\n"
             "print(on, f() - f0)")
    faults = {}
    for setting in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           env=dict(os.environ, SPIKEFORMERS_MALLOC=setting))
        on, n = r.stdout.split()
        assert on == ("True" if setting == "1" else "False")
        faults[setting] = int(n)
    assert faults["0"] > 8 * 2 ** 26 // 4096 // 2          # default: the pages fault in every time
    # kept memory: at most a few re-faults of the 64 MiB block over 8 rounds (how many depends on the
    # heap's layout after the imports), against a fault of every page in every round by default
    assert faults["1"] < faults["0"] // 2, faults


class _Counting:
    """Wraps kernels.batchnorm_forward to count the calls (proves which path ran)."""

    def __init__(self, monkeypatch):
        self.calls, real = 0, kernels.batchnorm_forward

        def fwd(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(kernels, "batchnorm_forward", fwd)


@needs_kernel
@pytest.mark.parametrize("variant", ["affine", "momentum_none", "no_affine", "token_view"])
def test_fast_batchnorm2d_equals_batchnorm2d(variant, monkeypatch):
    """The C BatchNorm (float32) = nn.BatchNorm2d: output, input / weight / bias gradients, running
    statistics and batch counter over three training steps, then eval; the kernel really ran."""
    torch.manual_seed(0)
    kw = {"momentum_none": {"momentum": None}, "no_affine": {"affine": False}}.get(variant, {})
    ref = torch.nn.BatchNorm2d(40, **kw)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    bn = FastBatchNorm2d(40, **kw)
    bn.load_state_dict(ref.state_dict())
    count = _Counting(monkeypatch)
    for step in range(3):
        x = torch.randn(6, 40, 5, 7) * (2 + step) + 3
        if variant == "token_view":    # [N, C, L, 1] view of a channels-innermost token matrix
            x = (torch.randn(6, 35, 40) * 2 + 3).transpose(1, 2).unsqueeze(-1)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
        gy = torch.randn(x.shape)      # contiguous: another layout than x's
        outs = []
        for m in (ref, bn):   # the reference on a contiguous copy (PyTorch's NCHW path)
            xi = (x.contiguous() if m is ref else x.clone()).requires_grad_()
            y = m(xi)
            y.backward(gy)
            outs.append([y, xi.grad] + ([m.weight.grad.clone(), m.bias.grad.clone()] if m.affine else []))
            m.zero_grad()
        for a, b in zip(*outs):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
        assert outs[1][0].stride() == x.stride()
    assert count.calls == 3
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    ref.eval(), bn.eval()
    torch.testing.assert_close(bn(x), ref(x))
    assert count.calls == 3            # eval: PyTorch's kernel with the running statistics


@needs_kernel
def test_fast_batchnorm2d_bf16_against_float64():
    """bf16 input (as under autocast): the kernel's output and gradients are within bf16 rounding
    of a float64 BatchNorm on the same values, and no worse than PyTorch's own bf16 path."""
    torch.manual_seed(0)
    x = (torch.randn(8, 96, 6, 6) * 3 + 5).bfloat16().contiguous(memory_format=torch.channels_last)
    gy = torch.randn(x.shape).bfloat16().contiguous(memory_format=torch.channels_last)
    truth = torch.nn.BatchNorm2d(96).double()
    xd = x.double().requires_grad_()
    truth(xd).backward(gy.double())
    err = {}
    for name, m in (("torch", torch.nn.BatchNorm2d(96)), ("ours", FastBatchNorm2d(96))):
        xi = x.clone().requires_grad_()
        y = m(xi)
        assert y.dtype == torch.bfloat16 and m.weight.grad is None
        y.backward(gy)
        err[name] = [(y.double() - truth(xd.detach()).detach()).abs().max().item(),
                     (xi.grad.double() - xd.grad).abs().max().item(),
                     (m.weight.grad.double() - truth.weight.grad).abs().max().item() / truth.weight.grad.abs().max().item(),
                     (m.bias.grad.double() - truth.bias.grad).abs().max().item() / truth.bias.grad.abs().max().item()]
    assert err["ours"][0] <= 2 ** -7 * 4 and err["ours"][1] <= 2 ** -7 * 4, err    # bf16: 8 significant bits
    assert err["ours"][2] < 1e-5 and err["ours"][3] < 1e-5, err                     # float32 sums
    for o, t in zip(err["ours"][:2], err["torch"][:2]):                              # bf16 values
        assert o <= t * 1.01 + 1e-7, err


@needs_kernel
def test_fast_batchnorm2d_falls_back(monkeypatch):
    """Contiguous (not channels-last) input, float64, or kernels switched off: PyTorch's path."""
    count = _Counting(monkeypatch)
    bn, ref = FastBatchNorm2d(8), torch.nn.BatchNorm2d(8)
    x = torch.randn(4, 8, 3, 3)
    torch.testing.assert_close(bn(x), ref(x))
    bn.double()(x.double())
    with kernels.disabled():
        bn.float()(x.contiguous(memory_format=torch.channels_last))
    assert count.calls == 0


@needs_kernel
def test_kernels_share_torch_openmp_threads():
    """Built with OpenMP, the C kernels run in PyTorch's own OpenMP runtime: their thread count
    follows torch.set_num_threads (a second runtime would spin a second pool against it)."""
    f = kernels._load().openmp
    if not f:
        pytest.skip("kernels built without OpenMP (Python splits the work instead)")
    n = torch.get_num_threads()
    try:
        for k in (1, 3):
            torch.set_num_threads(k)
            assert kernels._shares_torch_openmp(kernels._lib._strict)
    finally:
        torch.set_num_threads(n)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(64, 48, 16, 16), (96, 96, 8, 4), (16, 384, 4, 4), (8, 512, 4, 4), (40, 20, 7, 5)],
                         ids=str)
def test_batchnorm_kernels_split_rows_or_channels_alike(dtype, shape):
    """With enough rows the BatchNorm kernels split the rows across threads (block sums added in
    block order; (8, 512, 4, 4) has too few and splits the channels, (40, 20, 7, 5) is too small to
    split): BatchNorm forward, BatchNorm + LIF forward and BatchNorm backward give the same bits on
    1 thread (the serial channel loop) and on 2."""
    if not kernels._load().openmp:
        pytest.skip("kernels built without OpenMP (Python splits the channels)")
    torch.manual_seed(0)
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(shape[1]) + 0.5, torch.randn(shape[1]) * 0.1
    neuron = LIF(v_threshold=0.5)
    n, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, mean, var, rstd = kernels.batchnorm_forward(x, w, b, 1e-5)
            grads = kernels.batchnorm_backward(gy, x, w, mean, rstd)
            s, hs, *stats = kernels.bnlif_forward(x, w, b, 1e-5, neuron, 4, keep_h=True)
            results.append([y, mean, var, rstd, *grads, s, hs, *stats])
    finally:
        torch.set_num_threads(n)
    for one, two in zip(*results):
        assert torch.equal(one, two)
    assert 0.05 < results[0][7].float().mean() < 0.95   # the neuron fires


def _bn_lif_pair(C, token, **lif_kw):
    torch.manual_seed(0)
    make = (lambda: TokenBatchNorm1d(C)) if token else (lambda: FastBatchNorm2d(C))
    a, b = make(), make()
    with torch.no_grad():
        a.weight.uniform_(0.5, 2.0)
        a.bias.uniform_(-0.5, 0.5)
    b.load_state_dict(a.state_dict())
    return a, b, LIF(tau=2.0, v_threshold=0.5, **lif_kw)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("token,lif_kw", [(False, {}), (False, {"v_reset": None, "detach_reset": False}),
                                          (False, {"v_reset": 0.3, "detach_reset": False}), (True, {})],
                         ids=["hard0", "soft", "hard_value", "token_view"])
def test_bn_fire_fused_equals_batchnorm_then_lif(dtype, token, lif_kw, monkeypatch):
    """bn_fire's fused forward (one C kernel, the BatchNorm output never stored) gives the spikes,
    gradients, batch statistics and running averages of the BatchNorm kernel followed by the LIF
    kernel, bit for bit, over two training steps; the fused kernel really ran."""
    T, B, C = 4, 3, 40
    fused_bn, ref_bn, neuron = _bn_lif_pair(C, token, **lif_kw)
    calls = []
    real = kernels.bnlif_forward
    monkeypatch.setattr(kernels, "bnlif_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    for step in range(2):
        if token:   # [T*B, C, L] with channels innermost, as the Spikformer / QKFormer blocks feed BN1d
            y = (torch.randn(T * B, 30, C) * 2 + 0.3).to(dtype).transpose(1, 2)
        else:
            y = (torch.randn(T * B, C, 5, 6) * 2 + 0.3).to(dtype).contiguous(memory_format=torch.channels_last)
        g = torch.randn((T, B) + y.shape[1:]).to(dtype)
        outs = []
        for fused in (True, False):
            bn = fused_bn if fused else ref_bn
            yi = y.clone().requires_grad_()
            if fused:
                s = bn_fire(bn, neuron, yi, T)
            else:
                z = bn(yi)
                s = neuron(z.reshape(T, -1, *z.shape[1:]))
            (s * g).sum().backward()
            outs.append([s, yi.grad, bn.weight.grad.clone(), bn.bias.grad.clone()])
            bn.zero_grad()
        for x_fused, x_ref in zip(*outs):
            assert torch.equal(x_fused, x_ref)
        assert 0.05 < outs[0][0].float().mean() < 0.95
    assert len(calls) == 2
    for k, v in ref_bn.state_dict().items():
        assert torch.equal(fused_bn.state_dict()[k], v), k


@needs_kernel
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_running_stats_update_in_c_equals_batchnorm(momentum):
    """kernels.update_running_stats (one C call) = nn.BatchNorm2d's own update of num_batches_tracked,
    running_mean and running_var (unbiased) over three training steps, momentum or cumulative."""
    torch.manual_seed(0)
    ref, bn = torch.nn.BatchNorm2d(24, momentum=momentum), FastBatchNorm2d(24, momentum=momentum)
    calls = []
    real = kernels.update_running_stats
    with mock.patch.object(kernels, "update_running_stats", lambda *a: calls.append(real(*a)) or calls[-1]):
        for step in range(3):
            x = (torch.randn(8, 24, 5, 5) * (step + 1) + step).contiguous(memory_format=torch.channels_last)
            ref(x), bn(x)
    assert calls == [True] * 3                          # the C update ran, not the fallback
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    assert not torch.equal(bn.running_var, torch.ones(24))   # it moved


@needs_kernel
def test_bn_fire_fp32_against_pytorch():
    """Against PyTorch's own BatchNorm2d and the plain-loop LIF (kernels off): the same spikes up
    to BatchNorm summation order, gradients to float32 rounding."""
    T, B, C = 2, 4, 48
    fused_bn, _, neuron = _bn_lif_pair(C, False)
    ref_bn = torch.nn.BatchNorm2d(C)
    ref_bn.load_state_dict(fused_bn.state_dict())
    y = (torch.randn(T * B, C, 6, 6) * 2).contiguous(memory_format=torch.channels_last)
    g = torch.randn(T, B, C, 6, 6)
    y1, y2 = y.clone().requires_grad_(), y.contiguous().requires_grad_()
    s1 = bn_fire(fused_bn, neuron, y1, T)
    (s1 * g).sum().backward()
    with kernels.disabled():
        z = ref_bn(y2)
        s2 = neuron(z.reshape(T, B, *z.shape[1:]))
        (s2 * g).sum().backward()
    assert (s1 != s2).float().mean() < 1e-3 and 0.05 < s1.mean() < 0.95
    # a flipped spike changes its neuron's reset, so the gradients agree to a loose tolerance only
    torch.testing.assert_close(y1.grad, y2.grad, rtol=0, atol=2e-2 * y2.grad.abs().max().item())
    torch.testing.assert_close(fused_bn.weight.grad, ref_bn.weight.grad, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(fused_bn.running_mean, ref_bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_bn.running_var, ref_bn.running_var, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_bn_fire_falls_back(monkeypatch):
    """A PLIF (learnable leak), eval mode, a plain nn.BatchNorm2d or kernels off: no fused kernel,
    exactly bn then neuron."""
    from spikeformers.neurons import PLIF

    calls = []
    real = kernels.bnlif_forward
    monkeypatch.setattr(kernels, "bnlif_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    T, C = 2, 32
    y = torch.randn(T * 3, C, 4, 4).contiguous(memory_format=torch.channels_last)
    bn, _, neuron = _bn_lif_pair(C, False)
    plain = torch.nn.BatchNorm2d(C)
    plain.load_state_dict(bn.state_dict())
    cases = [(copy.deepcopy(bn), PLIF()), (copy.deepcopy(bn).eval(), neuron), (plain, neuron)]
    for b, n in cases:
        ref = copy.deepcopy(b)
        z = ref(y)
        assert torch.equal(bn_fire(b, n, y, T), n(z.reshape(T, -1, *z.shape[1:])))
    with kernels.disabled():
        b = copy.deepcopy(bn)
        z = copy.deepcopy(bn)(y)
        assert torch.equal(bn_fire(b, neuron, y, T), neuron(z.reshape(T, -1, *z.shape[1:])))
    seen = []   # a forward hook on the neuron (firing-rate probes use them) must still be called
    handle = neuron.register_forward_hook(lambda m, i, o: seen.append(o))
    out = bn_fire(copy.deepcopy(bn), neuron, y, T)
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], out)
    assert calls == []
    bn_fire(copy.deepcopy(bn), neuron, y, T)
    assert len(calls) == 1   # without the hook: fused


@pytest.mark.parametrize("hw,bias", [((2, 2), False), ((1, 1), True), ((1, 2), True), ((2, 1), False), ((3, 3), True)])
def test_small_map_conv_equals_conv(hw, bias):
    """SmallMapConv2d (a 3x3 conv as one matrix product on maps of at most 2x2) = nn.Conv2d:
    output, input / weight / bias gradients; larger maps take the convolution itself."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(24, 16, 3, 1, 1, bias=bias)
    m = copy.deepcopy(ref)
    optimize(m)
    assert type(m) is SmallMapConv2d
    x = torch.randn(5, 24, *hw).contiguous(memory_format=torch.channels_last)
    g = torch.randn(5, 16, *hw)
    outs = []
    for layer in (ref, m):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(g)
        outs.append([y, xi.grad, layer.weight.grad] + ([layer.bias.grad] if bias else []))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert outs[1][2].shape == ref.weight.shape
    # only 3x3 / stride 1 / padding 1 convolutions are swapped
    other = optimize(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, 2, 1), torch.nn.Conv2d(4, 4, 3, 1, 0)))
    assert all(type(c) is torch.nn.Conv2d for c in other)


@needs_kernel
@pytest.mark.parametrize("shape", [(6, 40, 9, 7), (4, 48, 16, 16)], ids=str)
@pytest.mark.parametrize("kind", ["spikes", "ties", "real", "nan"])
def test_fast_maxpool_equals_maxpool(kind, shape):
    """FastMaxPool2d (C kernel) = nn.MaxPool2d(3, 2, 1) in float32: the same outputs and the same
    winner on ties (spikes: most windows hold several 1s or only 0s), hence identical gradients;
    a NaN wins its windows as in PyTorch."""
    from spikeformers.nn.layers import MaxPool

    torch.manual_seed(0)
    x = {"spikes": (torch.rand(shape) > 0.7).float(), "ties": torch.randint(0, 3, shape).float(),
         "real": torch.randn(shape), "nan": torch.randn(shape)}[kind]
    if kind == "nan":
        x[0, 3, 2, 2] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last)
    ref, m = MaxPool(), optimize(torch.nn.Sequential(MaxPool()), channels_last=False)[0]
    assert type(m) is FastMaxPool2d
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ref(x1), m(x2)
    g = torch.randn(y1.shape)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(y1.nan_to_num(-7.0), y2.nan_to_num(-7.0))
    assert y2.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x1.grad, x2.grad)


@needs_kernel
def test_fast_maxpool_bf16_gradient_rounds_once():
    """bf16: the outputs equal PyTorch's; each input gradient is the float64 sum of the output
    gradients routed to it (the same routing as PyTorch's float32 pooling), rounded once."""
    from spikeformers.nn.layers import MaxPool

    torch.manual_seed(1)
    x = (torch.rand(4, 48, 10, 10) > 0.6).bfloat16().contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 48, 5, 5).bfloat16()
    m = optimize(torch.nn.Sequential(MaxPool()), channels_last=False)[0]
    xi = x.clone().requires_grad_()
    y = m(xi)
    y.backward(g)
    assert torch.equal(y, MaxPool()(x))
    xd = x.double().requires_grad_()
    MaxPool()(xd).backward(g.double())          # the routing; sums in float64
    assert torch.equal(xi.grad, xd.grad.bfloat16())


@needs_kernel
def test_fast_maxpool_falls_back():
    """Other layouts, dilation, ceil mode, return_indices: PyTorch's pooling, same results."""
    x = torch.randn(2, 8, 7, 7)
    for pool in (torch.nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1, dilation=2),
                 torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)):
        ref = copy.deepcopy(pool)
        fast = optimize(torch.nn.Sequential(pool), channels_last=False)[0]
        assert type(fast) is FastMaxPool2d
        for xi in (x, x.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(fast(xi), ref(xi), rtol=0, atol=0)
    kept = optimize(torch.nn.Sequential(torch.nn.MaxPool2d(3, 2, 1, return_indices=True)), channels_last=False)[0]
    assert isinstance(kept(x), tuple)


def test_small_map_conv_caches_taps_only_without_grad():
    """Without gradients the tap matrix is reused until the weight changes in place."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 6, 3, 1, 1)
    m = optimize(copy.deepcopy(ref), channels_last=False)
    x = torch.randn(3, 8, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x))
        first = m._tap_cache
        m(x)
        assert m._tap_cache is first                 # reused
        for layer in (m, ref):
            layer.weight.mul_(2.0)                   # as an optimizer step does
        torch.testing.assert_close(m(x), ref(x))     # rebuilt
        assert m._tap_cache is not first
    with torch.inference_mode():
        torch.testing.assert_close(m(x), ref(x))
    y = m(x.requires_grad_())
    assert y.requires_grad and m.weight.grad is None


@needs_kernel
def test_bf16_saved_membrane_stays_on_the_forward_side_of_the_threshold():
    """The kernels compute in float32 and save H (LIF) / U (ternary) in the tensor's dtype for the
    backward, which tests it against the threshold again. In bfloat16 the saved value must agree
    with the forward's decision: H >= vth exactly where a spike was emitted (0.998 would round to
    1.0). Random inputs put thousands of membranes within a rounding step of the threshold."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 200_000, generator=g) * 2.2).to(torch.bfloat16)
    for lif in (LIF(), LIF(v_reset=None), LIF(v_threshold=0.5)):
        s, hs = kernels.lif_forward(lif, x, keep_h=True)
        assert torch.equal(hs.float() >= lif.v_threshold, s.float() == 1.0)
    tern = Ternary()
    o, us = kernels.ternary_forward(tern, (x.float() - 1.1).to(torch.bfloat16), keep_u=True)
    assert torch.equal(us.float().abs() >= tern.v_threshold, o.float() != 0)
    xb = (torch.randn(4 * 64, 32, 6, 6, generator=g) * 1.3).to(torch.bfloat16)
    xb = xb.contiguous(memory_format=torch.channels_last)
    s, hs, *_ = kernels.bnlif_forward(xb, torch.ones(32), torch.full((32,), 0.4), 1e-5, LIF(), T=4)
    assert torch.equal(hs.float() >= 1.0, s.float() == 1.0)


@needs_kernel
def test_bf16_lif_gradient_through_a_membrane_just_below_threshold():
    """Closed form, tau 2, threshold 1, hard reset (detached), sigmoid surrogate (alpha 4):
    x = (1.9921875, 1, 1) gives H0 = x0/2 = 0.99609375, H1 = (H0 + 1)/2 = 0.998046875 (rounds to
    1.0 in bfloat16), H2 = (H1 + 1)/2; nothing fires, so dV/dH = 1 and
    dL/dH2 = sg(H2-1), dL/dH1 = sg(H1-1) + dL/dH2/2, dL/dH0 = sg(H0-1) + dL/dH1/2, dL/dx = dL/dH/2."""
    def sg(z):
        s = 1 / (1 + torch.exp(torch.tensor(-4.0 * z, dtype=torch.float64)))
        return float(4 * s * (1 - s))

    h0 = 1.9921875 / 2
    h1 = (h0 + 1) / 2
    h2 = (h1 + 1) / 2
    d2 = sg(h2 - 1)
    d1 = sg(h1 - 1) + d2 / 2
    d0 = sg(h0 - 1) + d1 / 2
    x = torch.tensor([1.9921875, 1.0, 1.0]).repeat(64, 1).T.contiguous().to(torch.bfloat16).requires_grad_()
    assert kernels.supports(x)
    s = LIF()(x)
    assert not s.any()
    s.float().sum().backward()
    want = torch.tensor([d0 / 2, d1 / 2, d2 / 2], dtype=torch.float64)
    torch.testing.assert_close(x.grad[:, 0].double(), want, rtol=8e-3, atol=0)


def test_cpu_name_reads_model_and_deciding_features(tmp_path):
    """bench's `cpu` field from /proc/cpuinfo text as Linux writes it (x86 and arm64)."""
    from spikeformers.engine.hardware import cpu_name

    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
                   "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n")
    intel = tmp_path / "intel"
    intel.write_text("model name\t: Intel(R) Xeon(R) Platinum 8488C\n"
                     "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    plain = tmp_path / "plain"
    plain.write_text("model name\t: Intel(R) Core(TM) i5\nflags\t\t: fpu sse2 avx2\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16 sve\n")
    assert cpu_name(str(amd)) == "AMD EPYC 9R14 (avx512_bf16)"
    assert cpu_name(str(intel)) == "Intel(R) Xeon(R) Platinum 8488C (amx, avx512_bf16)"
    assert cpu_name(str(plain)) == "Intel(R) Core(TM) i5 (avx2)"
    assert "(" not in cpu_name(str(arm)) and cpu_name(str(arm))          # no x86 features, still a name
    assert cpu_name(str(tmp_path / "missing"))                             # no file: platform's name


@pytest.mark.parametrize("name", ["sdt_2_256_cifar", "qkformer_10_384", "spikformer_2_384_cifar"])
def test_stem_convolves_a_repeated_image_once(name):
    """Direct coding repeats one image over T; in eval mode without gradients the stem's first conv
    runs on B images instead of T*B (layers.seq_once). The logits equal those of the same images
    given as T explicit frames (which take the merged path), with neurons that do fire."""
    from spikeformers.analysis.bench import spike_rate_of

    torch.manual_seed(0)
    model = create_model(name, T=3, img_size=16 if name.startswith("sdt") else 32, num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.constant_(m.weight, 3.0)      # membranes reach the thresholds
            torch.nn.init.constant_(m.bias, 0.3)
    model.eval()
    x = torch.randn(4, 3, model.img_size, model.img_size)
    frames = x.unsqueeze(1).expand(4, 3, *x.shape[1:]).clone()
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    for fused in (False, True):
        net = fuse(optimize(copy.deepcopy(model)).eval()) if fused else model
        with torch.no_grad():
            a, b = net(x), net(frames)
        assert torch.equal(a, b)
    assert seen == [4, 12, 4, 12]                       # once per image, then per frame; fused too
    assert spike_rate_of(model, x) > 0.01


@pytest.mark.parametrize("k,layout", [(2, "channels_last"), (2, "contiguous"), (1, "channels_innermost")])
def test_token_mean_gradient_keeps_the_input_layout(k, layout):
    """layers.token_mean = the mean over the last k axes (values and gradients as autograd's mean),
    with the gradient laid out like the input: a channels-last token map gets a channels-last
    gradient, where flatten + mean gave a contiguous one."""
    from spikeformers.nn.layers import token_mean
    torch.manual_seed(0)
    if k == 2:
        x = torch.randn(12, 6, 3, 5)
        x = (x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x).view(3, 4, 6, 3, 5)
    else:
        x = torch.randn(3, 4, 15, 6).transpose(-1, -2)          # [T, B, C, N], C innermost
    g = torch.randn(3, 4, 6)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = token_mean(a, k), b.flatten(-k).mean(-1)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(a.grad, b.grad)
    assert a.grad.stride() == x.stride()
