"""Fashion-MNIST IDX reading: real format written by the test, errors for missing/corrupt files."""

import gzip
import struct

import numpy as np
import pytest
import torch

from spikeformers.data import DatasetError, InMemoryLoader, load_fashion_mnist, random_crop_flip
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


def test_loader_normalises_and_covers_each_sample_once():
    imgs = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 2, 2).contiguous()
    labels = torch.arange(10)
    loader = InMemoryLoader(imgs, labels, batch_size=4, mean=0.5, std=0.25, train=True, padding=0, flip=False)
    seen = torch.cat([y for _, y in loader])
    assert sorted(seen.tolist()) == list(range(10)) and len(loader) == 3
    x, y = next(iter(InMemoryLoader(imgs, labels, batch_size=10, mean=0.5, std=0.25)))
    torch.testing.assert_close(x[3, 0, 0, 0], torch.tensor((3 / 255 - 0.5) / 0.25))
