"""BatchNorm folding for inference.

:func:`fuse` folds every BatchNorm into the conv / linear that feeds it,
``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``, and replaces the BN by
``nn.Identity``. Only pairs named ``<x>_conv<i>`` / ``<x>_linear<i>`` -> ``<x>_bn<i>`` in the same
module are folded (the models build conv -> BN adjacently under these names); any other BatchNorm
stays as it is and :func:`unfused_batchnorms` names it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ConfigError, UsageError

__all__ = ["fuse", "unfused_batchnorms"]


_BN = re.compile(r"^(?P<stem>.*)_bn(?P<sfx>\d*)$")


def _fold(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    w = layer.weight
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"cannot fold {bn}: it tracks no running statistics")
    with torch.no_grad():
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_b = (b - bn.running_mean) * scale + shift
        w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_b.to(w.dtype))
        else:
            layer.bias.copy_(new_b)


def fuse(model: nn.Module) -> nn.Module:
    """Fold every ``<x>_bn<i>`` BatchNorm into its ``<x>_conv<i>`` / ``<x>_linear<i>`` (in place,
    eval mode only); returns the model with ``model.fused_batchnorms`` set to the count."""
    if model.training:
        raise ConfigError("fuse() folds the BatchNorm running statistics: call model.eval() first "
                         "(a fused model cannot be trained)")
    n = 0
    for parent in list(model.modules()):
        for name, bn in list(parent.named_children()):
            m = _BN.match(name)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or m is None:
                continue
            for kind in ("conv", "linear"):
                layer = getattr(parent, f"{m['stem']}_{kind}{m['sfx']}", None)
                if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)) and layer.weight.shape[0] == bn.num_features:
                    _fold(layer, bn)
                    setattr(parent, name, nn.Identity())
                    n += 1
                    break
    model.fused_batchnorms = n
    model.train = _no_train.__get__(model)
    nn.Module.train(model, False)        # the new nn.Identity modules too (a module starts in training mode)
    return model


def _no_train(self, mode: bool = True):
    if mode:
        raise UsageError("this model was fused for inference (BatchNorm folded into the convs); "
                           "rebuild or reload it to train")
    return nn.Module.train(self, False)


def unfused_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorms :func:`fuse` left in place."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
