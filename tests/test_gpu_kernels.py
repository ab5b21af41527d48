"""The Triton neuron kernels on CUDA against the plain PyTorch loop on the same GPU (skipped
without a CUDA device and Triton: CI has neither; run on a lent GPU machine)."""

import pytest
import torch

from spikeformers import kernels
from spikeformers.nn.neurons import IF, LIF, Ternary, ATan, Sigmoid, _lif_loop

cuda = pytest.mark.skipif(not torch.cuda.is_available() or not kernels.triton_available(),
                          reason="needs a CUDA device and Triton")
pytestmark = cuda

LIF_CASES = [
    dict(tau=2.0), dict(tau=3.0), dict(tau=1.5, v_threshold=0.5), dict(tau=2.0, v_reset=None),
    dict(tau=2.0, decay_input=False), dict(tau=3.0, decay_input=False, v_reset=0.3),
    dict(tau=4.0, v_reset=-0.2, v_threshold=0.5), dict(tau=2.0, detach_reset=False), dict(tau=2.0, surrogate=ATan()),
    dict(tau=2.0, v_reset=None, detach_reset=False, surrogate=Sigmoid(2.0)),
]


def _x(shape=(6, 8, 33, 17), scale=1.5, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, device="cuda", generator=g) * scale


@pytest.mark.parametrize("kw", LIF_CASES + ["if"], ids=str)
def test_lif_forward_bit_identical_to_loop(kw):
    neuron = IF() if kw == "if" else LIF(**kw)
    x = _x()
    assert kernels.supports(x)
    s, h = kernels.lif_forward(neuron, x, keep_h=True)
    s_ref, h_ref = _lif_loop(neuron, x, keep_h=True)
    assert torch.equal(s, s_ref)
    assert torch.equal(h, h_ref)
    assert 0.01 < s.mean().item() < 0.99  # the case exercises both branches


@pytest.mark.parametrize("kw", LIF_CASES + ["if"], ids=str)
def test_lif_backward_matches_loop(kw):
    neuron = IF() if kw == "if" else LIF(**kw)
    x = _x()
    w = _x(seed=1)
    grads = []
    for fused in (True, False):
        xi = x.clone().requires_grad_(True)
        ctx = kernels.disabled() if not fused else torch.enable_grad()
        with ctx:
            out = neuron(xi)
        (out * w).sum().backward()
        grads.append((out.detach(), xi.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5 * grads[1][1].abs().max().item())


@pytest.mark.parametrize("detach", [False, True])
def test_ternary_forward_backward_match_loop(detach):
    neuron = Ternary(detach_reset=detach)
    x = _x(scale=0.6)
    w = _x(seed=2)
    res = []
    for fused in (True, False):
        xi = x.clone().requires_grad_(True)
        with (kernels.disabled() if not fused else torch.enable_grad()):
            out = neuron(xi)
        (out * w).sum().backward()
        res.append((out.detach(), xi.grad))
    assert set(res[0][0].unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(res[0][0], res[1][0])
    torch.testing.assert_close(res[0][1], res[1][1], rtol=1e-5, atol=1e-5 * res[1][1].abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_runs_with_float32_state(dtype):
    neuron = LIF(tau=2.0)
    x = _x().to(dtype)
    s, _ = kernels.lif_forward(neuron, x, keep_h=False)
    assert s.dtype == dtype
    ref, _ = kernels.lif_forward(neuron, x.float(), keep_h=False)
    assert torch.equal(s.float(), ref)  # same input values, state kept in float32 in both


def test_channels_last_and_noncontiguous():
    neuron = LIF(tau=2.0)
    x = _x((4, 8, 16, 12, 12)).flatten(0, 1).contiguous(memory_format=torch.channels_last).view(4, 8, 16, 12, 12)
    s, _ = kernels.lif_forward(neuron, x, keep_h=False)
    assert torch.equal(s, _lif_loop(neuron, x)[0])
    y = _x((8, 4, 5)).transpose(0, 1)  # time not outermost in memory: the loop runs
    assert not kernels.supports(y)
    assert torch.equal(neuron(y), _lif_loop(neuron, y)[0])


def test_model_training_step_on_gpu_matches_loop(monkeypatch):
    # cuDNN's default backward algorithms sum in a non-deterministic order; pin them so that the
    # comparison sees only the neuron kernels' rounding
    from spikeformers import create_model
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    model = create_model("a2os2a_fmnist", T=2).cuda()
    x = torch.randn(8, 1, 28, 28, device="cuda")
    outs = []
    for fused in (True, False):
        model.zero_grad()
        with (kernels.disabled() if not fused else torch.enable_grad()):
            y = model(x)
            y.square().sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    # surrogate gradients summed over many spikes: compared relative to the largest gradient of the
    # model, not of each tensor (a parameter whose gradient is ~1e-7 rounding noise in both paths
    # would otherwise be held to a tolerance of ~1e-10)
    scale = max(g.abs().max().item() for g in outs[1][1])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * scale)
