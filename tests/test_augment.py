"""Augmentations checked against independent facts."""


import pytest
import torch

from spikeformers.data import event_augment as ea
from spikeformers.data import randaugment as ra
from spikeformers.data.mixup import Mixup, cutmix_box
from spikeformers.data.transforms import (CenterCrop, RandomCrop, RandomErasing, RandomHorizontalFlip,
                                          RandomResizedCrop, build_image_transform, resize)
from spikeformers.engine.losses import label_smoothing_cross_entropy, soft_target_cross_entropy, tet_loss


def img(c=3, h=8, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, h, w, generator=g)


def test_flip_reverses_columns():
    x = img()
    out = RandomHorizontalFlip(p=1.0)(x)
    for j in range(x.shape[-1]):
        assert torch.equal(out[:, :, j], x[:, :, x.shape[-1] - 1 - j])
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)


def test_random_crop_with_padding_keeps_shape_and_content():
    torch.manual_seed(0)
    x = img(h=32, w=32)
    seen_offsets = set()
    for _ in range(30):
        out = RandomCrop(32, padding=4)(x)
        assert out.shape == x.shape
        # the crop is a shifted window of the zero-padded image: find the shift
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        hits = [(i, j) for i in range(9) for j in range(9) if torch.equal(padded[:, i:i + 32, j:j + 32], out)]
        assert hits
        seen_offsets.add(hits[0])
    assert len(seen_offsets) > 5


def test_random_resized_crop_full_scale_is_plain_resize_and_center_crop():
    x = img(h=16, w=16)
    rrc = RandomResizedCrop(8, scale=(1, 1), ratio=(1, 1), interpolation="bilinear")
    assert torch.allclose(rrc(x), resize(x, (8, 8), "bilinear"))
    # a 2x2 average (bilinear, antialiased, exact factor 2) of a constant block stays constant
    assert torch.allclose(resize(torch.ones(1, 4, 4), (2, 2), "bilinear"), torch.ones(1, 2, 2))
    torch.manual_seed(1)
    for _ in range(20):
        top, left, h, w = RandomResizedCrop(8, scale=(0.2, 0.5))._params if False else \
            RandomResizedCrop(8, scale=(0.2, 0.5)).get_params(100, 100)
        assert 0.2 * 10000 * 0.9 <= h * w <= 0.5 * 10000 * 1.1 and top + h <= 100 and left + w <= 100
    c = CenterCrop(4)(torch.arange(64.).view(1, 8, 8))
    assert c[0, 0].tolist() == [18., 19., 20., 21.]


def test_mixup_labels_sum_to_one_and_equal_lambda():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mix = Mixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.0)
    x0 = x.clone()
    xm, t = mix(x, y)
    lam = mix.last_lam
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert t[0, 0].item() == pytest.approx(lam) and t[0, 3].item() == pytest.approx(1 - lam)
    assert torch.allclose(xm[0], lam * x0[0] + (1 - lam) * x0[3])
    sm = Mixup(5, 0.8, 0.0, label_smoothing=0.1)(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))[1]
    assert torch.allclose(sm.sum(1), torch.ones(2))


def test_cutmix_lambda_is_the_area_not_pasted():
    torch.manual_seed(3)
    for _ in range(10):
        a, b = torch.zeros(1, 1, 16, 20), torch.ones(1, 1, 16, 20)
        x = torch.cat([a, b])
        mix = Mixup(num_classes=2, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
        xm, t = mix(x, torch.tensor([0, 1]))
        pasted = xm[0].mean().item()  # sample 0 was zeros, the pasted box is ones
        assert mix.last_cutmix and mix.last_lam == pytest.approx(1 - pasted)
        assert t[0, 0].item() == pytest.approx(1 - pasted)
    # event frames: the same box at every time step
    ev = torch.stack([torch.zeros(3, 2, 8, 8), torch.ones(3, 2, 8, 8)])
    out, _ = Mixup(2, 0.0, 1.0, label_smoothing=0.0)(ev, torch.tensor([0, 1]))
    assert all(torch.equal(out[0, 0], out[0, t]) for t in range(3))


def test_cutmix_box_size():
    torch.manual_seed(0)
    t, b, l, r = cutmix_box(100, 100, 0.75)  # side ratio sqrt(0.25) = 0.5
    assert b - t <= 50 and r - l <= 50


def test_random_erasing():
    torch.manual_seed(0)
    x = torch.ones(3, 32, 32)
    out = RandomErasing(p=1.0, mode="const")(x)
    frac = (out == 0).all(0).float().mean().item()
    assert 0.02 * 0.5 <= frac <= 1 / 3 * 1.5
    assert torch.equal(RandomErasing(p=0.0)(x), x)


def test_randaugment_ops_facts():
    x = img()
    assert torch.allclose(ra.invert(x), 1 - x)
    q = torch.tensor([[[200 / 255, 10 / 255]]])
    assert ra.posterize(q, 1)[0, 0].tolist() == pytest.approx([128 / 255, 0.0])
    assert ra.solarize(q, 128)[0, 0].tolist() == pytest.approx([55 / 255, 10 / 255])
    assert torch.allclose(ra.brightness(x, 0.0), torch.zeros_like(x))
    assert torch.allclose(ra.color(x, 1.0), x) and torch.allclose(ra.contrast(x, 1.0), x, atol=1e-6)
    ac = ra.auto_contrast(x * 0.5 + 0.2)
    assert torch.allclose(ac.amin((1, 2)), torch.zeros(3)) and torch.allclose(ac.amax((1, 2)), torch.ones(3))
    eq = ra.equalize(x)
    assert eq.shape == x.shape and eq.max() <= 1
    # translating by a whole number of pixels shifts columns, filling with `fill`
    z = torch.arange(12.).view(1, 3, 4)
    sh = ra.translate_x_rel(z, 0.25, fill=-1.0)  # 1 pixel: output(x) = input(x + 1)
    assert torch.allclose(sh[0, 0], torch.tensor([1., 2., 3., -1.]), atol=1e-5)
    # rotating a square by 90 degrees counter-clockwise moves the top-right corner to the top-left
    s = torch.zeros(1, 5, 5)
    s[0, 0, 4] = 1
    r = ra.affine(s, ra.rotate_matrix(90, 5, 5), 0.0, mode="nearest")
    assert r[0, 0, 0] == 1 and r.sum() == 1


def test_randaugment_config_and_call():
    cfg = ra.parse_randaugment("rand-m9-n1-mstd0.4-inc1")
    assert cfg["magnitude"] == 9 and cfg["num_ops"] == 1 and cfg["magnitude_std"] == 0.4 and cfg["increasing"]
    assert ra.parse_randaugment("rand-m9-mstd0.5")["num_ops"] == 2
    with pytest.raises(ValueError, match="start with 'rand'"):
        ra.parse_randaugment("auto-m9")
    torch.manual_seed(0)
    aug = ra.RandAugment.from_config("rand-m9-n3-mstd0.5-inc1", mean=(0.4, 0.4, 0.4))
    x = img()
    outs = [aug(x) for _ in range(10)]
    assert all(o.shape == x.shape and o.min() >= -1e-6 and o.max() <= 1 + 1e-6 for o in outs)
    assert any(not torch.allclose(o, x) for o in outs)
    full = build_image_transform(True, 8, (0.5,) * 3, (0.5,) * 3, randaugment="rand-m9-mstd0.5-inc1",
                                 random_erasing=0.25)
    assert full(img(h=12, w=12)).shape == (3, 8, 8)


def test_event_augmentations():
    x = torch.rand(4, 2, 16, 16)
    assert torch.equal(ea.EventHorizontalFlip(1.0)(x), x.flip(-1))
    torch.manual_seed(0)
    r = ea.EventRoll(3)(x)
    assert any(torch.equal(r, torch.roll(x, (dy, dx), (-2, -1))) for dy in range(-3, 4) for dx in range(-3, 4))
    assert torch.equal(ea.event_shear_x(x, 0.0), x)
    t = ea.event_translate(x, 2, 0)
    assert torch.equal(t[..., 2:], x[..., :-2]) and t[..., :2].abs().sum() == 0
    for _ in range(10):
        out = ea.SNNAugmentWide()(x)
        assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"\[T, C, H, W\]"):
        ea.EventRoll(1)(x[0])


def test_losses():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    ref = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert label_smoothing_cross_entropy(logits, y, 0.1).item() == pytest.approx(ref.item(), rel=1e-5)
    onehot = torch.nn.functional.one_hot(y, 5).float()
    assert soft_target_cross_entropy(logits, onehot).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    lt = torch.randn(3, 6, 5)
    ce = sum(torch.nn.functional.cross_entropy(lt[t], y) for t in range(3)) / 3
    mse = ((lt - 1.0) ** 2).mean()
    assert tet_loss(lt, y, means=1.0, lamb=0.001).item() == pytest.approx((0.999 * ce + 0.001 * mse).item(), rel=1e-5)
    assert tet_loss(lt, y, lamb=0).item() == pytest.approx(ce.item(), rel=1e-5)
