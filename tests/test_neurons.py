"""Unit tests for spikeformers.neurons.

Every expected value below comes from an independent source: numbers computed by hand (written as
literals, with the arithmetic in the comments), tiny reference loops over plain Python floats that
implement the SpikingJelly / Ternary-Spike equations directly, closed-form surrogate derivatives
written with ``math``, or finite differences of those plain-Python references. Nothing is compared
against a value produced by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from spikeformers.nn import neurons as N
from spikeformers.neurons import (
    ATan, IF, LIF, PLIF, ReLUNeuron, Sigmoid, StraightThrough, Ternary, Triangle, spike,
    surrogate_from_config,
)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Plain-Python references (floats only, no torch)
# ----------------------------------------------------------------------------------------------
def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def g_sigmoid(x: float, alpha: float = 4.0) -> float:
    s = _sig(alpha * x)
    return alpha * s * (1.0 - s)


def g_atan(x: float, alpha: float = 2.0) -> float:
    return (alpha / 2.0) / (1.0 + (math.pi * alpha * x / 2.0) ** 2)


def g_straight(x: float, width: float = 0.5) -> float:
    return 1.0 if abs(x) <= width else 0.0


def g_triangle(x: float, width: float = 1.0) -> float:
    return max(0.0, 1.0 - abs(x) / width) / width


def heaviside(x: float) -> float:
    return 1.0 if x >= 0.0 else 0.0


def ref_lif(xs, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, leak=True,
            fire=heaviside, frozen_resets=None):
    """SpikingJelly LIF / IF, one neuron, written straight from the equations.

    Returns (spikes, H, reset_spikes). ``leak=False`` gives IF (H = V + X). ``fire`` maps
    H - v_threshold to the spike (Heaviside, or a smooth primitive). ``frozen_resets`` replaces the
    spike used in the reset by fixed constants (what ``detach_reset`` means for the gradient)."""
    v = 0.0 if v_reset is None else v_reset
    vr = 0.0 if v_reset is None else v_reset
    spikes, hs, resets = [], [], []
    for t, x in enumerate(xs):
        if not leak:
            h = v + x
        elif decay_input:
            h = v + (x - (v - vr)) / tau
        else:
            h = v - (v - vr) / tau + x
        s = fire(h - v_threshold)
        s_r = s if frozen_resets is None else frozen_resets[t]
        if v_reset is None:
            v = h - s_r * v_threshold
        else:
            v = h * (1.0 - s_r) + v_reset * s_r
        spikes.append(s)
        hs.append(h)
        resets.append(s)
    return spikes, hs, resets


def ref_ternary(xs, decay=0.25, v_threshold=0.5):
    u, o = 0.0, 0.0
    us, os_ = [], []
    for x in xs:
        u = decay * u * (1.0 - abs(o)) + x
        o = 1.0 if u >= v_threshold else (-1.0 if u <= -v_threshold else 0.0)
        us.append(u)
        os_.append(o)
    return os_, us


def seq(values, dtype=F64, requires_grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=requires_grad)


def as_list(t: torch.Tensor):
    return [float(v) for v in t.detach().to(F64).reshape(-1)]


DTYPES = [torch.float32, torch.float64, torch.bfloat16]


# ----------------------------------------------------------------------------------------------
# 1. Hand-computed spike / membrane sequences
# ----------------------------------------------------------------------------------------------
# Each case: constructor kwargs, input x[T], expected spikes, expected membrane H[T] (before reset).
# All inputs are dyadic so that every intermediate is exact in float32, float64 and bfloat16.
LIF_CASES = {
    # tau 2, decay_input, th 1, hard reset to 0.
    # H0 = 2.5/2 = 1.25 -> S, V=0 | H1 = 0.4/2 = 0.2 | H2 = .2 + (1.2-.2)/2 = .7 | H3 = .7 + 1.3/2
    "hard": (dict(), [2.5, 0.375, 1.25, 2.0], [1, 0, 0, 1], [1.25, 0.1875, 0.71875, 1.359375]),
    # hard vs soft differ: hard  H = 1.5 (S, V=0), 0.5, 0.5 + (1.375 - .5)/2 = .9375 -> [1,0,0]
    "hard_vs_soft_hard": (dict(), [3.0, 1.0, 1.375], [1, 0, 0], [1.5, 0.5, 0.9375]),
    # soft: H = 1.5 (S, V=.5), .5 + (1-.5)/2 = .75, .75 + (1.375-.75)/2 = 1.0625 -> [1,0,1]
    "hard_vs_soft_soft": (dict(v_reset=None), [3.0, 1.0, 1.375], [1, 0, 1], [1.5, 0.75, 1.0625]),
    # exact threshold: H0 = .5, H1 = .5 + (1.5 - .5)/2 = 1.0 == th fires; then V=0, H2 = .75
    "exact_threshold": (dict(), [1.0, 1.5, 1.5], [0, 1, 0], [0.5, 1.0, 0.75]),
    # threshold 0.5: H = .5 (== th, fires, V=0), .25, .25, .25 + (1-.25)/2 = .625 -> fires
    "threshold_half": (dict(v_threshold=0.5), [1.0, 0.5, 0.25, 1.0], [1, 0, 0, 1],
                       [0.5, 0.25, 0.25, 0.625]),
    # same input with th 1: nothing fires (membrane identical until the first spike)
    "threshold_one": (dict(), [1.0, 0.5, 0.25, 1.0], [0, 0, 0, 0],
                      [0.5, 0.5, 0.375, 0.6875]),
    # v_reset 0.5 (V starts at 0.5): H = .5 + (1.25 - 0)/2 = 1.125 (S, V=.5), .5 + (0-0)/2 = .5,
    # 1.125 (S), .5 + (2 - 0)/2 = 1.5 (S)
    "v_reset_half": (dict(v_reset=0.5), [1.25, 0.0, 1.25, 2.0], [1, 0, 1, 1],
                     [1.125, 0.5, 1.125, 1.5]),
    # the same input with v_reset 0: .625, .3125, .78125, .78125 + (2 - .78125)/2 = 1.390625
    "v_reset_zero": (dict(), [1.25, 0.0, 1.25, 2.0], [0, 0, 0, 1],
                     [0.625, 0.3125, 0.78125, 1.390625]),
    # negative v_reset -0.5: H0 = -.5 + (2 - 0)/2 = .5; fixed point H = v_reset + x = .5
    "v_reset_negative": (dict(v_reset=-0.5), [2.0, 1.0, 1.0], [0, 0, 0], [0.5, 0.5, 0.5]),
    # decay_input=False: H = V/2 + X: .625, .3125+.625 = .9375, .46875+.625 = 1.09375 (S), .625
    "no_decay_input": (dict(decay_input=False), [0.625] * 4, [0, 0, 1, 0],
                       [0.625, 0.9375, 1.09375, 0.625]),
    # decay_input=True on the same input never fires: .3125, .46875, .546875, .5859375
    "decay_input_same_x": (dict(), [0.625] * 4, [0, 0, 0, 0],
                           [0.3125, 0.46875, 0.546875, 0.5859375]),
    # decay_input=False, v_reset .5: H = V - (V - .5)/2 + X: .75, .75 - .125 + .25 = .875,
    # .875 - .1875 + .5 = 1.1875 (S)
    "no_decay_input_v_reset": (dict(decay_input=False, v_reset=0.5), [0.25, 0.25, 0.5], [0, 0, 1],
                               [0.75, 0.875, 1.1875]),
    # decay_input=False, soft reset: 1.5 (S, V=.5), .25 + .75 = 1.0 (== th, S)
    "no_decay_input_soft": (dict(decay_input=False, v_reset=None), [1.5, 0.75], [1, 1], [1.5, 1.0]),
    # tau 4: H = V + (X - V)/4 with X = 2: .5, .5 + 1.5/4 = .875, .875 + 1.125/4 = 1.15625 (S)
    "tau4": (dict(tau=4.0), [2.0, 2.0, 2.0], [0, 0, 1], [0.5, 0.875, 1.15625]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(LIF_CASES))
def test_lif_hand_computed_spikes(name, dtype):
    kwargs, x, spikes, _ = LIF_CASES[name]
    out = LIF(**kwargs)(seq(x, dtype))
    assert out.dtype == dtype
    assert as_list(out) == spikes


@pytest.mark.parametrize("name", sorted(LIF_CASES))
def test_lif_hand_computed_membrane_via_surrogate_gradient(name):
    """The spike s[t] depends on x[t] only through H[t], so ds[t]/dx[t] = g(H[t] - th) * dH/dX with
    dH/dX = 1/tau (decay_input) or 1: this reads the hand-computed membrane back out."""
    kwargs, x, _, hs = LIF_CASES[name]
    lif = LIF(**kwargs)
    jac = torch.autograd.functional.jacobian(lif, seq(x))
    th = kwargs.get("v_threshold", 1.0)
    dh_dx = 1.0 / kwargs.get("tau", 2.0) if kwargs.get("decay_input", True) else 1.0
    for t, h in enumerate(hs):
        assert float(jac[t, t]) == pytest.approx(g_sigmoid(h - th) * dh_dx, rel=1e-12, abs=1e-15)
    # causality: s[t] never depends on a later input
    assert torch.all(jac.triu(1) == 0)


@pytest.mark.parametrize("name", sorted(LIF_CASES))
def test_hand_cases_agree_with_reference_loop(name):
    """Cross-check of the literals themselves against the plain-Python reference."""
    kwargs, x, spikes, hs = LIF_CASES[name]
    ref_s, ref_h, _ = ref_lif(x, **kwargs)
    assert ref_s == spikes and ref_h == hs


@pytest.mark.parametrize("kwargs", [
    dict(), dict(v_reset=None), dict(decay_input=False), dict(decay_input=False, v_reset=None),
    dict(v_reset=0.3, v_threshold=0.8), dict(tau=3.0, v_threshold=1.5, decay_input=False),
    dict(v_reset=-0.2, decay_input=False, tau=1.5),
], ids=str)
def test_lif_matches_reference_loop_on_random_input(kwargs):
    g = torch.Generator().manual_seed(1234)
    x = torch.rand(12, 40, generator=g, dtype=F64) * 3.0 - 0.5
    out = LIF(**kwargs)(x)
    expected = [ref_lif(as_list(x[:, i]), **kwargs)[0] for i in range(x.shape[1])]
    assert out.T.tolist() == expected
    assert 0 < out.sum() < out.numel()  # the case exercises both outcomes


def test_if_hand_computed():
    # IF, H = V + X. hard: .75, 1.25 (S, V=0), .5, .75 -> [0,1,0,0]
    # soft:                 .75, 1.25 (S, V=.25), .75, 1.0 (== th, S) -> [0,1,0,1]
    x = [0.75, 0.5, 0.5, 0.25]
    assert as_list(IF()(seq(x))) == [0, 1, 0, 0]
    assert as_list(IF(v_reset=None)(seq(x))) == [0, 1, 0, 1]
    # threshold 2, v_reset 0.5: 1.25, 2.5 (S, V=.5), 1.5, 2.0 (== th, S)
    assert as_list(IF(v_threshold=2.0, v_reset=0.5)(seq([0.75, 1.25, 1.0, 0.5]))) == [0, 1, 0, 1]
    # IF never leaks: .125 per step sums to exactly 1.0 == th at the 8th step, then restarts
    assert as_list(IF()(seq([0.125] * 10))) == [0] * 7 + [1] + [0, 0]
    ref = ref_lif([0.75, 0.5, 0.5, 0.25], leak=False, v_reset=None)[0]
    assert ref == [0, 1, 0, 1]


def test_if_membrane_via_gradient():
    # ds[t]/dx[t] = g(H[t] - 1) * 1 with H = .75, 1.25, .5, .75 (hard reset)
    jac = torch.autograd.functional.jacobian(IF(), seq([0.75, 0.5, 0.5, 0.25]))
    for t, h in enumerate([0.75, 1.25, 0.5, 0.75]):
        assert float(jac[t, t]) == pytest.approx(g_sigmoid(h - 1.0), rel=1e-12)


def test_plif_init_tau_two_is_w_zero_and_equals_lif_tau_two():
    p = PLIF()
    assert p.w.item() == 0.0 and p.tau == 2.0
    assert [k for k, _ in p.named_parameters()] == ["w"]
    x = [2.5, 0.375, 1.25, 2.0]  # LIF_CASES["hard"]
    assert as_list(p(seq(x))) == [1, 0, 0, 1]
    assert as_list(PLIF(v_reset=None)(seq([3.0, 1.0, 1.375]))) == [1, 0, 1]
    assert as_list(PLIF(decay_input=False)(seq([0.625] * 4))) == [0, 0, 1, 0]


def test_plif_init_tau_sets_w():
    # w0 = -log(init_tau - 1): tau 4 -> w = -log 3, sigmoid(w) = 1/(1 + 3) = 1/4
    p = PLIF(init_tau=4.0)
    assert p.w.item() == pytest.approx(-math.log(3.0), rel=1e-6)
    assert p.tau == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_plif_with_other_w(dtype):
    p = PLIF()
    with torch.no_grad():
        p.w.fill_(-math.log(3.0))  # 1/tau = 1/4: same hand numbers as LIF_CASES["tau4"]
    assert p.tau == pytest.approx(4.0, rel=1e-6)
    assert as_list(p(seq([2.0, 2.0, 2.0], dtype))) == [0, 0, 1]
    with torch.no_grad():
        p.w.fill_(math.log(3.0))  # 1/tau = 3/4: H = .75, .75 + (1.25 - .75) * .75 = 1.125 (S)
    assert p.tau == pytest.approx(4.0 / 3.0, rel=1e-6)
    assert as_list(p(seq([1.0, 1.25], dtype))) == [0, 1]
    assert as_list(PLIF()(seq([1.0, 1.25], dtype))) == [0, 0]  # w = 0: .5, .875


def test_plif_matches_reference_loop_for_random_w():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(10, 30, generator=g, dtype=F64) * 3.0 - 0.5
    for w in (-1.3, 0.4, 2.0):
        for kwargs in (dict(), dict(v_reset=None), dict(decay_input=False, v_reset=0.25)):
            p = PLIF(**kwargs).double()
            with torch.no_grad():
                p.w.fill_(w)
            tau = 1.0 + math.exp(-w)  # 1 / sigmoid(w)
            expected = [ref_lif(as_list(x[:, i]), tau=tau, **kwargs)[0] for i in range(x.shape[1])]
            assert p(x).T.tolist() == expected


TERNARY_X = [0.375, 0.5, 0.25, -0.75, -0.5, 0.5, 0.125, -0.5, -0.25]
# u[t] = .25 u[t-1] (1 - |o[t-1]|) + x[t]:
#  .375 (0) | .09375 + .5 = .59375 (+1) | reset: .25 (0) | .0625 - .75 = -.6875 (-1)
#  reset: -.5 (== -th, -1) | reset: .5 (== th, +1) | reset: .125 (0) | .03125 - .5 = -.46875 (0)
#  -.1171875 - .25 = -.3671875 (0)
TERNARY_O = [0, 1, 0, -1, -1, 1, 0, 0, 0]
TERNARY_U = [0.375, 0.59375, 0.25, -0.6875, -0.5, 0.5, 0.125, -0.46875, -0.3671875]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ternary_hand_computed(dtype):
    assert ref_ternary(TERNARY_X) == (TERNARY_O, TERNARY_U)
    out = Ternary()(seq(TERNARY_X, dtype))
    assert out.dtype == dtype
    assert as_list(out) == TERNARY_O
    # without the reset, u[5] = .25 * (-.671875) + .5 = .33 would not fire: the reset is visible
    assert as_list(Ternary(decay=0.0)(seq(TERNARY_X, dtype))) == [0, 1, 0, -1, -1, 1, 0, -1, 0]


def test_ternary_membrane_via_gradient():
    # Sigmoid surrogate: do[t]/dx[t] = g(|u[t]| - th) (u[t] depends on x[t] with slope 1)
    jac = torch.autograd.functional.jacobian(Ternary(surrogate="sigmoid"), seq(TERNARY_X))
    for t, u in enumerate(TERNARY_U):
        assert float(jac[t, t]) == pytest.approx(g_sigmoid(abs(u) - 0.5), rel=1e-12)
    assert torch.all(jac.triu(1) == 0)


def test_ternary_other_parameters_match_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 50, generator=g, dtype=F64)
    for decay, th in ((0.25, 0.5), (0.5, 1.0), (1.0, 0.3), (0.0, 0.7)):
        out = Ternary(decay=decay, v_threshold=th)(x)
        expected = [ref_ternary(as_list(x[:, i]), decay, th)[0] for i in range(x.shape[1])]
        assert out.T.tolist() == expected
        assert set(out.unique().tolist()) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relu_neuron(dtype):
    x = seq([[-1.5, 0.0, 2.25], [3.0, -0.5, 0.125]], dtype)
    out = ReLUNeuron()(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.to(F64).tolist() == [[0.0, 0.0, 2.25], [3.0, 0.0, 0.125]]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_relu_neuron_gradient_across_memory_layouts(dtype):
    """dK = dOut where K > 0, else 0, whatever the layouts of the input and the incoming gradient
    (the backward re-lays a mismatched gradient out before the mask)."""
    torch.manual_seed(0)
    base = torch.randn(2, 3, 4, 5, 6).to(dtype)
    x = base.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3).requires_grad_()  # channels last
    g = torch.randn(2, 3, 4, 5, 6).to(dtype)                                              # contiguous
    out = ReLUNeuron()(x)
    assert out.stride() == x.stride()
    out.backward(g)
    expected = torch.where(base > 0, g, torch.zeros((), dtype=dtype))
    assert torch.equal(x.grad, expected)
    assert 0 < (x.grad != 0).sum() < x.numel()


NEURON_FACTORIES = {
    "LIF": LIF, "LIF_soft": lambda: LIF(v_reset=None), "LIF_vreset": lambda: LIF(v_reset=0.5),
    "IF": IF, "PLIF": PLIF, "PLIF_w": lambda: _plif_with_w(0.8), "Ternary": Ternary,
    "ReLUNeuron": ReLUNeuron,
}


def _plif_with_w(w):
    p = PLIF()
    with torch.no_grad():
        p.w.fill_(w)
    return p


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 2, 3, 4, 4)], ids=str)
@pytest.mark.parametrize("name", sorted(NEURON_FACTORIES))
def test_shape_and_dtype_preserved(name, shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 1.5).to(dtype)
    out = NEURON_FACTORIES[name]()(x)
    assert out.shape == x.shape
    assert out.dtype == dtype


@pytest.mark.parametrize("name", sorted(NEURON_FACTORIES))
def test_no_state_between_calls(name):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 5, generator=g) * 1.5
    other = torch.randn(3, 4, 5, generator=g) * 3.0
    neuron = NEURON_FACTORIES[name]()
    first = neuron(x)
    neuron(other)
    second = neuron(x)
    assert torch.equal(first, second)
    # and a batch element does not depend on the others (no state leaks across the batch)
    assert torch.equal(neuron(x[:, :1]), first[:, :1])


def test_one_dim_input_equals_column_input():
    """x[T] is processed like x[T, 1] (same spikes, same dtype) for every neuron."""
    g = torch.Generator().manual_seed(5)
    for dtype in DTYPES:
        x = (torch.randn(8, generator=g) * 1.5).to(dtype)
        for name, make in NEURON_FACTORIES.items():
            neuron = make()
            out = neuron(x)
            assert out.dtype == dtype, (name, dtype)
            assert torch.equal(out, neuron(x[:, None])[:, 0]), (name, dtype)


# ----------------------------------------------------------------------------------------------
# 2. Surrogates: closed-form derivatives, exact Heaviside forward, spike backward
# ----------------------------------------------------------------------------------------------
GRID = [-3.0, -1.5, -1.0, -0.75, -0.5, -0.3, -0.1, -1e-3, 0.0, 1e-3, 0.1, 0.3, 0.5, 0.75, 1.0,
        1.5, 3.0]

SURROGATE_CASES = [
    (Sigmoid(), lambda x: g_sigmoid(x, 4.0)),
    (Sigmoid(alpha=2.5), lambda x: g_sigmoid(x, 2.5)),
    (ATan(), lambda x: g_atan(x, 2.0)),
    (ATan(alpha=5.0), lambda x: g_atan(x, 5.0)),
    (StraightThrough(), lambda x: g_straight(x, 0.5)),
    (StraightThrough(width=1.0), lambda x: g_straight(x, 1.0)),
    (Triangle(), lambda x: g_triangle(x, 1.0)),
    (Triangle(width=0.5), lambda x: g_triangle(x, 0.5)),
]
SURR_IDS = [repr(s) for s, _ in SURROGATE_CASES]


def test_surrogate_closed_form_spot_values():
    # independent spot values worked out by hand
    assert g_sigmoid(0.0, 4.0) == 1.0  # 4 * 1/2 * 1/2
    assert g_atan(0.0, 2.0) == 1.0  # (2/2) / 1
    assert g_atan(1.0 / math.pi, 2.0) == 0.5  # 1 / (1 + 1)
    assert g_triangle(0.5, 1.0) == 0.5 and g_triangle(0.25, 0.5) == 1.0
    assert Sigmoid().derivative(seq([0.0])).item() == 1.0
    assert ATan().derivative(seq([0.0, 1.0 / math.pi])).tolist() == pytest.approx([1.0, 0.5])
    assert Triangle(0.5).derivative(seq([0.25, -0.5, 0.6])).tolist() == [1.0, 0.0, 0.0]
    assert StraightThrough().derivative(seq([0.5, -0.5, 0.5000001])).tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("surrogate,closed", SURROGATE_CASES, ids=SURR_IDS)
def test_surrogate_derivative_closed_form(surrogate, closed):
    got = surrogate.derivative(seq(GRID)).tolist()
    assert got == pytest.approx([closed(x) for x in GRID], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("surrogate,closed", SURROGATE_CASES, ids=SURR_IDS)
@pytest.mark.parametrize("via", ["call", "spike"])
def test_spike_forward_heaviside_and_backward_surrogate(surrogate, closed, via):
    x = seq(GRID, requires_grad=True)
    y = surrogate(x) if via == "call" else spike(x, surrogate)
    assert y.dtype == F64
    assert y.tolist() == [heaviside(v) for v in GRID]
    grad_out = [0.5 + 0.25 * i for i in range(len(GRID))]
    y.backward(seq(grad_out))
    expected = [go * closed(v) for go, v in zip(grad_out, GRID)]
    assert x.grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_heaviside_edges(dtype):
    x = torch.tensor([-1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0], dtype=dtype)
    y = spike(x, Sigmoid())
    assert y.dtype == dtype
    assert y.to(F64).tolist() == [0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("surrogate,closed", SURROGATE_CASES, ids=SURR_IDS)
def test_neuron_backward_uses_surrogate_at_h_minus_threshold(surrogate, closed):
    # single step: H = x / tau (tau 2), so ds/dx = g(x/2 - th) / 2 for each th
    xs = [-1.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
    for th in (1.0, 0.75):
        x = seq([xs], requires_grad=True)
        s = LIF(surrogate=surrogate, v_threshold=th)(x)
        assert as_list(s) == [heaviside(v / 2 - th) for v in xs]
        s.sum().backward()
        expected = [closed(v / 2 - th) / 2 for v in xs]
        assert as_list(x.grad) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_surrogate_from_config():
    assert surrogate_from_config("sigmoid") == Sigmoid(4.0)
    assert surrogate_from_config({"name": "atan", "alpha": 3}) == ATan(3.0)
    assert surrogate_from_config({"name": "triangle", "width": 0.5}) == Triangle(0.5)
    st = StraightThrough(0.25)
    assert surrogate_from_config(st) is st
    assert LIF(surrogate="straight_through").surrogate == StraightThrough(0.5)
    with pytest.raises(ValueError, match="unknown surrogate"):
        surrogate_from_config("gaussian")


# ----------------------------------------------------------------------------------------------
# 3. gradcheck (float64): primitives and smooth neurons
# ----------------------------------------------------------------------------------------------
# points away from the kinks of StraightThrough (|x| = width) and Triangle (|x| = width)
SMOOTH_GRID = [-2.0, -0.9, -0.6, -0.4, -0.2, -0.05, 0.05, 0.2, 0.4, 0.6, 0.9, 2.0]


@pytest.mark.parametrize("surrogate,closed", SURROGATE_CASES, ids=SURR_IDS)
def test_primitive_gradcheck_and_derivative(surrogate, closed):
    grid = [v for v in SMOOTH_GRID
            if abs(abs(v) - getattr(surrogate, "width", -1.0)) > 1e-3]
    x = seq(grid, requires_grad=True)
    assert torch.autograd.gradcheck(surrogate.primitive, (x,))
    (grad,) = torch.autograd.grad(surrogate.primitive(x).sum(), x)
    assert grad.tolist() == pytest.approx([closed(v) for v in grid], rel=1e-12, abs=1e-15)
    assert torch.allclose(grad, surrogate.derivative(x.detach()), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("surrogate", [s for s, _ in SURROGATE_CASES], ids=SURR_IDS)
def test_primitive_finite_difference(surrogate):
    # numerical derivative of the primitive (plain central differences) vs the closed form
    h = 1e-6
    for v in SMOOTH_GRID:
        if abs(abs(v) - getattr(surrogate, "width", -1.0)) < 1e-3:
            continue
        fd = (surrogate.primitive(seq([v + h])) - surrogate.primitive(seq([v - h]))).item() / (2 * h)
        assert fd == pytest.approx(surrogate.derivative(seq([v])).item(), abs=1e-7)


def _grad_input(seed=11, shape=(4, 3)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=F64) * 3.0 - 0.5).requires_grad_()


@pytest.mark.parametrize("kwargs", [
    dict(), dict(v_reset=None), dict(decay_input=False), dict(decay_input=False, v_reset=None),
    dict(v_reset=0.3, v_threshold=0.8, tau=3.0), dict(surrogate="atan"),
    dict(surrogate={"name": "triangle", "width": 4.0}),
], ids=str)
def test_smooth_lif_gradcheck(kwargs):
    lif = LIF(smooth=True, detach_reset=False, **kwargs)
    assert torch.autograd.gradcheck(lif, (_grad_input(),))
    if "surrogate" not in kwargs:  # Sigmoid's primitive is smooth to every order
        assert torch.autograd.gradgradcheck(lif, (_grad_input(shape=(3, 2)),))


@pytest.mark.parametrize("kwargs", [dict(), dict(v_reset=None), dict(v_reset=0.4, v_threshold=1.5)],
                         ids=str)
def test_smooth_if_gradcheck(kwargs):
    assert torch.autograd.gradcheck(IF(smooth=True, detach_reset=False, **kwargs), (_grad_input(),))


def _numeric_jacobian(f, xs, h=1e-6):
    """Central differences of a plain-Python function of a list of floats."""
    cols = []
    for j in range(len(xs)):
        up = list(xs)
        dn = list(xs)
        up[j] += h
        dn[j] -= h
        cols.append([(a - b) / (2 * h) for a, b in zip(f(up), f(dn))])
    return [[cols[j][i] for j in range(len(xs))] for i in range(len(xs))]


@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("kwargs", [
    dict(), dict(v_reset=None), dict(decay_input=False), dict(v_reset=0.25, v_threshold=0.75),
], ids=str)
def test_smooth_lif_jacobian_matches_plain_python(kwargs, detach_reset):
    """A gradcheck that also covers detach_reset=True: the detached reset spikes are constants for
    the gradient, so the reference freezes them at their forward values before differencing."""
    xs = [2.2, 0.4, 1.7, 0.9, 2.6]
    prim = lambda z: _sig(4.0 * z)  # Sigmoid(4).primitive
    _, _, resets = ref_lif(xs, fire=prim, **kwargs)
    frozen = resets if detach_reset else None
    expected = _numeric_jacobian(lambda v: ref_lif(v, fire=prim, frozen_resets=frozen, **kwargs)[0], xs)
    lif = LIF(smooth=True, detach_reset=detach_reset, **kwargs)
    out = lif(seq(xs))
    assert as_list(out) == pytest.approx(ref_lif(xs, fire=prim, **kwargs)[0], rel=1e-12)
    jac = torch.autograd.functional.jacobian(lif, seq(xs))
    assert jac.tolist() == [pytest.approx(row, abs=1e-7) for row in expected]


def test_detach_reset_breaks_gradcheck_of_hard_reset():
    # sanity check of the previous test's premise: with the reset detached, the analytic gradient
    # is *not* the true derivative of the (smooth) forward
    lif = LIF(smooth=True, detach_reset=True)
    assert not torch.autograd.gradcheck(lif, (_grad_input(),), raise_exception=False)


@pytest.mark.parametrize("kwargs", [dict(), dict(v_reset=None), dict(decay_input=False, v_reset=0.2)],
                         ids=str)
@pytest.mark.parametrize("w0", [0.0, -0.7, 1.1])
def test_smooth_plif_gradcheck_including_w(kwargs, w0):
    plif = PLIF(smooth=True, detach_reset=False, **kwargs)
    x = _grad_input()
    w = torch.tensor(w0, dtype=F64, requires_grad=True)
    f = lambda x_, w_: functional_call(plif, {"w": w_}, (x_,))
    assert torch.autograd.gradcheck(f, (x, w))


def test_plif_weight_gradient_hand_computed():
    # one step, H = x * k with k = sigmoid(w): ds/dw = g(H - 1) * x * k (1 - k)
    for w0, xv in ((0.0, 1.5), (0.0, 2.25), (0.9, 1.2), (-0.4, 3.0)):
        p = PLIF().double()
        with torch.no_grad():
            p.w.fill_(w0)
        s = p(seq([[xv]]))
        s.sum().backward()
        k = _sig(w0)
        assert s.item() == heaviside(xv * k - 1.0)
        assert float(p.w.grad) == pytest.approx(g_sigmoid(xv * k - 1.0) * xv * k * (1 - k), rel=1e-12)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", None], ids=str)
@pytest.mark.parametrize("decay", [0.25, 0.6])
def test_smooth_ternary_gradcheck(surrogate, decay):
    # inputs whose potentials stay away from 0 (sign) and from the kinks of StraightThrough's
    # clamp (|u| = 0, 0.5 +- 0.5, i.e. |u| in {0, 1}) and of |o| (|u| = 0.5 for the clamp)
    x = seq([[0.8, -0.3, 1.6], [0.2, -0.9, 0.25], [-1.4, 0.7, 0.15], [0.35, 0.3, -2.0]],
            requires_grad=True)
    t = Ternary(decay=decay, surrogate=surrogate, smooth=True)
    assert torch.autograd.gradcheck(t, (x,))


# ----------------------------------------------------------------------------------------------
# 4. detach_reset changes the gradient and nothing else (hand-derived chain rule)
# ----------------------------------------------------------------------------------------------
def test_detach_reset_same_forward_different_gradient():
    g = torch.Generator().manual_seed(21)
    x = torch.rand(6, 64, generator=g, dtype=F64) * 3.0
    for cls, kw in ((LIF, dict()), (LIF, dict(v_reset=None)), (IF, dict()), (PLIF, dict()),
                    (Ternary, dict())):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        sa, sb = cls(detach_reset=True, **kw)(xa), cls(detach_reset=False, **kw)(xb)
        assert torch.equal(sa, sb)
        assert sa[:-1].abs().sum() > 0  # spikes before the last step
        sa.sum().backward()
        sb.sum().backward()
        assert not torch.allclose(xa.grad, xb.grad)
        # the last step's input only reaches s[T-1], never a reset: same gradient there
        assert torch.equal(xa.grad[-1], xb.grad[-1])


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_two_step_lif_gradient_by_hand(soft, detach_reset):
    """tau 2, decay_input, th 1, Sigmoid(4), L = S0 + 3 * S1, x = [2.5, 1.0].

    H0 = x0/2 = 1.25 -> S0 = 1.   hard: V0 = H0 (1 - S0)      soft: V0 = H0 - S0
    H1 = V0 + (x1 - V0)/2 = V0/2 + x1/2;   S1 = Heaviside(H1 - 1)
    dS0/dx0 = g(H0 - 1) / 2                 dH1/dx1 = 1/2,  dH1/dV0 = 1/2
    dV0/dx0: hard (1 - S0)/2 - H0 * dS0/dx0 * [not detached]
             soft 1/2        - 1  * dS0/dx0 * [not detached]
    dL/dx0 = dS0/dx0 + 3 g(H1 - 1) * 1/2 * dV0/dx0;   dL/dx1 = 3 g(H1 - 1) / 2
    """
    x0, x1 = 2.5, 1.0
    h0 = x0 / 2
    s0 = 1.0
    ds0_dx0 = g_sigmoid(h0 - 1) / 2
    keep = 0.0 if detach_reset else 1.0
    if soft:
        v0 = h0 - s0
        dv0_dx0 = 0.5 - 1.0 * ds0_dx0 * keep
    else:
        v0 = h0 * (1 - s0)
        dv0_dx0 = (1 - s0) / 2 - h0 * ds0_dx0 * keep
    h1 = v0 + (x1 - v0) / 2
    s1 = heaviside(h1 - 1)
    expected = [ds0_dx0 + 3 * g_sigmoid(h1 - 1) * 0.5 * dv0_dx0, 3 * g_sigmoid(h1 - 1) / 2]

    x = seq([x0, x1], requires_grad=True)
    s = LIF(v_reset=None if soft else 0.0, detach_reset=detach_reset)(x)
    assert as_list(s) == [s0, s1] == [1.0, 0.0]
    (s * seq([1.0, 3.0])).sum().backward()
    assert as_list(x.grad) == pytest.approx(expected, rel=1e-12)
    if detach_reset and not soft:
        assert x.grad[0].item() == pytest.approx(ds0_dx0, rel=1e-12)  # the reset cut V0 off x0


def test_three_step_lif_gradient_by_hand_v_reset():
    """tau 2, decay_input, th 1, hard reset to v_reset = 0.5, Sigmoid(4), L = S2, x = [1.25, .5, 1].

    V = .5 at start.  H0 = .5 + (1.25 - 0)/2 = 1.125 -> S0 = 1, V0 = (1 - S0) H0 + .5 S0 = .5
    H1 = V0 + (x1 - (V0 - .5))/2 = .5 + .25 = .75 -> S1 = 0, V1 = .75
    H2 = V1 + (x2 - (V1 - .5))/2 = .75 + (1 - .25)/2 = 1.125 -> S2 = 1
    dH2/dV1 = 1/2, dV1/dH1 = 1 - S1 - (H1 - .5) g(H1 - 1) [undetached], dH1/dx1 = 1/2,
    dH1/dV0 = 1/2, dV0/dH0 = (1 - S0) - (H0 - .5) g(H0 - 1) [undetached], dH0/dx0 = 1/2
    """
    x = [1.25, 0.5, 1.0]
    h0, h1, h2 = 1.125, 0.75, 1.125
    g2 = g_sigmoid(h2 - 1)
    for detach in (True, False):
        k = 0.0 if detach else 1.0
        dv1_dh1 = 1.0 - 0.0 - k * (h1 - 0.5) * g_sigmoid(h1 - 1)
        dv0_dh0 = 0.0 - k * (h0 - 0.5) * g_sigmoid(h0 - 1)
        expected = [g2 * 0.5 * dv1_dh1 * 0.5 * dv0_dh0 * 0.5, g2 * 0.5 * dv1_dh1 * 0.5, g2 * 0.5]
        xt = seq(x, requires_grad=True)
        s = LIF(v_reset=0.5, detach_reset=detach)(xt)
        assert as_list(s) == [1, 0, 1]
        s[2].backward()
        assert as_list(xt.grad) == pytest.approx(expected, rel=1e-12, abs=1e-300)
        if detach:
            assert xt.grad[0].item() == 0.0


def test_detach_reset_irrelevant_when_surrogate_is_zero_at_reset():
    # Triangle(0.25): g = 0 when |H - th| > .25, so the undetached reset path carries nothing
    x = seq([[0.5, 3.0], [1.0, 1.0], [1.5, 0.5]])
    grads = []
    for detach in (True, False):
        xr = x.clone().requires_grad_()
        LIF(detach_reset=detach, surrogate=Triangle(0.25))(xr).sum().backward()
        grads.append(xr.grad)
    assert torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------
# 5. Ternary backward (default StraightThrough(0.5), threshold 0.5)
# ----------------------------------------------------------------------------------------------
def test_ternary_straight_through_backward_single_step():
    us = [-2.0, -1.5, -1.001, -1.0, -0.75, -0.5, -0.49, -0.25, -1e-6, 0.0, 1e-6, 0.25, 0.49, 0.5,
          0.75, 1.0, 1.001, 1.5, 2.0]
    x = seq([us], requires_grad=True)  # T = 1, so u = x
    o = Ternary()(x)
    assert as_list(o) == [1.0 if u >= 0.5 else (-1.0 if u <= -0.5 else 0.0) for u in us]
    o.sum().backward()
    assert as_list(x.grad) == [1.0 if abs(u) <= 1.0 else 0.0 for u in us]


def test_ternary_backward_matches_clamp_reference():
    # the Ternary-Spike code's straight-through estimator: (out - clamp(u,-1,1)).detach() + clamp
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 200, generator=g, dtype=F64) * 1.2
    x[0, :3] = torch.tensor([0.0, 1.0, -1.0], dtype=F64)
    xr = x.clone().requires_grad_()
    Ternary()(xr).backward(torch.ones_like(x))
    ref = x.clone().requires_grad_()
    torch.clamp(ref, -1.0, 1.0).backward(torch.ones_like(x))
    assert torch.equal(xr.grad, ref.grad)


# ----------------------------------------------------------------------------------------------
# 6. Bad input
# ----------------------------------------------------------------------------------------------
ALL_NEURONS = [LIF, IF, PLIF, Ternary, ReLUNeuron]


@pytest.mark.parametrize("cls", ALL_NEURONS, ids=lambda c: c.__name__)
def test_bad_input(cls):
    neuron = cls()
    with pytest.raises(TypeError, match="tensor"):
        neuron([[0.5, 1.0]])
    with pytest.raises(TypeError, match="floating"):
        neuron(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="floating"):
        neuron(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="T >= 1"):
        neuron(torch.tensor(1.0))
    with pytest.raises(ValueError, match="T >= 1"):
        neuron(torch.zeros(0, 3))


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.0, -2.0])
def test_lif_tau_must_exceed_one(tau):
    with pytest.raises(ValueError, match="tau"):
        LIF(tau=tau)
    with pytest.raises(ValueError, match="init_tau"):
        PLIF(init_tau=tau)


def test_ternary_bad_parameters():
    for decay in (-0.1, 1.5):
        with pytest.raises(ValueError, match="decay"):
            Ternary(decay=decay)
    for th in (0.0, -0.5):
        with pytest.raises(ValueError, match="v_threshold"):
            Ternary(v_threshold=th)


def test_public_api():
    for name in N.__all__:
        assert hasattr(N, name)
