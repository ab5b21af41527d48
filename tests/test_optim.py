import math

import pytest
import torch

from spikeformers.engine.optim import Lamb, build_ema, build_optimizer, ema_decay


def test_lamb_single_step_by_hand():
    # x = (3, 4), g = (1, -2), t = 1: m^ = g, v^ = g^2, so r = g / |g| = (1, -1) (eps = 0)
    # u = r + 0.1 x = (1.3, -0.6); trust = ||x|| / ||u|| = 5 / sqrt(2.05); x -= 0.01 * trust * u
    x = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = Lamb([x], lr=0.01, eps=0.0, weight_decay=0.1, max_grad_norm=None)
    x.grad = torch.tensor([1.0, -2.0])
    opt.step()
    trust = 5 / math.sqrt(2.05)
    assert x.tolist() == pytest.approx([3 - 0.01 * trust * 1.3, 4 + 0.01 * trust * 0.6], rel=1e-6)


def test_lamb_second_step_and_no_decay_is_adam():
    b1, b2 = 0.9, 0.999
    g1, g2 = torch.tensor([0.5, 1.0]), torch.tensor([-1.0, 2.0])
    x = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = Lamb([x], lr=0.1, eps=1e-6, weight_decay=0.0, max_grad_norm=None)
    x.grad = g1.clone(); opt.step()
    x.grad = g2.clone(); opt.step()
    m = (1 - b1) * b1 * g1 + (1 - b1) * g2
    v = (1 - b2) * b2 * g1 ** 2 + (1 - b2) * g2 ** 2
    r1 = g1 / (g1.abs() + 1e-6)
    r2 = (m / (1 - b1 ** 2)) / ((v / (1 - b2 ** 2)).sqrt() + 1e-6)
    want = torch.tensor([1.0, -1.0]) - 0.1 * r1 - 0.1 * r2
    assert torch.allclose(x.detach(), want, atol=1e-6)


def test_lamb_global_grad_clipping_matches_manual_clip():
    torch.manual_seed(0)
    a0, b0 = torch.randn(3, 3), torch.randn(3)
    grads = [(torch.randn(3, 3) * 5, torch.randn(3) * 5), (torch.randn(3, 3) * 0.1, torch.randn(3) * 0.1)]

    def run(clip_inside):
        a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
        opt = Lamb([a, b], lr=0.05, weight_decay=0.01, max_grad_norm=1.0 if clip_inside else None)
        for ga, gb in grads:
            n = torch.sqrt((ga ** 2).sum() + (gb ** 2).sum())
            s = 1.0 if clip_inside else min(1.0, 1.0 / float(n))
            a.grad, b.grad = ga * s, gb * s
            opt.step()
        return a.detach(), b.detach()

    for p, q in zip(run(True), run(False)):
        assert torch.allclose(p, q, atol=1e-6)


def test_build_optimizer_groups():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer("lamb", m, lr=1e-3, weight_decay=0.05)
    wds = sorted(g["weight_decay"] for g in opt.param_groups)
    assert wds == [0.0, 0.05] and sum(len(g["params"]) for g in opt.param_groups) == 4
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adagrad9", m, lr=1)


def _net():
    torch.manual_seed(0)
    # no bias before the BatchNorm: its gradient would be rounding noise, which Adam scales up to +-lr
    return torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("name", ["adamw", "sgd", "adam"])
def test_fused_step_matches_torch_per_tensor_loop(name):
    """build_optimizer picks torch's fused step on CPU by default; three steps of it must give the
    update of torch's own per-tensor loop (fused=False) to float rounding."""
    a, b, start = _net(), _net(), _net()
    oa = build_optimizer(name, a, lr=1e-2, weight_decay=0.05)
    ob = build_optimizer(name, b, lr=1e-2, weight_decay=0.05, fused=False)
    assert oa.defaults.get("fused") is True and not ob.defaults.get("fused")
    for _ in range(3):
        x = torch.randn(8, 6)
        for m, o in ((a, oa), (b, ob)):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(p, q) for p, q in zip(a.parameters(), start.parameters()))


def test_build_optimizer_keeps_parameters_given_as_iterators():
    """Groups whose "params" is a generator (torch accepts them) keep every tensor: the fused-step
    check reads the tensors first and must not use the generator up."""
    m = _net()
    opt = build_optimizer("adamw", [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.1}], lr=1e-3)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 2]
    opt = build_optimizer("sgd", m.parameters(), lr=1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


def test_ema_decay_warm_up_closed_form():
    assert ema_decay(0.9998, 0) == pytest.approx(0.1)          # (1 + 0) / (10 + 0)
    assert ema_decay(0.9998, 90) == pytest.approx(0.91)        # 91 / 100
    assert ema_decay(0.9998, 10**6) == 0.9998                   # the warm-up has ended
    assert ema_decay(0.9998, 0, warmup=False) == 0.9998


def test_ema_follows_the_recursion_on_parameters_and_bn_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    ema = build_ema(net, 0.5)
    expect_w = expect_rm = None
    for k in range(1, 7):
        with torch.no_grad():
            net[0].weight.fill_(float(k))
            net[1].running_mean.fill_(10.0 * k)
            net[1].num_batches_tracked.fill_(k)
        ema.update_parameters(net)
        if expect_w is None:      # the first update copies
            expect_w, expect_rm = float(k), 10.0 * k
        else:                     # then e <- d e + (1 - d) w, d = min(0.5, (1 + n) / (10 + n)), n = k - 1
            d = min(0.5, k / (9.0 + k))
            expect_w = d * expect_w + (1 - d) * k
            expect_rm = d * expect_rm + (1 - d) * 10.0 * k
        assert ema.module[0].weight.item() == pytest.approx(expect_w, rel=1e-6)
        assert ema.module[1].running_mean.item() == pytest.approx(expect_rm, rel=1e-6)
        assert ema.module[1].num_batches_tracked.item() == k   # integer buffers are copied
    assert net[0].weight.item() == 6.0                           # the trained model is left alone


def test_ema_rejects_a_decay_outside_0_1():
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        build_ema(torch.nn.Linear(1, 1), 1.5)
