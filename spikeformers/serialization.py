"""Files written atomically, and ``torch.save`` files read without running code from them.

:func:`atomic_write` is how every file spikeformers writes (checkpoints, training state, pretrained
folders, exported models, cached event frames) reaches the disk: written to a temporary file in the
same folder, flushed, then moved onto its name, so a killed process never leaves half a file.

A ``.pth`` / ``.pt`` file is a pickle, and a pickle can hold instructions to run arbitrary code on
load. Every file spikeformers reads this way (official checkpoints, ``--resume`` state) is loaded with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers (dict, list, tuple,
str, numbers) plus ``argparse.Namespace`` (the ``args`` many official training scripts store beside the
weights). Anything else is refused with a :class:`~spikeformers.errors.CheckpointError` saying so.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from .errors import CheckpointError

__all__ = ["atomic_write", "safe_load"]


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, give it the usual
    permissions of a new file (``mkstemp`` makes it 0600) and move it onto ``path``; on any error the
    temporary file is removed and ``path`` is left as it was. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def safe_load(path, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` on CPU, with ``argparse.Namespace`` allowed; a file that
    would need code to load raises a CheckpointError naming the object it asked for."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        asked = f"it asks for {found.group(1)}" if found else "it asks to rebuild objects that are not tensors or plain data"
        raise CheckpointError(
            f"{path}: refused to load this {what}: {asked}, and loading it would run code from the file. A valid file holds a state "
            "dict ({name: tensor}), possibly inside a dict under 'model' / 'state_dict' with plain values "
            "beside it. If you trust the file's origin, extract its state dict yourself and save only that "
            "with torch.save.") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: the {what} does not exist") from None
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read this {what} ({e}); expected a file written by torch.save") from None
