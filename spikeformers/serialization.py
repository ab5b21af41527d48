"""Reading ``torch.save`` files without running code from them.

A ``.pth`` / ``.pt`` file is a pickle, and a pickle can hold instructions to run arbitrary code on
load. Every file spikeformers reads this way (official checkpoints, ``--resume`` state) is loaded with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers (dict, list, tuple,
str, numbers) plus ``argparse.Namespace`` (the ``args`` many official training scripts store beside the
weights). Anything else is refused with a :class:`~spikeformers.errors.CheckpointError` saying so.
"""

from __future__ import annotations

import argparse
import pickle
import re

import torch

from .errors import CheckpointError

__all__ = ["safe_load"]


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
