"""Copying a state dict into a model with every key and shape checked first."""

from __future__ import annotations

import torch

from ..errors import CheckpointError

__all__ = ["load_weights"]


def load_weights(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` (cast to the model's dtypes) after checking every key and shape;
    the CheckpointError names each missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if bad:
            parts.append("shape mismatches " + ", ".join(
                f"{k}: {tuple(state[k].shape)} vs expected {tuple(own[k].shape)}" for k in bad[:8]))
        raise CheckpointError(f"{source} does not fit model {getattr(model, 'model_name', type(model).__name__)}: "
                              + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
