"""Pretrained model folders: ``config.json`` + ``model.safetensors`` + a generated ``README.md`` card.

::

    model.save_pretrained("my_model", data="fashion-mnist", accuracy=91.2)   # any zoo model
    model = spikeformers.from_pretrained("my_model")                         # rebuilt, weights loaded
    model = spikeformers.create_model("a2os2a_fmnist", pretrained=True)      # the weights shipped in the package
    model = spikeformers.from_pretrained("hf-hub:owner/name")                # needs the `hub` extra

A *source* of pretrained weights is one of

- a folder written by :func:`save_pretrained` (or ``spikeformers convert``),
- the name of a model whose weights ship inside the package (:func:`shipped`, e.g. ``a2os2a_fmnist``),
- ``"hf-hub:owner/name"`` (optionally ``@revision``): a Hugging Face Hub repository holding such a
  folder, downloaded into (or, offline, read from) the Hub's local cache by ``huggingface_hub``.

``config.json`` holds the registered model name and the constructor keyword arguments that rebuild it,
the dtype the weights are stored in, and the card's facts (data, accuracy, firing rate, energy, recipe,
source of the weights, licence); ``README.md`` is generated from those facts. Weights stored in float16
or bfloat16 are loaded into the model's float32 parameters (the values stay the rounded ones; a card
states the accuracy measured after that rounding).

This module reads and writes folders only; building the model is
:func:`spikeformers.models.registry.create_model`'s (``pretrained=``), which imports it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, UnsupportedError
from ..serialization import atomic_write
from .weights import load_weights

__all__ = ["FORMAT", "SHIPPED_DIR", "PretrainedFolder", "shipped", "resolve", "read_pretrained",
           "save_pretrained", "model_card", "push_to_hub"]

FORMAT = "spikeformers-pretrained/1"
#: where the package's own pretrained folders live (package data)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HUB_PREFIX = "hf-hub:"
_HUB_EXTRA = "pip install 'spikeformers[hub]' (huggingface_hub)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("spikeformers")
    except PackageNotFoundError:    # a source tree on sys.path, not installed
        return "unknown"


@dataclass
class PretrainedFolder:
    """What a pretrained folder holds: the model ``name``, its constructor ``kwargs``, the weights
    ``state`` (as stored), the whole ``config`` (``config["card"]``: the card's facts) and ``path``."""

    name: str
    kwargs: dict
    state: dict
    config: dict
    path: Path


def shipped() -> list[str]:
    """Names of the models whose pretrained weights ship inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CONFIG).is_file() and (p / WEIGHTS).is_file())


# ------------------------------------------------------------------------------------------ reading
def resolve(source, name: str | None = None) -> Path:
    """The local folder of ``source`` (see the module docstring). ``source=True`` means the weights
    shipped for model ``name``."""
    if source is True:
        if name is None:
            raise ConfigError("pretrained=True needs the model name (create_model(name, pretrained=True))")
        source = name
        if name not in shipped():
            raise CheckpointError(f"no pretrained weights ship for model {name!r}; shipped: {shipped() or 'none'}. "
                                  "Expected pretrained=FOLDER (written by save_pretrained) or 'hf-hub:owner/name'")
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"pretrained must be a folder, a shipped model name, 'hf-hub:owner/name' or True; "
                          f"got {type(source).__name__}")
    text = os.fspath(source)
    if text.startswith(_HUB_PREFIX):
        return _hub_download(text[len(_HUB_PREFIX):])
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if text in shipped():
        return SHIPPED_DIR / text
    if path.is_file():
        raise CheckpointError(f"{path} is a file; pretrained= expects a folder holding {CONFIG} and {WEIGHTS} "
                              "(a .safetensors checkpoint of `spikeformers train` loads with load_checkpoint / --checkpoint)")
    raise CheckpointError(f"pretrained source {text!r} is not a folder, not a shipped model ({', '.join(shipped()) or 'none'}) "
                          "and not 'hf-hub:owner/name'")


def read_pretrained(source, name: str | None = None) -> PretrainedFolder:
    """Read the folder of ``source``: its config and its weights (not yet in a model)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolve(source, name)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{path} is not a pretrained folder: {p.name} is missing (expected {CONFIG}, "
                                  f"{WEIGHTS} and {CARD}, as save_pretrained writes them)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CheckpointError(f"{cfg_path}: expected a JSON object with the model name under 'model' "
                              f"(format {FORMAT})")
    if config.get("format", FORMAT).split("/")[0] != FORMAT.split("/")[0]:
        raise CheckpointError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{w_path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    kwargs = config.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{cfg_path}: 'kwargs' must be an object of constructor arguments")
    return PretrainedFolder(config["model"], dict(kwargs), state, config, path)


def load_state(model: torch.nn.Module, folder: PretrainedFolder) -> None:
    """Copy ``folder``'s weights into ``model`` (cast to the model's dtypes), with every missing,
    unexpected and mis-shaped key named."""
    load_weights(model, folder.state, source=f"pretrained weights in {folder.path}")


def _dtype_name(dtype) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)} (or None: as the model holds them), got {dtype!r}")
    return dtype


def save_pretrained(model: torch.nn.Module, folder, dtype=None, card: dict | None = None, **facts) -> Path:
    """Write ``folder`` (created if needed): ``config.json``, ``model.safetensors`` and ``README.md``.

    ``model`` must come from :func:`~spikeformers.models.create_model` (it keeps ``model.config``, the
    name and arguments that rebuild it). ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"`` or a
    torch dtype) stores the floating-point tensors in that format; a value that would not survive the
    cast (outside float16's range) raises. ``card`` and ``facts`` are the card's facts, e.g. ``data``,
    ``accuracy`` (a number in %, or a dict with ``top1``, ``split``, ``images``, ``note``),
    ``firing_rate``, ``energy`` (a dict), ``recipe`` (the command that trained it), ``source`` (where
    the weights come from), ``license``, ``architecture``; any other key is listed as it is."""
    from safetensors.torch import save as st_save

    cfg = dict(getattr(model, "config", None) or {})
    name = cfg.pop("name", None) or getattr(model, "model_name", None)
    if not name:
        raise ConfigError("save_pretrained needs a model built by spikeformers.create_model (it keeps "
                          "model.config: the registered name and the arguments that rebuild it)")
    dname = _dtype_name(dtype)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dname is not None and v.is_floating_point():
            cast = v.to(_DTYPES[dname])
            if not torch.isfinite(cast).all() and torch.isfinite(v).all():
                raise ConfigError(f"{k} does not fit {dname} (largest magnitude {v.abs().max().item():.3g}); "
                                  "save in float32 or bfloat16")
            v = cast
        tensors[k] = v.contiguous()
    floats = {str(v.dtype).removeprefix("torch.") for v in tensors.values() if v.is_floating_point()}
    facts = {**(card or {}), **facts}
    config = {"format": FORMAT, "model": name, "kwargs": _jsonable(cfg),
              "dtype": dname or (floats.pop() if len(floats) == 1 else "mixed"),
              "parameters": sum(p.numel() for p in model.parameters()),
              "spikeformers_version": _version(), "card": _jsonable(facts)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = st_save(tensors, metadata={"format": "pt", "spikeformers": FORMAT})
    atomic_write(folder / WEIGHTS, lambda tmp: Path(tmp).write_bytes(weights))
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(folder / CARD, lambda tmp: Path(tmp).write_text(model_card(config)))
    return folder


def _jsonable(obj):
    """``obj`` with tuples as lists and non-JSON values as strings (a card must always be written)."""
    return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------------------------------ the card
_DATA_NAMES = {"fashion-mnist": ("Fashion-MNIST", "fashion_mnist"), "cifar10": ("CIFAR-10", "cifar10"),
               "cifar100": ("CIFAR-100", "cifar100"), "dvs128-gesture": ("DVS128 Gesture", None),
               "cifar10-dvs": ("CIFAR10-DVS", None), "imagenet": ("ImageNet-1k", "imagenet-1k")}
_KNOWN = ("architecture", "data", "accuracy", "firing_rate", "energy", "recipe", "training", "source", "license",
          "shipped")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _energy_text(e) -> str:
    if not e:
        return "not stated"
    if not isinstance(e, dict) or not isinstance(e.get("mJ_per_image"), (int, float)):
        return _fmt(e)
    counts = ", ".join(f"{e[k]:.4g} {k}" for k in ("MACs", "ACs") if isinstance(e.get(k), (int, float)))
    where = "; ".join(x for x in (counts and counts + " per image",
                                  e.get("images") and f"{e['images']} test images") if x)
    text = f"{e['mJ_per_image']:.4g} mJ per image, {e.get('accounting', '?')} accounting" + (f" ({where})" if where else "")
    return text + (f". Rule: {e['rule']}" if e.get("rule") else "")


def model_card(config: dict) -> str:
    """The README.md of a pretrained folder, from its ``config.json`` (Hugging Face front matter,
    then the facts; a fact not given reads "not stated")."""
    c = config.get("card") or {}
    name, kwargs = config["model"], config.get("kwargs") or {}
    data = c.get("data")
    data_title, data_id = _DATA_NAMES.get(data, (data, None)) if data else (None, None)
    lic = str(c.get("license") or "not stated")
    front = ["---", "library_name: spikeformers", "tags:", "- spiking-neural-network", "- image-classification"]
    if re.fullmatch(r"[A-Za-z0-9.\-]+", lic) and lic != "not stated":
        front.append(f"license: {lic.lower()}")
    if data_id:
        front += ["datasets:", f"- {data_id}"]
    front.append("---")
    lines = front + ["", f"# {name}", ""]
    if c.get("architecture"):
        lines += [f"{c['architecture']}", ""]
    n = config.get("parameters")
    lines += [f"- **Model**: `{name}` of spikeformers {config.get('spikeformers_version', '')}".rstrip()
              + (f", {n:,} parameters" if isinstance(n, int) else "")
              + f", weights stored in {config.get('dtype', '?')}",
              f"- **Arguments**: `{json.dumps(kwargs, sort_keys=True)}`",
              f"- **Data**: {data_title or 'not stated'}"]
    acc = c.get("accuracy")
    if isinstance(acc, dict):
        top1 = acc.get("top1")
        where = ", ".join(str(x) for x in (acc.get("split") and f"{acc['split']} set",
                                           acc.get("images") and f"{acc['images']:,} images" if isinstance(acc.get("images"), int) else acc.get("images"),
                                           acc.get("note")) if x)
        lines.append("- **Accuracy**: " + (f"{top1:.2f} % top-1" if isinstance(top1, (int, float)) else "not stated")
                     + (f" ({where})" if where else ""))
    else:
        lines.append("- **Accuracy**: " + (f"{acc:.2f} % top-1" if isinstance(acc, (int, float)) else "not stated"))
    fr = c.get("firing_rate")
    lines.append("- **Firing rate**: " + (f"{fr:.4f} of all spiking-neuron outputs are non-zero"
                                           if isinstance(fr, (int, float)) else _fmt(fr) if fr else "not stated"))
    lines.append("- **Energy**: " + _energy_text(c.get("energy")))
    lines.append("- **Source of the weights**: " + (_fmt(c["source"]) if c.get("source") else "not stated"))
    lines.append(f"- **Licence**: {lic}")
    if c.get("training"):
        lines.append(f"- **Training**: {_fmt(c['training'])}")
    for k, v in c.items():
        if k not in _KNOWN:
            lines.append(f"- **{k}**: {_fmt(v)}")
    if c.get("recipe"):
        lines += ["", "## Recipe", "", "```bash", str(c["recipe"]), "```"]
    src = name if c.get("shipped") else "PATH/OF/THIS/FOLDER"
    lines += ["", "## Use", "", "```python", "import spikeformers", "",
              f'model = spikeformers.from_pretrained("{src}")   # a folder, a shipped name or "hf-hub:owner/name"',
              "logits = model(images)                  # images [B, "
              f"{kwargs.get('in_chans', 'C')}, {kwargs.get('img_size', 'H')}, {kwargs.get('img_size', 'W')}]",
              "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the Hub
def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise UnsupportedError(f"Hugging Face Hub repositories need the optional package huggingface_hub: "
                               f"{_HUB_EXTRA}") from None
    return huggingface_hub


def _hub_download(spec: str) -> Path:
    repo, _, revision = spec.partition("@")
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo):
        raise ConfigError(f"expected 'hf-hub:owner/name' (optionally '@revision'), got 'hf-hub:{spec}'")
    hub = _hub()
    try:
        path = hub.snapshot_download(repo, revision=revision or None, allow_patterns=[CONFIG, WEIGHTS, CARD],
                                     library_name="spikeformers", library_version=_version())
    except Exception as e:  # the Hub client raises many types (offline, not found, gated)
        raise CheckpointError(f"cannot get hf-hub:{spec}: {type(e).__name__}: {e}") from None
    return Path(path)


def push_to_hub(model_or_folder, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None, **save_kwargs) -> str:
    """Upload a pretrained folder (or a model, saved first with :func:`save_pretrained` and
    ``save_kwargs``) to the Hugging Face Hub repository ``repo_id`` (created if needed); returns
    the commit's URL. Needs the ``hub`` extra and a token (``huggingface-cli login`` or ``token=``)."""
    hub = _hub()
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        raise ConfigError(f"repo_id must be 'owner/name', got {repo_id!r}")
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_folder, torch.nn.Module):
            folder = save_pretrained(model_or_folder, Path(tmp) / "model", **save_kwargs)
        else:
            folder = Path(model_or_folder)
            read_pretrained(folder)          # a clear error before any upload
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=[CONFIG, WEIGHTS, CARD],
                                 commit_message=commit_message or f"Upload {read_pretrained(folder).name} (spikeformers)")
    return str(getattr(info, "commit_url", info))
