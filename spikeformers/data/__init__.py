"""Datasets in their real on-disk formats, tensor transforms and augmentation.

    from spikeformers.data import build_dataset, build_datasets
    train_ds = build_dataset("cifar10", "/data", train=True, randaugment="rand-m9-n1-mstd0.4-inc1")
    train_ds, test_ds, info = build_datasets("dvs128-gesture", "/data", T=16)

Every dataset yields ``(float tensor, int label)``: ``[C, H, W]`` for images, ``[T, C, H, W]`` for
event frames, and carries ``.info`` (:class:`DatasetInfo`: num_classes, in_chans, img_size, T).
"""

from __future__ import annotations

from typing import Callable

from ..errors import ConfigError
from .common import DatasetInfo, DatasetNotFoundError
from .fashion_mnist import (
    DatasetError,
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
)
from .loader import InMemoryLoader, check_erasing, random_crop_flip, random_erase

__all__ = ["build_dataset", "build_datasets", "list_datasets", "register_dataset", "DatasetInfo",
           "DatasetNotFoundError", "build_train_eval_transforms",
           "DatasetError", "download_fashion_mnist", "find_fashion_mnist", "load_fashion_mnist",
           "InMemoryLoader", "random_crop_flip", "random_erase"]

_REGISTRY: dict[str, Callable] = {}

_IMAGE_TRANSFORM_KEYS = ("crop", "scale", "ratio", "padding", "hflip", "randaugment", "random_erasing",
                         "random_erasing_mode", "crop_pct", "interpolation")


def register_dataset(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def _split_kw(kw: dict, keys) -> dict:
    return {k: kw.pop(k) for k in list(kw) if k in keys and kw[k] is not None}


def build_train_eval_transforms(train: bool, img_size: int, mean, std, defaults: dict, kw: dict):
    from .transforms import build_image_transform

    t_kw = {**defaults, **_split_kw(kw, _IMAGE_TRANSFORM_KEYS)}
    if not kw.pop("normalize", True):
        mean = std = None
    return build_image_transform(train, img_size, mean, std, **t_kw)


def _check_unused(name: str, kw: dict) -> None:
    if kw:
        raise ConfigError(f"build_dataset({name!r}): unexpected options {sorted(kw)}")


@register_dataset("cifar10")
@register_dataset("cifar100")
def _cifar(data_dir, train: bool, *, name: str, transform=None, img_size: int = 32, **kw):
    from .cifar import CIFAR, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

    n = 10 if name == "cifar10" else 100
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if n == 10 else (CIFAR100_MEAN, CIFAR100_STD)
    mean, std = kw.pop("mean", None) or mean, kw.pop("std", None) or std
    if transform is None:
        transform = build_train_eval_transforms(train, img_size, mean, std,
                                                {"crop": "pad", "padding": 4, "crop_pct": 1.0}, kw)
    _check_unused(name, {k: v for k, v in kw.items() if k not in ("T",)})
    ds = CIFAR(data_dir, n, train, transform)
    ds.info.img_size, ds.info.mean, ds.info.std = img_size, mean, std
    return ds


@register_dataset("imagefolder")
def _imagefolder(data_dir, train: bool, *, name: str, transform=None, img_size: int = 224, **kw):
    from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, ImageFolder

    mean, std = kw.pop("mean", None) or IMAGENET_MEAN, kw.pop("std", None) or IMAGENET_STD
    draft = kw.pop("draft_size", None)
    if transform is None:
        transform = build_train_eval_transforms(train, img_size, mean, std, {"crop": "rrc"}, kw)
    _check_unused(name, {k: v for k, v in kw.items() if k not in ("T",)})
    ds = ImageFolder(data_dir, train, transform, img_size=img_size, draft_size=draft)
    ds.info.mean, ds.info.std = mean, std
    return ds


def _event_transform(train: bool, event_aug: str | None):
    from .event_augment import (
        DVSAugment,
        EventHorizontalFlip,
        EventRoll,
        SNNAugmentWide,
    )

    if not train or event_aug in (None, "none", ""):
        return None
    table = {"flip": lambda: EventHorizontalFlip(0.5), "roll": lambda: EventRoll(5),
             "wide": lambda: SNNAugmentWide(), "flip+wide": lambda: DVSAugment(0.5, 0, True),
             "flip+roll": lambda: DVSAugment(0.5, 5, False)}
    if event_aug not in table:
        raise ConfigError(f"event_aug must be one of {sorted(table)} or 'none', got {event_aug!r}")
    return table[event_aug]()


@register_dataset("dvs128-gesture")
@register_dataset("cifar10-dvs")
def _events(data_dir, train: bool, *, name: str, transform=None, T: int = 16, split_by: str = "number",
            cache_dir=None, img_size: int | None = None, in_chans: int = 2, event_aug: str | None = None,
            progress: bool = False, **kw):
    from .cifar10_dvs import CIFAR10DVS
    from .dvs128_gesture import DVS128Gesture

    if transform is None:
        transform = _event_transform(train, event_aug)
    cls = DVS128Gesture if name == "dvs128-gesture" else CIFAR10DVS
    extra = _split_kw(kw, ("orientation", "train_ratio")) if cls is CIFAR10DVS else {}
    # image-only options that configs may carry for every dataset are ignored for events
    for k in _IMAGE_TRANSFORM_KEYS + ("mean", "std", "normalize"):
        kw.pop(k, None)
    _check_unused(name, kw)
    return cls(data_dir, train=train, T=T, split_by=split_by, cache_dir=cache_dir, img_size=img_size,
               in_chans=in_chans, transform=transform, progress=progress, **extra)


class _FashionMNIST:
    """Fashion-MNIST (IDX, read by :func:`load_fashion_mnist`) as a map-style dataset of normalised
    ``[1, 28, 28]`` images; train samples get the random crop (``padding``), flip and random
    erasing of the in-memory loader."""

    def __init__(self, data_dir, train: bool, transform=None, padding: int = 2, flip: bool = True,
                 erasing: float = 0.0, erasing_mode: str = "const"):
        from . import fashion_mnist as fm

        self.images, self.labels = load_fashion_mnist("train" if train else "test", data_dir)
        self.train, self.padding, self.flip, self.transform = train, padding, flip, transform
        check_erasing(erasing, erasing_mode)
        self.erasing, self.erasing_mode = erasing, erasing_mode
        self.mean, self.std = fm.MEAN, fm.STD
        self.info = DatasetInfo("fashion-mnist", num_classes=10, in_chans=1, img_size=28, classes=fm.CLASSES,
                                mean=(fm.MEAN,), std=(fm.STD,))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        import torch

        x = self.images[i].float().div(255.0).unsqueeze(0)
        if self.train and (self.padding or self.flip):
            x = random_crop_flip(x.unsqueeze(0), self.padding, self.flip, torch.default_generator)[0]
        x = (x - self.mean) / self.std
        if self.train and self.erasing > 0:
            x = random_erase(x.unsqueeze(0), self.erasing, torch.default_generator, self.erasing_mode)[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


@register_dataset("fashion-mnist")
def _fashion_mnist(data_dir, train: bool, *, name: str, transform=None, padding: int = 2, flip: bool = True,
                   random_erasing: float = 0.0, random_erasing_mode: str = "const", **kw):
    for k in _IMAGE_TRANSFORM_KEYS + ("mean", "std", "normalize", "img_size", "T"):
        kw.pop(k, None)
    _check_unused(name, kw)
    return _FashionMNIST(data_dir, train, transform, padding, flip, random_erasing, random_erasing_mode)


def build_dataset(name: str, data_dir, train: bool, **kw):
    """The ``train`` or test split of dataset ``name`` under ``data_dir`` (see :func:`list_datasets`).

    Image options: img_size, crop ('rrc' | 'pad' | 'none'), scale, ratio, padding, hflip,
    randaugment ('rand-m9-n1-mstd0.4-inc1'), random_erasing, random_erasing_mode, crop_pct,
    interpolation, mean, std, normalize, transform (replaces the built pipeline).
    Event options: T, split_by ('number' | 'time'), cache_dir, img_size, in_chans (2 | 3),
    event_aug ('flip' | 'roll' | 'wide' | 'flip+wide' | 'flip+roll'), orientation, progress.
    """
    key = name.lower().replace("_", "-")
    aliases = {"cifar-10": "cifar10", "cifar-100": "cifar100", "imagenet": "imagefolder",
               "dvs-gesture": "dvs128-gesture", "gesture": "dvs128-gesture", "cifar10dvs": "cifar10-dvs",
               "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
    key = aliases.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; known: {list_datasets()}")
    if data_dir is None and key in ("imagefolder", "dvs128-gesture", "cifar10-dvs"):
        layout = {"imagefolder": "imagefolder", "dvs128-gesture": "dvs128_gesture", "cifar10-dvs": "cifar10_dvs"}[key]
        import importlib
        raise DatasetNotFoundError(key, "(no --data-dir given)",
                                   importlib.import_module(f".{layout}", __name__).LAYOUT,
                                   "this dataset has no default location; pass --data-dir")
    return _REGISTRY[key](data_dir, train, name=key, **kw)


def build_datasets(name: str, data_dir, **kw):
    """``(train_dataset, test_dataset, info)``; augmentation options only affect the train split."""
    train = build_dataset(name, data_dir, True, **dict(kw))
    test = build_dataset(name, data_dir, False, **dict(kw))
    return train, test, train.info
