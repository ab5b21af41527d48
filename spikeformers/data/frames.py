"""Integrate an event stream into T frames ``[T, 2, H, W]`` of event counts (channel 0 = OFF,
channel 1 = ON), as spikingjelly's ``integrate_events_by_fixed_frames_number`` does:

* ``split_by='number'``: frame i gets events ``[i * (N // T), (i + 1) * (N // T))``; the last frame
  also takes the remainder, so every event lands in exactly one frame.
* ``split_by='time'``: with ``dt = (t_last - t_first) // T``, frame i gets the events with
  ``t_first + i*dt <= t < t_first + (i+1)*dt``; the last frame runs to the end of the stream.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["events_to_frames", "frame_boundaries"]


def frame_boundaries(t: np.ndarray, T: int, split_by: str) -> np.ndarray:
    """Indices ``b`` (length T+1) so frame i holds events ``b[i]:b[i+1]``; ``t`` must be sorted."""
    n = len(t)
    if T < 1:
        raise ConfigError(f"T must be >= 1, got {T}")
    if split_by == "number":
        b = np.arange(T + 1, dtype=np.int64) * (n // T)
    elif split_by == "time":
        if n == 0:
            return np.zeros(T + 1, np.int64)
        dt = (int(t[-1]) - int(t[0])) // T
        edges = int(t[0]) + dt * np.arange(T + 1, dtype=np.int64)
        b = np.searchsorted(t, edges, side="left").astype(np.int64)
        b[0] = 0
    else:
        raise ConfigError(f"split_by must be 'number' or 'time', got {split_by!r}")
    b[-1] = n
    return b


def events_to_frames(events: dict, T: int, H: int, W: int, split_by: str = "number") -> np.ndarray:
    """float32 ``[T, 2, H, W]`` event counts."""
    t = np.asarray(events["t"])
    x = np.asarray(events["x"]).astype(np.int64)
    y = np.asarray(events["y"]).astype(np.int64)
    p = np.asarray(events["p"]).astype(np.int64)
    if len(t) and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, x, y, p = t[order], x[order], y[order], p[order]
    if len(x) and (x.min() < 0 or x.max() >= W or y.min() < 0 or y.max() >= H):
        raise ConfigError(f"event coordinates outside the {H}x{W} sensor: x in [{x.min()}, {x.max()}], "
                         f"y in [{y.min()}, {y.max()}]")
    if len(p) and (p.min() < 0 or p.max() > 1):
        raise ConfigError(f"polarity must be 0 or 1, got values in [{p.min()}, {p.max()}]")
    b = frame_boundaries(t, T, split_by)
    frame_idx = np.repeat(np.arange(T, dtype=np.int64), np.diff(b))
    flat = ((frame_idx * 2 + p) * H + y) * W + x
    counts = np.bincount(flat, minlength=T * 2 * H * W)
    return counts.reshape(T, 2, H, W).astype(np.float32)
