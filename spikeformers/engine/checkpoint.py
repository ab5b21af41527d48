"""Checkpoints: weights in safetensors (with our metadata inside), a human-readable JSON sidecar,
and the training state for ``--resume``. Every file is written atomically (temp file, fsync,
``os.replace``), so a killed run never leaves a half-written checkpoint behind."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..models import create_model, list_models, model_entry
from ..models.weights import load_weights
from ..serialization import atomic_write

__all__ = ["CheckpointError", "atomic_write", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "load_weights", "save_train_state", "load_train_state"]

META_KEY = "spikeformers"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: Path | str, model: torch.nn.Module, **info) -> Path:
    """Write ``path`` (``.safetensors``) and its sidecar ``path.with_suffix('.json')``. ``info``
    (epoch, metrics, ...) is stored with the model's name and config in both."""
    path = Path(path)
    meta = {"model": getattr(model, "model_name", None), "config": getattr(model, "config", None), **info}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)}))
    _write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return path


def read_checkpoint(path: Path | str) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a checkpoint, with clear errors for missing/truncated files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a .safetensors file written by "
                              "`spikeformers train` or `spikeformers convert`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {e}") from None
    if raw is None:
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise CheckpointError(f"{path} has no spikeformers metadata and no sidecar {sidecar}: "
                                  "cannot tell which model it holds")
        raw = sidecar.read_text()
    return state, json.loads(raw)


def load_checkpoint(path: Path | str, expect_model: str | None = None, **overrides) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint was saved from and load its weights: ``(model, meta)``.
    ``expect_model`` raises a clear error if the checkpoint holds another model."""
    state, meta = read_checkpoint(path)
    cfg = dict(meta.get("config") or {})
    name = cfg.pop("name", meta.get("model"))
    if name is None:
        raise CheckpointError(f"{path}: metadata names no model")
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"{path} holds model {name!r}, expected {expect_model!r}")
    # options added to a model after the checkpoint was written take the value that reproduces it
    legacy = model_entry(name).meta.get("legacy_defaults", {}) if name in list_models() else {}
    model = create_model(name, **{**legacy, **cfg, **overrides})
    load_weights(model, state, source=str(path))
    return model, meta


def save_train_state(path: Path | str, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: Path | str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated zip files
        raise CheckpointError(f"training state {path} is unreadable (truncated or corrupt?): {e}") from None
