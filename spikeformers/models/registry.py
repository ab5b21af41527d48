"""Model registry: one factory per named variant (timm style).

``@register_model(num_classes=10, img_size=32, ...)`` on a factory ``def sdt_2_512_cifar(**kw)``
registers it under its function name with its default configuration (the constructor kwargs a user
may override) and its metadata (paper accuracy, source). ``create_model(name, **overrides)``
builds it; ``list_models(pattern)`` lists names.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..errors import CheckpointError, ConfigError, UnknownNameError
from .pretrained import load_state, read_pretrained

__all__ = ["register_model", "create_model", "from_pretrained", "list_models", "model_entry", "ModelEntry"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    defaults: dict
    meta: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable | None = None, *, meta: dict | None = None, **defaults):
    """Register ``fn`` under its name; ``defaults`` are its default constructor kwargs (they show in
    ``create_model``'s config), ``meta`` is descriptive data (``paper_top1``, ``source``, ...)."""

    def wrap(f):
        if f.__name__ in _REGISTRY:
            raise ConfigError(f"model {f.__name__!r} is registered twice")
        _REGISTRY[f.__name__] = ModelEntry(f.__name__, f, dict(defaults), dict(meta or {}))
        return f

    return wrap(fn) if fn is not None else wrap


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown model {name!r}{hint} (see `spikeformers models` for the list)")
    return _REGISTRY[name]


def create_model(name: str, pretrained=None, **overrides) -> nn.Module:
    """Build the registered variant ``name``; ``overrides`` replace its defaults (at least
    ``num_classes``, ``img_size``, ``in_chans``, ``T``). The model keeps its full config in
    ``model.config`` (name + kwargs), which checkpoints store to rebuild it.

    ``pretrained`` loads weights (see :mod:`spikeformers.models.pretrained`): a folder written by
    ``save_pretrained``, ``True`` or a model name for the weights shipped in the package, or
    ``"hf-hub:owner/name"``. The model is then built with the folder's arguments (``overrides`` on
    top: those that change a weight's shape fail with the key named) and ``model.pretrained`` holds
    the folder's ``config.json``."""
    if pretrained is None or pretrained is False:
        entry = model_entry(name)
        cfg = {**entry.defaults, **overrides}
        model = entry.factory(**cfg)
        model.config = {"name": name, **cfg}
        model.model_name = name
        return model
    folder = read_pretrained(pretrained, name)
    if folder.name != name:
        raise CheckpointError(f"pretrained {pretrained!r} holds model {folder.name!r}, not {name!r} "
                              f"(spikeformers.from_pretrained({str(pretrained)!r}) builds whichever it holds)")
    model = create_model(name, **{**folder.kwargs, **overrides})
    load_state(model, folder)
    model.pretrained = folder.config
    return model


def from_pretrained(source, **overrides) -> nn.Module:
    """The model held by the pretrained ``source`` (a folder, a shipped model name such as
    ``"a2os2a_fmnist"``, or ``"hf-hub:owner/name"``), built and with its weights loaded, in
    eval mode."""
    folder = read_pretrained(source)
    model = create_model(folder.name, **{**folder.kwargs, **overrides})
    load_state(model, folder)
    model.pretrained = folder.config
    return model.eval()


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by a glob ``pattern``."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names
