"""Readers of the real on-disk formats, checked on small files written here in those formats."""

import pickle
import struct

import numpy as np
import pytest
import torch

from spikeformers.data import DatasetNotFoundError, build_dataset, build_datasets
from spikeformers.data.aedat import (read_aedat2_raw, read_aedat31, read_cifar10dvs_aedat,
                                     write_aedat2, write_aedat31)
from spikeformers.data.frames import events_to_frames, frame_boundaries


# ---------------------------------------------------------------------------------------------
# CIFAR pickle batches
# ---------------------------------------------------------------------------------------------
def _cifar_batch(n, labels_key, n_classes, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"x", b"data": data, labels_key: rng.integers(0, n_classes, n).tolist(),
            b"filenames": [b"f"] * n}


def make_cifar10(root, rng, n=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(n, b"labels", 10, rng)
        (d / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}))
    return batches


def test_cifar10_reads_planes_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    batches = make_cifar10(tmp_path, rng)
    ds = build_dataset("cifar10", tmp_path, train=True, normalize=False, crop="none", hflip=0)
    assert len(ds) == 20 and ds.info.num_classes == 10 and ds.classes[0] == "airplane"
    # sample 5 = first row of data_batch_2; pixel (r=2, c=7) of the green plane sits at 1024 + 2*32 + 7
    row = batches["data_batch_2"][b"data"][0]
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x[1, 2, 7].item() == pytest.approx(row[1024 + 2 * 32 + 7] / 255.0)
    assert x[2, 31, 31].item() == pytest.approx(row[3071] / 255.0)
    assert y == batches["data_batch_2"][b"labels"][0]
    test = build_dataset("cifar10", tmp_path, train=False)
    assert len(test) == 4


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 6), ("test", 3)):
        b = _cifar_batch(n, b"fine_labels", 100, rng)
        b[b"coarse_labels"] = [99] * n  # would be out of range for 20 superclasses; must be ignored
        (d / name).write_bytes(pickle.dumps(b))
        if name == "train":
            train_labels = b[b"fine_labels"]
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                                          b"coarse_label_names": [b"s"] * 20}))
    tr, te, info = build_datasets("cifar100", tmp_path)
    assert (len(tr), len(te), info.num_classes) == (6, 3, 100)
    assert [tr[i][1] for i in range(6)] == train_labels


def test_missing_dataset_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build_dataset("cifar10", tmp_path, train=True)
    with pytest.raises(DatasetNotFoundError, match=r"train/<class>"):
        build_dataset("imagefolder", tmp_path, train=True)
    with pytest.raises(DatasetNotFoundError, match="trials_to_train.txt"):
        build_dataset("dvs128-gesture", tmp_path, train=True)
    with pytest.raises(DatasetNotFoundError, match="cifar10_airplane_0.aedat"):
        build_dataset("cifar10-dvs", tmp_path, train=True)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("mnist-9000", tmp_path, train=True)


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------
def test_imagefolder_decodes_png_exactly_and_jpeg_closely(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    arrays = {}
    for split in ("train", "val"):
        for cls in ("zebra", "ant"):  # sorted -> ant = 0, zebra = 1
            (tmp_path / split / cls).mkdir(parents=True)
            for k in range(2):
                a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / split / cls / f"{k}.png")
                arrays[(split, cls, k)] = a
    smooth = np.tile(np.linspace(0, 255, 30, dtype=np.uint8)[None, :, None], (20, 1, 3))
    Image.fromarray(smooth).save(tmp_path / "train" / "ant" / "z.JPEG", quality=95)
    ds = build_dataset("imagefolder", tmp_path, train=True, transform=lambda x: x)
    assert ds.classes == ["ant", "zebra"] and len(ds) == 5
    x, y = ds[0]  # train/ant/0.png
    assert y == 0 and x.shape == (3, 20, 30)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(arrays[("train", "ant", 0)]).permute(2, 0, 1))
    xj, yj = ds[2]  # train/ant/z.JPEG
    assert yj == 0 and (xj * 255 - torch.from_numpy(smooth).permute(2, 0, 1).float()).abs().mean() < 3
    val = build_dataset("imagefolder", tmp_path, train=False, img_size=16)
    assert len(val) == 4 and val[3][1] == 1 and val[0][0].shape == (3, 16, 16)
    tr = build_dataset("imagefolder", tmp_path, train=True, img_size=16, randaugment="rand-m9-mstd0.5-inc1",
                       random_erasing=0.25)
    assert tr[1][0].shape == (3, 16, 16)


# ---------------------------------------------------------------------------------------------
# AEDAT readers
# ---------------------------------------------------------------------------------------------
def test_aedat31_bit_layout_and_overflow(tmp_path):
    # hand-built file: one polarity event x=100, y=5, ON, t = 7 + (3 << 31)
    data = (100 << 17) | (5 << 2) | (1 << 1) | 1
    invalid = (1 << 17) | (1 << 2)  # valid bit 0 -> dropped
    hdr = struct.pack("<hhiiiiii", 1, 1, 8, 4, 3, 2, 2, 1)
    body = struct.pack("<II", data, 7) + struct.pack("<II", invalid, 9)
    f = tmp_path / "a.aedat"
    f.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n" + hdr + body)
    ev = read_aedat31(f)
    assert ev["x"].tolist() == [100] and ev["y"].tolist() == [5] and ev["p"].tolist() == [1]
    assert ev["t"].tolist() == [7 + (3 << 31)]


def test_aedat31_roundtrip_many_packets(tmp_path):
    rng = np.random.default_rng(3)
    n = 5000
    t = np.sort(rng.integers(0, 2**31 + 10**6, n)).astype(np.int64)
    x, y, p = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    write_aedat31(tmp_path / "r.aedat", t, x, y, p, packet_size=700)
    ev = read_aedat31(tmp_path / "r.aedat")
    for k, v in (("t", t), ("x", x), ("y", y), ("p", p)):
        assert np.array_equal(ev[k], v), k


def test_aedat2_cifar10dvs_orientation(tmp_path):
    # raw x = 10, raw y = 20, polarity bit 0 (-> ON after 1 - bit)
    addr = [(20 << 8) | (10 << 1) | 0, (3 << 8) | (4 << 1) | 1]
    write_aedat2(tmp_path / "c.aedat", addr, [5, 6])
    a, t = read_aedat2_raw(tmp_path / "c.aedat")
    assert a.tolist() == addr and t.tolist() == [5, 6]
    sj = read_cifar10dvs_aedat(tmp_path / "c.aedat")
    assert sj["x"].tolist() == [127 - 20, 127 - 3] and sj["y"].tolist() == [127 - 10, 127 - 4]
    assert sj["p"].tolist() == [1, 0]
    dm = read_cifar10dvs_aedat(tmp_path / "c.aedat", orientation="dat2mat")
    assert dm["x"].tolist() == [127 - 10, 127 - 4] and dm["y"].tolist() == [20, 3]


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------
def test_frames_split_by_number_and_time():
    t = np.array([0, 1, 2, 3, 4, 5, 6, 100])
    ev = {"t": t, "x": np.arange(8) % 4, "y": np.zeros(8, int), "p": np.array([0, 1] * 4)}
    f = events_to_frames(ev, T=3, H=2, W=4, split_by="number")
    assert f.shape == (3, 2, 2, 4) and f.sum() == 8
    assert f.sum(axis=(1, 2, 3)).tolist() == [2, 2, 4]  # 8 // 3 = 2, remainder in the last frame
    assert f[0, 0, 0, 0] == 1 and f[0, 1, 0, 1] == 1  # event 0 (OFF at x=0), event 1 (ON at x=1)
    g = events_to_frames(ev, T=2, H=2, W=4, split_by="time")  # dt = 50: [0,50) has 7 events
    assert g.sum(axis=(1, 2, 3)).tolist() == [7, 1]
    assert frame_boundaries(t, 4, "time").tolist() == [0, 7, 7, 7, 8]
    with pytest.raises(ValueError, match="outside"):
        events_to_frames({**ev, "x": ev["x"] + 4}, 2, 2, 4)


# ---------------------------------------------------------------------------------------------
# DVS128 Gesture and CIFAR10-DVS end to end
# ---------------------------------------------------------------------------------------------
def make_gesture(root, rng):
    d = root / "DvsGesture"
    d.mkdir()
    truth = {}
    for user, split in (("user01_fluorescent", "train"), ("user02_lab", "train"), ("user24_led", "test")):
        t = np.sort(rng.integers(1000, 60000, 3000))
        x, y, p = rng.integers(0, 128, 3000), rng.integers(0, 128, 3000), rng.integers(0, 2, 3000)
        write_aedat31(d / f"{user}.aedat", t, x, y, p, packet_size=512)
        rows = [(3, 2000, 20000), (11, 25000, 50000)]
        (d / f"{user}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows))
        truth[user] = (t, x, y, p, rows)
    (d / "trials_to_train.txt").write_text("user01_fluorescent.aedat\nuser02_lab.aedat\n\n")
    (d / "trials_to_test.txt").write_text("user24_led.aedat\n")
    return truth


def test_dvs128_gesture_samples_and_cache(tmp_path):
    rng = np.random.default_rng(4)
    truth = make_gesture(tmp_path, rng)
    tr, te, info = build_datasets("dvs128-gesture", tmp_path, T=4)
    assert (len(tr), len(te), info.num_classes, info.T) == (4, 2, 11, 4)
    x, y = te[1]
    t, xs, ys, ps, rows = truth["user24_led"]
    sel = (t >= 25000) & (t < 50000)
    assert y == 10 and x.shape == (4, 2, 128, 128)
    assert x.sum().item() == sel.sum()
    # the event count of the ON channel at one pixel equals the raw events there
    px, py = xs[sel][0], ys[sel][0]
    want = np.sum(sel & (xs == px) & (ys == py) & (ps == 1))
    assert x[:, 1, py, px].sum().item() == want
    cache = tmp_path / "DvsGesture" / "frames_cache" / "dvs128-gesture_T4_number" / "test"
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["user24_led_0.npz", "user24_led_1.npz"]
    # the cache is used: deleting the source recording does not matter any more
    (tmp_path / "DvsGesture" / "user24_led.aedat").write_bytes(b"garbage")
    te2 = build_dataset("dvs128-gesture", tmp_path, train=False, T=4)
    assert torch.equal(te2[1][0], x)
    # a different T or split mode builds a separate cache
    te3 = build_dataset("dvs128-gesture", tmp_path, train=True, T=2, split_by="time", img_size=64, in_chans=3)
    assert te3[0][0].shape == (2, 3, 64, 64) and te3.info.in_chans == 3
    assert (tmp_path / "DvsGesture" / "frames_cache" / "dvs128-gesture_T2_time").is_dir()


def test_cifar10dvs_split_90_10_per_class(tmp_path):
    from spikeformers.data.cifar10_dvs import CIFAR10DVS_CLASSES

    rng = np.random.default_rng(5)
    root = tmp_path / "CIFAR10-DVS"
    for c in CIFAR10DVS_CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(11):  # ceil(0.9 * 11) = 10 train, 1 test
            n = 50 + k
            addr = (rng.integers(0, 128, n) << 8) | (rng.integers(0, 128, n) << 1) | rng.integers(0, 2, n)
            write_aedat2(root / c / f"cifar10_{c}_{k}.aedat", addr, np.arange(n) * 10)
    tr, te, info = build_datasets("cifar10-dvs", tmp_path, T=5, event_aug="flip+wide")
    assert (len(tr), len(te), info.num_classes) == (100, 10, 10)
    # string order: 0, 1, 10, 2, ..., 9 -> the test file of each class is cifar10_<c>_9
    assert [p.name for p in te.files[:1]] == ["cifar10_airplane_9.npz"]
    x, y = te[3]
    assert y == 3 and x.shape == (5, 2, 128, 128) and x.sum().item() == 50 + 9
    assert tr[0][0].shape == (5, 2, 128, 128)
