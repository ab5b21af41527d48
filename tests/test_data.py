"""Fashion-MNIST IDX reading: real format written by the test, errors for missing/corrupt files."""

import gzip
import struct

import numpy as np
import pytest
import torch

from spikeformers.data import DatasetError, InMemoryLoader, load_fashion_mnist, random_crop_flip, random_erase
from spikeformers.data import fashion_mnist as fm


def _write_idx(path, magic, dims, data: bytes, compress: bool):
    raw = struct.pack(">i", magic) + struct.pack(">" + "i" * len(dims), *dims) + data
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _fake_dataset(folder, compress=True, n_train=60000, n_test=10000, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(folder / fm.FILES[(split, "images")], 2051, (n, 28, 28), imgs.tobytes(), compress)
        _write_idx(folder / fm.FILES[(split, "labels")], 2049, (n,), labels.tobytes(), compress)
        out[split] = (imgs, labels)
    return out


@pytest.mark.parametrize("compress", [True, False])
def test_reads_idx_files_gz_or_raw(tmp_path, compress):
    ref = _fake_dataset(tmp_path, compress=compress)
    x, y = load_fashion_mnist("test", tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (10000, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (10000,)
    assert np.array_equal(x.numpy(), ref["test"][0]) and np.array_equal(y.numpy(), ref["test"][1])
    x, y = load_fashion_mnist("train", tmp_path)
    assert x.shape == (60000, 28, 28) and np.array_equal(x[123].numpy(), ref["train"][0][123])


def test_env_var_and_subfolder(tmp_path, monkeypatch):
    (tmp_path / "fashion-mnist").mkdir()
    _fake_dataset(tmp_path / "fashion-mnist", compress=False)
    monkeypatch.setenv("SPIKEFORMERS_DATA", str(tmp_path))
    assert fm.find_fashion_mnist() == tmp_path / "fashion-mnist"


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_wrong_magic_and_truncation_are_named(tmp_path):
    _fake_dataset(tmp_path, compress=False)
    p = tmp_path / fm.FILES[("test", "labels")]
    raw = bytearray(p.read_bytes())
    raw[3] = 0x03  # 2049 -> 2051
    p.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="magic number 2051, expected 2049"):
        load_fashion_mnist("test", tmp_path)
    _fake_dataset(tmp_path, compress=False)
    p = tmp_path / fm.FILES[("test", "images")]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        load_fashion_mnist("test", tmp_path)


def test_wrong_count_is_named(tmp_path):
    _fake_dataset(tmp_path, compress=False, n_test=9999)
    with pytest.raises(DatasetError, match=r"expected \(10000, 28, 28\)"):
        load_fashion_mnist("test", tmp_path)


def test_bad_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist("val")


def test_crop_flip_facts():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    # padding 0 + flip: each sample is either itself or its mirrored columns
    y = random_crop_flip(x, padding=0, flip=True, generator=g)
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    # padding 1, no flip: every output is a 4x4 window of the zero-padded 6x6 image
    y = random_crop_flip(x, padding=1, flip=False, generator=g)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        assert any(torch.equal(y[i], xp[i, :, a:a + 4, b:b + 4]) for a in range(3) for b in range(3))


def _erased_box(mask):
    """(rows, cols) of the bounding box of a boolean [H, W] mask, or None if empty."""
    ys, xs = mask.nonzero(as_tuple=True)
    if len(ys) == 0:
        return None
    return (int(ys.min()), int(ys.max()) + 1), (int(xs.min()), int(xs.max()) + 1)


def test_random_erase_is_one_rectangle_of_bounded_area():
    g = torch.Generator().manual_seed(1)
    x = torch.ones(4000, 2, 20, 24)
    y = random_erase(x, 0.5, g)
    erased = y == 0
    assert torch.equal(erased[:, 0], erased[:, 1])            # the same box in every channel
    assert torch.equal(y[~erased], x[~erased])                # nothing else changes
    hit = erased[:, 0].flatten(1).any(1)
    assert abs(hit.float().mean().item() - 0.5) < 0.04        # binomial sd 0.008
    for i in hit.nonzero()[:200, 0].tolist():
        (r0, r1), (c0, c1) = _erased_box(erased[i, 0])
        assert erased[i, 0, r0:r1, c0:c1].all()               # a filled axis-aligned rectangle
        h, w = r1 - r0, c1 - c0
        assert 0 < h < 20 and 0 < w < 24
        # area fraction in [0.02, 1/3] and aspect in [0.3, 1/0.3], up to the rounding of each side
        assert (max(h - 0.5, 0) * max(w - 0.5, 0)) / 480 <= 1 / 3 and (h + 0.5) * (w + 0.5) / 480 >= 0.02
        assert (h - 0.5) / (w + 0.5) <= 1 / 0.3
        assert w == 1 or (h + 0.5) / (w - 0.5) >= 0.3


def test_random_erase_modes_and_errors():
    g = torch.Generator().manual_seed(2)
    x = torch.full((64, 3, 16, 16), 7.0)
    assert torch.equal(random_erase(x, 0.0, g), x)
    y = random_erase(x, 1.0, g, mode="rand")
    changed = y != 7.0
    assert changed.flatten(1).any(1).float().mean() > 0.9
    # "rand": one value per channel inside the box
    i = int(changed.flatten(1).any(1).nonzero()[0, 0])
    for c in range(3):
        vals = y[i, c][changed[i, c]]
        assert torch.all(vals == vals[0])
    y = random_erase(x, 1.0, g, mode="pixel")
    vals = y[y != 7.0]
    assert vals.unique().numel() > 0.9 * vals.numel()         # a fresh normal value per pixel
    assert abs(vals.mean().item()) < 0.1 and abs(vals.std().item() - 1) < 0.1
    with pytest.raises(ValueError, match="const, rand or pixel"):
        random_erase(x, 0.5, g, mode="noise")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        InMemoryLoader(x[:, 0].to(torch.uint8), torch.zeros(64), 8, 0.5, 0.25, erasing=1.5)


def test_loader_erases_only_training_batches():
    imgs = torch.full((64, 8, 8), 255, dtype=torch.uint8)
    labels = torch.zeros(64, dtype=torch.long)
    kw = dict(batch_size=64, mean=0.5, std=0.25, padding=0, flip=False, erasing=1.0)
    x, _ = next(iter(InMemoryLoader(imgs, labels, train=True, **kw)))
    assert (x == 0).flatten(1).any(1).float().mean() > 0.9   # erased to 0 = the mean after normalising
    x, _ = next(iter(InMemoryLoader(imgs, labels, train=False, **kw)))
    assert torch.all(x == 2.0)


def test_loader_normalises_and_covers_each_sample_once():
    imgs = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 2, 2).contiguous()
    labels = torch.arange(10)
    loader = InMemoryLoader(imgs, labels, batch_size=4, mean=0.5, std=0.25, train=True, padding=0, flip=False)
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(10)) and len(loader) == 3
    x, y = next(iter(InMemoryLoader(imgs, labels, batch_size=10, mean=0.5, std=0.25)))
    torch.testing.assert_close(x[3, 0, 0, 0], torch.tensor((3 / 255 - 0.5) / 0.25))
