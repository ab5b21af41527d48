"""DVS128 Gesture (Amir et al., CVPR 2017), from its original release (``DvsGesture.tar.gz``).

On disk::

    DATA_DIR/DvsGesture/            (or DATA_DIR itself)
        user01_fluorescent.aedat            AEDAT 3.1 recordings, 29 users x lighting conditions
        user01_fluorescent_labels.csv       class,startTime_usec,endTime_usec  (class 1..11)
        ...
        trials_to_train.txt                 one .aedat file name per line (official train split)
        trials_to_test.txt                  (official test split)

Each row of a labels file is one sample: the events with ``start <= t < end`` (as spikingjelly
cuts them), label ``class - 1``. Samples are integrated into T frames of 128x128 and cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .aedat import read_aedat31
from .common import DatasetInfo, DatasetNotFoundError
from .event_cache import CachedEventFrames, cache_dir_for, write_frames
from .frames import events_to_frames

__all__ = ["DVS128Gesture", "GESTURE_CLASSES", "read_gesture_labels"]

GESTURE_CLASSES = ("hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                   "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
                   "arm_roll", "air_drums", "air_guitar", "other_gestures")

LAYOUT = """  DATA_DIR/DvsGesture/                  (the extracted DvsGesture.tar.gz; or DATA_DIR itself)
      user01_fluorescent.aedat          AEDAT 3.1 recordings
      user01_fluorescent_labels.csv     class,startTime_usec,endTime_usec
      ...
      trials_to_train.txt               official split: one .aedat name per line
      trials_to_test.txt"""


def _root(data_dir: Path) -> Path | None:
    for cand in (data_dir / "DvsGesture", data_dir):
        if (cand / "trials_to_train.txt").is_file() and (cand / "trials_to_test.txt").is_file():
            return cand
    return None


def read_gesture_labels(path: Path) -> np.ndarray:
    """``[n, 3]`` int64 rows (class 1..11, start_us, end_us); the header line is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or not line[0].isdigit():
            continue
        parts = [int(float(v)) for v in line.split(",")[:3]]
        rows.append(parts)
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    if len(arr) and (arr[:, 0].min() < 1 or arr[:, 0].max() > 11):
        raise ConfigError(f"{path}: classes must be 1..11, got {arr[:, 0].min()}..{arr[:, 0].max()}")
    return arr


class DVS128Gesture(CachedEventFrames):
    def __init__(self, data_dir, train: bool = True, T: int = 16, split_by: str = "number",
                 cache_dir=None, img_size: int | None = None, in_chans: int = 2, transform=None,
                 progress: bool = False):
        data_dir = Path(data_dir)
        root = _root(data_dir)
        if root is None:
            raise DatasetNotFoundError("DVS128 Gesture", data_dir, LAYOUT,
                                       "no trials_to_train.txt / trials_to_test.txt found")
        split = "train" if train else "test"
        trials = [ln.strip() for ln in (root / f"trials_to_{split}.txt").read_text().splitlines() if ln.strip()]
        out_dir = cache_dir_for(cache_dir or root / "frames_cache", "dvs128-gesture", T, split_by, split)
        files, labels = [], []
        it = trials
        if progress:
            from tqdm import tqdm
            it = tqdm(trials, desc=f"DVS128 Gesture {split}: integrating T={T} frames")
        for name in it:
            aedat = root / name
            csv = root / (Path(name).stem + "_labels.csv")
            if not aedat.is_file() or not csv.is_file():
                raise DatasetNotFoundError("DVS128 Gesture", data_dir, LAYOUT,
                                           f"trials_to_{split}.txt lists {name} but {aedat.name} or {csv.name} is missing")
            rows = read_gesture_labels(csv)
            targets = [out_dir / f"{Path(name).stem}_{k}.npz" for k in range(len(rows))]
            if not all(p.is_file() for p in targets):
                ev = read_aedat31(aedat)
                order = np.argsort(ev["t"], kind="stable")
                ev = {k: v[order] for k, v in ev.items()}
                for (cls, start, end), path in zip(rows, targets):
                    if path.is_file():
                        continue
                    lo, hi = np.searchsorted(ev["t"], [start, end], side="left")
                    sub = {k: v[lo:hi] for k, v in ev.items()}
                    write_frames(path, events_to_frames(sub, T, 128, 128, split_by), int(cls) - 1)
            files.extend(targets)
            labels.extend(int(c) - 1 for c in rows[:, 0])
        info = DatasetInfo("dvs128-gesture", num_classes=11, in_chans=2, img_size=128, T=T,
                           classes=GESTURE_CLASSES)
        super().__init__(files, labels, info, img_size=img_size, in_chans=in_chans, transform=transform)
