"""Load official checkpoints: ``from_official(state_dict_or_path, source, **official_kwargs)``.

``source`` names the official code that produced the weights, ``"owner/repo[@commit]:path:Name"``,
where ``Name`` is the official class or one of its registered factories, for example
``"ZK-Zhou/spikformer:cifar10/model.py:Spikformer"``. ``official_kwargs`` are that constructor's
keyword arguments, with its defaults (an argument it does not take is a ``TypeError``, as there).

The returned model is one of ours with the weights loaded, taking the official input layout
(``[B,C,H,W]`` images, ``[B,T,C,H,W]`` frames) and returning the official output layout
(``[B,K]``; SpikingResformer and SDT with ``TET=True``: per-step ``[T,B,K]``; SDT's second output,
its debugging ``hook``, is not returned). The official numerical quirks are switched on here:
QKFormer's stage-3 output neuron over T*B (``proj_lif_over_tb``), SpikingResformer's token count
N' fixed from ``img_size`` (``fixed_tokens``); its firing-rate buffers are loaded as they are.

Every key is accounted for: official keys map 1:1 onto ours, except parameters the official
forward never uses (Spikformer's ``norm1`` / ``norm2`` LayerNorms, its DVS ``pos_embed`` / ``norm``;
SDT's ``talking_heads``), which are dropped and listed in ``model.official_dropped``. Any other
unexpected or missing key, or a shape mismatch, raises with the names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..serialization import safe_load
from .qkformer import QKFormer
from .resformer import SpikingResformer
from .sdt import SpikeDrivenTransformer
from .spikformer import Spikformer

__all__ = ["from_official", "official_sources", "load_official_state_dict", "convert_state_dict"]


# ---------------------------------------------------------------------------------------------
# checkpoint containers
# ---------------------------------------------------------------------------------------------
def load_official_state_dict(state_dict_or_path) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` from a path (read without running code: :func:`~spikeformers.serialization.safe_load`), a raw state dict,
    or a training checkpoint holding it under ``model`` / ``state_dict`` / ``module``; a DDP
    ``module.`` prefix is stripped."""
    obj = state_dict_or_path
    if isinstance(obj, (str, os.PathLike)):
        obj = safe_load(obj, "official checkpoint")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict, a checkpoint dict or a path, got {type(obj).__name__}")
    for container in ("model", "state_dict", "module"):
        if container in obj and isinstance(obj[container], Mapping):
            obj = obj[container]
            break
    sd = dict(obj)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"not a state dict: entries {bad[:5]} are not tensors (expected a flat "
                         "{name: tensor} dict, or a checkpoint with 'model' / 'state_dict')")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------------------------------------
# official constructors -> our models
# ---------------------------------------------------------------------------------------------
# the registered variant whose factory rebuilds a converted model from its full kwargs (checkpoints)
_FAMILY_VARIANT = {("Spikformer", "cifar"): "spikformer_4_384_cifar", ("Spikformer", "imagenet"): "spikformer_8_512",
                   ("Spikformer", "dvs"): "spikformer_2_256_cifar10dvs", ("SpikeDrivenTransformer", None): "sdt_2_512_cifar",
                   ("QKFormer", "cifar"): "qkformer_4_384_cifar", ("QKFormer", "imagenet"): "qkformer_10_768",
                   ("QKFormer", "dvs"): "qkformer_2_256_cifar10dvs", ("SpikingResformer", None): "spikingresformer_ti"}


def _make(cls, **kw):
    """Build our model and record its registry config (``model.config``), so that checkpoints of
    converted models rebuild with ``create_model``."""
    model = cls(**kw)
    name = _FAMILY_VARIANT[(cls.__name__, kw.get("layout"))]
    model.config, model.model_name = {"name": name, **kw}, name
    return model


def _need(name, value, official_default):
    if value is None:
        raise ConfigError(f"official argument {name!r} is required: the official default "
                        f"{official_default!r} does not build a model")
    if isinstance(value, (list, tuple)):
        raise ConfigError(f"official argument {name!r} must be a single value here, got {value!r}")
    return value


def _square(h, w):
    if h != w:
        raise NotImplementedError(f"non-square inputs are not supported: img_size_h={h}, img_size_w={w}")
    return h


def _spikformer(layout):
    def build(img_size_h=128, img_size_w=128, patch_size=16, in_channels=2, num_classes=11,
              embed_dims=None, num_heads=None, mlp_ratios=None, qkv_bias=False, qk_scale=None,
              drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=None, depths=None,
              sr_ratios=None, **extra):
        # patch_size, qkv_bias, qk_scale, drop_*, norm_layer, sr_ratios: no effect on the forward.
        T = extra.pop("T", 4) if layout == "cifar" else 4  # the ImageNet file hard-codes T = 4
        if extra:
            raise ConfigError(f"unexpected official argument(s) {sorted(extra)} for the {layout} Spikformer")
        return _make(Spikformer, img_size=_square(img_size_h, img_size_w), in_chans=in_channels,
                          num_classes=num_classes, embed_dim=_need("embed_dims", embed_dims, [64, 128, 256]),
                          depths=_need("depths", depths, [6, 8, 6]),
                          num_heads=_need("num_heads", num_heads, [1, 2, 4]),
                          mlp_ratio=_need("mlp_ratios", mlp_ratios, [4, 4, 4]), T=T, layout=layout)
    return build


def _spikformer_factory(layout, **fixed):
    def build(pretrained=False, **kw):
        return _spikformer(layout)(**{**fixed, **kw})
    return build


def _sdt(img_size_h=128, img_size_w=128, patch_size=16, in_channels=2, num_classes=11, embed_dims=512,
         num_heads=8, mlp_ratios=4, qkv_bias=False, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
         drop_path_rate=0.0, norm_layer=None, depths=None, sr_ratios=None, T=4, pooling_stat="1111",
         attn_mode="direct_xor", spike_mode="lif", get_embed=False, dvs_mode=False, TET=False, cml=False,
         pretrained=False, pretrained_cfg=None):
    if spike_mode != "lif":
        raise NotImplementedError(f"SDT spike_mode={spike_mode!r}: only 'lif' (every released config) is supported")
    if cml or get_embed:
        raise NotImplementedError("SDT cml=True / get_embed=True are not supported")
    return _make(SpikeDrivenTransformer, img_size=_square(img_size_h, img_size_w), in_chans=in_channels,
                                  num_classes=num_classes, embed_dim=embed_dims,
                                  depth=_need("depths", depths, [6, 8, 6]), num_heads=num_heads,
                                  mlp_ratio=mlp_ratios, T=T, pooling_stat=pooling_stat, dvs_mode=dvs_mode,
                                  tet=TET)


def _qkformer(layout, heads=None):
    def build(img_size_h=128, img_size_w=128, patch_size=16, in_channels=2, num_classes=11,
              embed_dims=None, num_heads=None, mlp_ratios=None, qkv_bias=False, qk_scale=None,
              drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=None, depths=None,
              sr_ratios=None, T=4, pretrained_cfg=None, **extra):
        bad = set(extra) - ({"in_chans", "no_weight_decay"} if layout == "dvs" else set())  # DVS: unused
        if bad:
            raise ConfigError(f"unexpected official argument(s) {sorted(bad)} for the {layout} QKFormer")
        h = heads if heads is not None else _need("num_heads", num_heads, [1, 2, 4])
        return _make(QKFormer, img_size=_square(img_size_h, img_size_w), in_chans=in_channels, num_classes=num_classes,
                        embed_dim=_need("embed_dims", embed_dims, [64, 128, 256]),
                        depths=_need("depths", depths, [6, 8, 6]) if layout != "dvs" else 2, num_heads=h,
                        mlp_ratio=_need("mlp_ratios", mlp_ratios, [4, 4, 4]), T=T, layout=layout,
                        proj_lif_over_tb=True)
    return build


def _qkformer_factory(layout, heads=None, **fixed):
    def build(pretrained=False, **kw):
        return _qkformer(layout, heads)(**{**fixed, **kw})
    return build


def _qkformer_imagenet_factory(D, h):
    def build(T=1, **kw):
        return _qkformer("imagenet")(**{**dict(T=T, img_size_h=224, img_size_w=224, patch_size=16,
                                              embed_dims=D, num_heads=h, mlp_ratios=4, in_channels=3,
                                              num_classes=1000, depths=10, sr_ratios=1), **kw})
    return build


_RESFORMER_STAGES = [["DSSA", "GWFFN"] * 1, ["DSSA", "GWFFN"] * 2, ["DSSA", "GWFFN"] * 3]


def _resformer(layers=None, planes=None, num_heads=None, patch_sizes=None, img_size=224, T=4, in_channels=3,
               num_classes=1000, prologue=None, group_size=64, activation="LIF", **kwargs):
    if layers is None or planes is None or num_heads is None or patch_sizes is None:
        raise ConfigError("official SpikingResformer needs layers, planes, num_heads and patch_sizes")
    depths = []
    for i, stage in enumerate(layers):
        stage = list(stage)
        if len(stage) % 2 or stage != ["DSSA", "GWFFN"] * (len(stage) // 2):
            raise NotImplementedError(f"SpikingResformer stage {i} layers {stage}: only repeated "
                                      "['DSSA', 'GWFFN'] pairs (every released model) are supported")
        depths.append(len(stage) // 2)
    if prologue not in (None, "cifar"):
        raise ConfigError(f"prologue must be None (the ImageNet stem) or 'cifar' (3x3 conv + BN), got {prologue!r}")
    activation = getattr(activation, "__name__", activation)
    return _make(SpikingResformer, planes=tuple(planes), num_heads=tuple(num_heads), patch_sizes=tuple(patch_sizes),
                            depths=tuple(depths), img_size=img_size, T=T, in_chans=in_channels,
                            num_classes=num_classes, stem="imagenet" if prologue is None else "cifar",
                            group_size=group_size, neuron=activation, per_step_logits=True, fixed_tokens=True)


def _resformer_factory(planes, heads, **fixed):
    def build(**kw):
        return _resformer(**{**dict(layers=_RESFORMER_STAGES, planes=planes, num_heads=heads,
                                    patch_sizes=[4, 2, 1], in_channels=3), **fixed, **kw})
    return build


# ---------------------------------------------------------------------------------------------
# key maps: official key -> our key (None: a parameter the official forward never uses)
# ---------------------------------------------------------------------------------------------
def _spikformer_keys(k):
    if re.match(r"block\.\d+\.norm[12]\.", k) or k in ("pos_embed", "norm.weight", "norm.bias"):
        return None
    return k


def _sdt_keys(k):
    return None if re.match(r"block\.\d+\.attn\.talking_heads\.", k) else k


def _qkformer_keys(k):
    k = re.sub(r"^(stage\d+\.\d+)\.ssa\.", r"\1.attn.", k)
    k = re.sub(r"\.mlp\.mlp([12])_", r".mlp.fc\1_", k)
    return re.sub(r"^patch_embed2\.proj_(conv|bn)\.", r"patch_embed2.proj3_\1.", k)  # DVS stage 2


def _resformer_keys(k):
    return k.replace(".bn.", ".")


@dataclass(frozen=True)
class OfficialSource:
    repo: str
    path: str
    name: str
    build: Callable[..., nn.Module]
    keys: Callable[[str], str | None]


def _sources():
    S, out = OfficialSource, []
    sp = "ZK-Zhou/spikformer"
    for path, layout, fixed in (("cifar10/model.py", "cifar", {}),
                                ("imagenet/model.py", "imagenet",
                                 dict(img_size_h=224, img_size_w=224, patch_size=16, embed_dims=512, num_heads=8,
                                      mlp_ratios=4, in_channels=3, num_classes=1000, depths=8, sr_ratios=1)),
                                ("cifar10dvs/model.py", "dvs",
                                 dict(patch_size=16, embed_dims=256, num_heads=16, mlp_ratios=4, in_channels=2,
                                      num_classes=10, depths=2, sr_ratios=1))):
        out.append(S(sp, path, "Spikformer", _spikformer(layout), _spikformer_keys))
        out.append(S(sp, path, "spikformer", _spikformer_factory(layout, **fixed), _spikformer_keys))
    sdt = "BICLab/Spike-Driven-Transformer"
    out += [S(sdt, "model/spikeformer.py", "SpikeDrivenTransformer", _sdt, _sdt_keys),
            S(sdt, "model/spikeformer.py", "sdt", _sdt, _sdt_keys)]
    qk = "zhouchenlin2096/QKFormer"
    for path in ("cifar10/model.py", "cifar100/model.py"):
        out += [S(qk, path, "spiking_transformer", _qkformer("cifar", heads=8), _qkformer_keys),
                S(qk, path, "QKFormer", _qkformer_factory("cifar", heads=8), _qkformer_keys)]
    out.append(S(qk, "imagenet/qkformer.py", "hierarchical_spiking_transformer", _qkformer("imagenet"),
                 _qkformer_keys))
    for D, h in ((384, 6), (512, 8), (768, 12)):
        out.append(S(qk, "imagenet/qkformer.py", f"QKFormer_10_{D}", _qkformer_imagenet_factory(D, h),
                     _qkformer_keys))
    for path, mlp, K in (("cifar10-dvs/model.py", 1, 10), ("dvs128-gesture/model.py", 4, 11)):
        fixed = dict(patch_size=16, embed_dims=256, num_heads=16, mlp_ratios=mlp, in_channels=2,
                     num_classes=K, depths=4, sr_ratios=1)
        out += [S(qk, path, "vit_snn", _qkformer("dvs", heads=16), _qkformer_keys),
                S(qk, path, "QKFormer", _qkformer_factory("dvs", heads=16, **fixed), _qkformer_keys)]
    rf, rp = "xyshi2000/SpikingResformer", "models/spikingresformer.py"
    out.append(S(rf, rp, "SpikingResformer", _resformer, _resformer_keys))
    for name, planes, heads, fixed in (
            ("spikingresformer_ti", [64, 192, 384], [1, 3, 6], {}),
            ("spikingresformer_s", [64, 256, 512], [1, 4, 8], {}),
            ("spikingresformer_m", [64, 384, 768], [1, 6, 12], {}),
            ("spikingresformer_l", [128, 512, 1024], [2, 8, 16], {}),
            ("spikingresformer_dvsg", [32, 96, 192], [1, 3, 6],
             dict(prologue="cifar", group_size=32, activation="PLIF")),
            ("spikingresformer_cifar", [64, 192, 384], [1, 3, 6], dict(prologue="cifar"))):
        out.append(S(rf, rp, name, _resformer_factory(planes, heads, **fixed), _resformer_keys))
    return {f"{s.repo}:{s.path}:{s.name}": s for s in out}


_SOURCES = _sources()


def official_sources() -> list[str]:
    """Every ``source`` string :func:`from_official` accepts."""
    return sorted(_SOURCES)


def _lookup(source: str) -> OfficialSource:
    parts = source.split(":")
    if len(parts) != 3:
        raise ConfigError(f"source must look like 'owner/repo:path/to/file.py:Name', got {source!r}")
    repo, path, name = parts
    key = f"{repo.split('@')[0]}:{path}:{name}"
    if key not in _SOURCES:
        raise ConfigError(f"unknown official source {source!r}; supported sources:\n  " + "\n  ".join(official_sources()))
    return _SOURCES[key]


def convert_state_dict(official: Mapping[str, torch.Tensor], model: nn.Module, keys: Callable[[str], str | None]):
    """Map official keys onto ``model``'s; returns (state dict for ``model``, dropped dead keys).
    Raises a CheckpointError naming unexpected / missing keys, a ConfigError naming shape mismatches."""
    ours = model.state_dict()
    out, dropped, unexpected = {}, [], []
    for k, v in official.items():
        nk = keys(k)
        if nk is None:
            dropped.append(k)
        elif nk in ours:
            out[nk] = v
        else:
            unexpected.append(k)
    missing = [k for k in ours if k not in out]
    if unexpected or missing:
        msg = [f"official state dict does not match {type(model).__name__}:"]
        if unexpected:
            msg.append(f"  unexpected official keys ({len(unexpected)}): {unexpected}")
        if missing:
            msg.append(f"  missing keys ({len(missing)}): {missing}")
        msg.append("  (check the source and the official constructor kwargs, e.g. embed_dims / depths)")
        raise CheckpointError("\n".join(msg))
    shapes = [f"{k}: official {tuple(v.shape)}, expected {tuple(ours[k].shape)}"
              for k, v in out.items() if v.shape != ours[k].shape]
    if shapes:
        raise ConfigError("official weights have the wrong shapes for these kwargs:\n  " + "\n  ".join(shapes))
    return out, dropped


def from_official(state_dict_or_path, source: str, **official_kwargs) -> nn.Module:
    """Build our model for the official ``source`` constructed with ``official_kwargs``, load the
    official weights into it, and return it (in eval mode)."""
    spec = _lookup(source)
    model = spec.build(**official_kwargs)
    sd, dropped = convert_state_dict(load_official_state_dict(state_dict_or_path), model, spec.keys)
    model.load_state_dict(sd, strict=True)
    model.official_source = f"{spec.repo}:{spec.path}:{spec.name}"
    model.official_kwargs = dict(official_kwargs)
    model.official_dropped = dropped
    return model.eval()
