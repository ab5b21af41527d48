"""The Triton neuron kernels run by Triton's CPU interpreter, checked against our C kernels and the
plain PyTorch loop on the same input. Run by ``tests/test_triton_interpreter.py`` in a subprocess
with ``TRITON_INTERPRET=1`` (the variable must be set before Triton is imported, which another test
module in the same process may already have done). Coefficients whose reciprocal is exact
(tau = 2, 4) are used where outputs must be bit-identical: the Triton kernels multiply by 1/tau as
PyTorch's CUDA division does, the CPU loop divides."""

import importlib
import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_triton_interpreter.py with TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from spikeformers import kernels  # noqa: E402
from spikeformers.nn.neurons import IF, LIF, Ternary, _lif_loop  # noqa: E402


@pytest.fixture(scope="module")
def tk():
    return importlib.import_module("spikeformers.kernels.gpu")


CASES = [dict(tau=2.0), dict(tau=4.0, v_threshold=0.5), dict(tau=2.0, v_reset=None),
         dict(tau=2.0, decay_input=False), dict(tau=4.0, decay_input=False, v_reset=0.25),
         dict(tau=2.0, v_reset=-0.25), dict(tau=2.0, detach_reset=False), "if"]


def _x(shape=(5, 3000), scale=1.5, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _tri_lif(tk, neuron, x, keep_h=True):
    ck, rk, tau, c, r = kernels.lif_kinds(neuron)
    v0 = 0.0 if neuron.v_reset is None else neuron.v_reset
    return tk.lif_forward(ck, rk, tau, c, r, neuron.v_threshold, v0, x, keep_h)


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_lif_forward_bit_identical_to_the_loop(tk, kw):
    neuron = IF() if kw == "if" else LIF(**kw)
    x = _x()
    s, h = _tri_lif(tk, neuron, x)
    s_ref, h_ref = _lif_loop(neuron, x, keep_h=True)
    assert torch.equal(s, s_ref) and torch.equal(h, h_ref)
    assert 0.01 < s.mean().item() < 0.99


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_lif_backward_matches_the_c_kernel(tk, kw):
    neuron = IF() if kw == "if" else LIF(**kw)
    _, h = _tri_lif(tk, neuron, _x())
    g = _x(seed=1)
    ck, rk, tau, c, r = kernels.lif_kinds(neuron)
    a, b = (1.0 - 1.0 / tau, 1.0 / tau) if ck in (0, 1) else ((1.0 - 1.0 / tau, 1.0) if ck in (2, 3) else (1.0, 1.0))
    sk, alpha = kernels._surrogate_args(neuron.surrogate)
    got = tk.lif_backward(rk, neuron.detach_reset, a, b, neuron.v_threshold, r, sk, alpha, g, h)
    want = kernels.lif_backward(neuron, g, h, a, b)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ternary_forward_and_backward_match_the_c_kernel(tk):
    neuron = Ternary()
    x = _x(scale=0.6)
    o, u = tk.ternary_forward(neuron.decay, neuron.v_threshold, x, True)
    o_ref, u_ref = kernels.ternary_forward(neuron, x, True)
    assert torch.equal(o, o_ref) and torch.equal(u, u_ref)
    assert set(o.unique().tolist()) == {-1.0, 0.0, 1.0}
    g = _x(seed=2)
    sk, alpha = kernels._surrogate_args(neuron.surrogate)
    for detach in (False, True):
        got = tk.ternary_backward(detach, neuron.decay, neuron.v_threshold, sk, alpha, g, u)
        want = kernels.ternary_backward(Ternary(detach_reset=detach), g, u)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _bf16_input(seed=1):
    # many pre-spike potentials within half a bfloat16 step under the threshold 1.0
    return (torch.rand(4, 100000, generator=torch.Generator().manual_seed(seed)) * 1.2 + 0.4).bfloat16()


def test_bf16_saved_potential_stays_on_the_forward_side(tk):
    neuron = LIF(tau=2.0)
    x = _bf16_input()
    s, h = _tri_lif(tk, neuron, x)
    s32, h32 = _tri_lif(tk, neuron, x.float())
    assert torch.equal(s.float(), s32)                   # same decisions as float32 (state in float32)
    assert torch.equal(h.float() >= 1.0, s.bool())       # the backward's reset mask agrees with the spikes
    nearest = h32.bfloat16()                             # Tensor.to: round to nearest even
    crossed = (nearest.float() >= 1.0) != s32.bool()
    assert crossed.sum() > 100                           # the input does exercise the correction
    moved = h != nearest
    assert torch.equal(moved, crossed)                   # changed exactly where rounding crossed ...
    step = h.view(torch.int16).int() - nearest.view(torch.int16).int()
    assert set(step[moved].abs().unique().tolist()) == {1}   # ... and by one bfloat16 step
    assert torch.equal(h, kernels.lif_forward(neuron, x, True)[1])   # the C kernel stores the same


def test_bf16_ternary_saved_potential_magnitude_side(tk):
    neuron = Ternary(decay=0.25, v_threshold=0.5)
    x = ((torch.rand(4, 100000, generator=torch.Generator().manual_seed(3)) - 0.5) * 1.6).bfloat16()
    o, u = tk.ternary_forward(neuron.decay, neuron.v_threshold, x, True)
    assert torch.equal(u.float().abs() >= 0.5, o != 0)
    o32, u32 = tk.ternary_forward(neuron.decay, neuron.v_threshold, x.float(), True)
    assert torch.equal(o.float(), o32) and ((u != u32.bfloat16()).sum() > 0)
    assert torch.equal(u, kernels.ternary_forward(neuron, x, True)[1])
