"""Train and test loaders for any registered dataset, single- or multi-process.

:func:`build_loaders` returns ``(train, test, info)``. Every loader has the same small interface
(``set_epoch``, ``len``, ``num_samples``, iteration over ``(x, y)`` batches). Fashion-MNIST is held
in memory as uint8 and augmented in whole batches (:class:`~spikeformers.data.loader.InMemoryLoader`);
every other dataset goes through a ``torch.utils.data.DataLoader``.

Several processes (``world_size`` > 1) read disjoint shards of every global batch: rank r of step s
reads block r of one permutation shared by all ranks, so N processes with batch B see exactly the
micro-batches one process with ``accum_steps = N`` sees (:class:`BlockShardSampler`).
"""

from __future__ import annotations

import torch

from . import fashion_mnist as fmnist
from .loader import InMemoryLoader
from .sampler import BlockShardSampler

__all__ = ["build_loaders", "EVENT_DATASETS", "IMAGE_ONLY_OPTIONS", "EVENT_ONLY_OPTIONS"]

EVENT_DATASETS = ("dvs128-gesture", "cifar10-dvs")
IMAGE_ONLY_OPTIONS = ("crop", "scale", "ratio", "hflip", "crop_pct", "interpolation", "randaugment",
                      "random_erasing", "random_erasing_mode", "mean", "std", "padding")
EVENT_ONLY_OPTIONS = ("split_by", "event_aug", "cache_dir", "in_chans", "T")


class _Loader:
    """A DataLoader with the ``set_epoch`` / ``num_samples`` interface of :class:`InMemoryLoader`."""

    def __init__(self, dataset, batch_size: int, train: bool, workers: int, sampler=None):
        from torch.utils.data import DataLoader

        self.dataset, self.sampler = dataset, sampler
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                 num_workers=workers, drop_last=train, persistent_workers=workers > 0,
                                 pin_memory=torch.cuda.is_available())

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader) * self.loader.batch_size if self.sampler is not None else len(self.dataset)

    def __iter__(self):
        return iter(self.loader)


def _dataset_options(name: str, options: dict) -> dict:
    """The ``build_dataset`` options that apply to dataset ``name`` (image or event options)."""
    events = name in EVENT_DATASETS
    kw = {k: v for k, v in options.items() if v is not None}
    kw = {k: v for k, v in kw.items() if not (events and k in IMAGE_ONLY_OPTIONS) and (events or k not in EVENT_ONLY_OPTIONS)}
    kw.pop("flip", None)   # Fashion-MNIST's in-memory flip; image datasets use hflip
    if not events and kw.get("crop") != "pad":
        kw.pop("padding", None)
    return kw


def build_loaders(name: str, data_dir=None, batch_size: int = 64, *, seed: int = 0, workers: int = 2,
                  eval_images: int | None = None, rank: int = 0, world_size: int = 1, accum_steps: int = 1,
                  test_batch_size: int | None = None, progress: bool = True, **options):
    """``(train_loader, test_loader, info)`` for dataset ``name``; ``info`` holds num_classes,
    in_chans, img_size, classes (and T for event data). ``options`` are the dataset's transform
    options (see :func:`~spikeformers.data.build_dataset`; Fashion-MNIST: padding, flip,
    random_erasing, random_erasing_mode). The test loader is complete on every rank."""
    from . import build_dataset

    sampler = None
    if name == "fashion-mnist":
        xtr, ytr = fmnist.load_fashion_mnist("train", data_dir)
        xte, yte = fmnist.load_fashion_mnist("test", data_dir)
        if eval_images is not None:
            xte, yte = xte[:eval_images], yte[:eval_images]
        if world_size > 1:
            sampler = BlockShardSampler(len(ytr), batch_size, rank, world_size, seed, shuffle=True, group=accum_steps)
        train = InMemoryLoader(xtr, ytr, batch_size, fmnist.MEAN, fmnist.STD, train=True, seed=seed, drop_last=True,
                               padding=options.get("padding", 0), flip=options.get("flip", False),
                               erasing=options.get("random_erasing", 0.0),
                               erasing_mode=options.get("random_erasing_mode", "const"), sampler=sampler)
        test = InMemoryLoader(xte, yte, test_batch_size or max(batch_size, 256), fmnist.MEAN, fmnist.STD)
        return train, test, {"num_classes": 10, "in_chans": 1, "img_size": 28, "classes": list(fmnist.CLASSES)}
    kw = _dataset_options(name, options)
    extra = {"progress": progress and rank == 0} if name in EVENT_DATASETS else {}
    train_ds = build_dataset(name, data_dir, True, **kw, **extra)
    test_ds = build_dataset(name, data_dir, False, **kw)
    if eval_images is not None:
        test_ds = torch.utils.data.Subset(test_ds, range(min(eval_images, len(test_ds))))
    info = train_ds.info
    sampler = BlockShardSampler(len(train_ds), batch_size, rank, world_size, seed, shuffle=True, group=accum_steps)
    train = _Loader(train_ds, batch_size, True, workers, sampler)
    test = _Loader(test_ds, test_batch_size or max(batch_size, 64), False, workers)
    out = {"num_classes": info.num_classes, "in_chans": info.in_chans, "img_size": info.img_size,
           "classes": list(info.classes)}
    if info.T is not None:
        out["T"] = info.T
    return train, test, out
