"""The training and evaluation engine: AdamW / LAMB, warm-up + cosine schedule, label smoothing,
mixup / cutmix, TET loss, an EMA of the weights, gradient accumulation, bf16 autocast, seeded runs,
a progress bar, a JSON-lines metrics log, atomic best/last checkpoints and ``resume`` of a killed run
from its last checkpoint.

Multi-process: under ``torchrun --nproc_per_node N -m spikeformers train ...`` (``WORLD_SIZE`` > 1)
the model is wrapped in DistributedDataParallel (NCCL on GPU, gloo on CPU), every rank reads its
own shard of each global batch, and rank 0 alone logs, evaluates and writes checkpoints. The
global batch is ``batch_size x world size x accum_steps``; rank r of step s reads block r of the
same global permutation, so N processes with batch B see exactly the micro-batches one process
with ``accum_steps = N`` sees (see :class:`~spikeformers.distributed.BlockShardSampler`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, load_train_state, load_weights, read_checkpoint,
                         save_checkpoint, save_train_state)
from . import distributed as dist_utils
from .data import InMemoryLoader, load_fashion_mnist
from .data import fashion_mnist as fmnist
from .data.mixup import Mixup
from .losses import classification_loss, tet_loss
from .models import create_model
from .optim import build_ema, build_optimizer

__all__ = ["TrainConfig", "fit", "evaluate", "build_data", "TrainingError", "resolve_precision"]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a resume that does not match, ...)."""


@dataclass
class TrainConfig:
    model: str = "a2os2a_fmnist"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3             # session 7: seeds 0-2 of the default model 90.81-91.27 % vs 90.00-90.98 % at 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_epochs: float = 0.25
    label_smoothing: float = 0.1
    padding: int = 0             # random-crop padding (pixels); 0 disables (the short default underfits)
    flip: bool = False           # random horizontal flip (off: the short default underfits)
    T: int | None = None         # time steps; None keeps the model's default
    seed: int = 0
    out: str = "runs/a2os2a_fmnist"
    resume: bool = False
    init_from: str | None = None  # start from these weights (a checkpoint of the same model), fresh optimizer and schedule
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    eval_images: int | None = None  # evaluate on the first N test images only (quick comparisons)
    model_kwargs: dict = field(default_factory=dict)
    # --- optimizer and schedule (paper recipes, configs/*.yaml) ---
    optimizer: str = "adamw"     # adamw | lamb | sgd | adam
    max_grad_norm: float | None = None  # LAMB's global-norm clip (timm default 1.0); None = off
    warmup_lr: float = 0.0       # warm-up starts here
    cooldown_epochs: int = 0     # epochs at min_lr after the cosine (included in `epochs`)
    sched_per: str = "step"      # "step" (per-iteration cosine) | "epoch" (timm: once per epoch)
    accum_steps: int = 1         # gradient accumulation: optimizer step every N micro-batches
    precision: str = "auto"      # auto | fp32 | bf16 (autocast on CPU and GPU); see resolve_precision
    fast_layers: bool = True     # 1x1 convs as matmuls + channels-last (speed.optimize; same weights)
    compile: bool = False        # torch.compile the training graph
    tet: bool = False            # TET loss on per-time-step logits (model built with tet=True)
    tet_means: float = 1.0
    tet_lamb: float = 0.001
    mixup: float = 0.0           # mixup alpha (0 = off)
    cutmix: float = 0.0          # cutmix alpha (0 = off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_off_epoch: int | None = None  # no mixup/cutmix from this epoch on
    # --- data pipeline (spikeformers.data.build_dataset options) ---
    img_size: int | None = None  # None: the dataset's own size
    in_chans: int | None = None  # event data: 2 (ON/OFF) or 3 (ON/OFF/sum)
    crop: str | None = None      # rrc | pad | none (default per dataset)
    scale: list | None = None
    ratio: list | None = None
    hflip: float | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    randaugment: str | None = None   # e.g. "rand-m9-n1-mstd0.4-inc1"
    random_erasing: float = 0.0
    random_erasing_mode: str = "const"
    mean: list | None = None
    std: list | None = None
    split_by: str = "number"     # event frames: "number" | "time"
    event_aug: str | None = None  # flip | roll | wide | flip+wide | flip+roll
    cache_dir: str | None = None
    workers: int = 2             # DataLoader worker processes (non-Fashion-MNIST data)
    sync_bn: bool = False        # SyncBatchNorm across processes (GPU only)
    ema: float = 0.0             # EMA decay of the weights (e.g. 0.9998; 0 = off): evaluated, kept as best
    ema_raw_every: int = 1       # with EMA: also test the trained weights every N epochs (and at the last)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_DATA_KEYS = ("img_size", "in_chans", "crop", "scale", "ratio", "hflip", "crop_pct", "interpolation",
              "randaugment", "random_erasing", "random_erasing_mode", "mean", "std", "split_by",
              "event_aug", "cache_dir")
_IMAGE_ONLY = ("crop", "scale", "ratio", "hflip", "crop_pct", "interpolation", "randaugment",
               "random_erasing", "random_erasing_mode", "mean", "std", "padding")
_EVENT_ONLY = ("split_by", "event_aug", "cache_dir", "in_chans", "T")


def dataset_options(cfg: TrainConfig) -> dict:
    """The ``build_dataset`` keyword arguments ``cfg`` sets for its dataset."""
    events = cfg.data in ("dvs128-gesture", "cifar10-dvs")
    kw = {k: getattr(cfg, k) for k in _DATA_KEYS if getattr(cfg, k) is not None}
    kw = {k: v for k, v in kw.items() if not (events and k in _IMAGE_ONLY) and (events or k not in _EVENT_ONLY)}
    if events and cfg.T is not None:
        kw["T"] = cfg.T
    if not events and cfg.crop == "pad":
        kw["padding"] = cfg.padding
    return kw


def build_data(cfg: TrainConfig, rank: int = 0, world_size: int = 1):
    """``(train_loader, test_loader, info)`` for ``cfg.data``; ``info`` has num_classes, in_chans,
    img_size (and T for event data). Under several processes the train loader yields this rank's
    shard of every global batch; the test loader is complete (rank 0 evaluates)."""
    if cfg.data != "fashion-mnist" or world_size > 1:
        return _build_generic_data(cfg, rank, world_size)
    xtr, ytr = load_fashion_mnist("train", cfg.data_dir)
    xte, yte = load_fashion_mnist("test", cfg.data_dir)
    if cfg.eval_images is not None:
        xte, yte = xte[:cfg.eval_images], yte[:cfg.eval_images]
    train = InMemoryLoader(xtr, ytr, cfg.batch_size, fmnist.MEAN, fmnist.STD, train=True,
                           padding=cfg.padding, flip=cfg.flip, seed=cfg.seed, drop_last=True,
                           erasing=cfg.random_erasing, erasing_mode=cfg.random_erasing_mode)
    test = InMemoryLoader(xte, yte, max(cfg.batch_size, 256), fmnist.MEAN, fmnist.STD)
    return train, test, {"num_classes": 10, "in_chans": 1, "img_size": 28, "classes": list(fmnist.CLASSES)}


class _Loader:
    """A DataLoader with the ``set_epoch`` / ``num_samples`` interface of :class:`InMemoryLoader`."""

    def __init__(self, dataset, batch_size: int, train: bool, workers: int, seed: int, rank: int,
                 world_size: int, accum_steps: int = 1):
        from torch.utils.data import DataLoader

        self.dataset = dataset
        self.sampler = (dist_utils.BlockShardSampler(len(dataset), batch_size, rank, world_size, seed,
                                                      shuffle=True, group=accum_steps) if train else None)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, shuffle=False,
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


def _build_generic_data(cfg: TrainConfig, rank: int, world_size: int):
    from .data import build_dataset

    kw = dataset_options(cfg)
    if cfg.data == "fashion-mnist":
        kw = {"padding": cfg.padding, "flip": cfg.flip, "random_erasing": cfg.random_erasing,
              "random_erasing_mode": cfg.random_erasing_mode}
    train_ds = build_dataset(cfg.data, cfg.data_dir, True, progress=rank == 0, **kw) \
        if cfg.data in ("dvs128-gesture", "cifar10-dvs") else build_dataset(cfg.data, cfg.data_dir, True, **kw)
    test_ds = build_dataset(cfg.data, cfg.data_dir, False, **kw)
    if cfg.eval_images is not None:
        test_ds = torch.utils.data.Subset(test_ds, range(min(cfg.eval_images, len(test_ds))))
    info = train_ds.info
    train = _Loader(train_ds, cfg.batch_size, True, cfg.workers, cfg.seed, rank, world_size, cfg.accum_steps)
    test = _Loader(test_ds, max(cfg.batch_size, 64), False, cfg.workers, cfg.seed, 0, 1)
    out = {"num_classes": info.num_classes, "in_chans": info.in_chans, "img_size": info.img_size,
           "classes": list(info.classes)}
    if info.T is not None:
        out["T"] = info.T
    return train, test, out


def lr_schedule(cfg: TrainConfig, step: int, steps_per_epoch: int, total: int) -> float:
    """Warm-up from ``warmup_lr`` then cosine to ``min_lr``, held for ``cooldown_epochs``.
    ``sched_per='epoch'`` evaluates it at whole epochs (timm's per-epoch stepping)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    cosine_end = max(1, total - cfg.cooldown_epochs * steps_per_epoch)
    if cfg.sched_per == "epoch":
        e = step // max(steps_per_epoch, 1)
        step, warmup = e * steps_per_epoch, int(round(cfg.warmup_epochs)) * steps_per_epoch
        if step < warmup:
            return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup
        # timm CosineLRScheduler (warmup_prefix=False): the warm-up overlays the cosine's start
        p = min(1.0, step / cosine_end)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))
    elif step < warmup and cfg.warmup_lr > 0:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup
    return lr_at(step, cosine_end, warmup, cfg.lr, cfg.min_lr)


def lr_at(step: int, total: int, warmup: int, base: float, min_lr: float) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine from ``base`` to ``min_lr``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, desc: str = "eval", progress: bool = True,
             tta_flip: bool = False) -> dict:
    """Mean cross-entropy and top-1 accuracy (%) of ``model`` over ``loader``. ``tta_flip``
    averages the logits of each image and its horizontal mirror (test-time augmentation; twice
    the cost; never used during training)."""
    model.eval()
    n, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    device = next(model.parameters()).device
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = _logits(model, x)
        if tta_flip:
            logits = (logits + _logits(model, x.flip(-1))) / 2
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        n += len(y)
    return {"loss": loss_sum / max(n, 1), "acc": 100.0 * correct / max(n, 1),
            "img_s": n / max(time.perf_counter() - t0, 1e-9), "n": n}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return logits.mean(0) if logits.ndim == 3 else logits   # TET models: per-time-step [T, B, K]


def _check_logits(logits: torch.Tensor, y: torch.Tensor, step: int, lr: float, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} at step {step} (lr {lr:.3g}): training diverged. "
                            "Expected a finite loss; lower --lr, check the input data for NaN/inf, "
                            "or resume from the last good checkpoint with --resume.")


_BF16_PROBE: dict[str, bool] = {}


def _bf16_matmul_faster(n: int = 1024, margin: float = 1.1) -> bool:
    """True when a bf16 matmul beats float32 by ``margin`` on this CPU (measured once per process,
    about 0.1 s with ``bench.matmul_peak``). CPUs with AVX512-BF16 but without AMX differ: on an
    AMD EPYC the issue measured bf16 at 2.5x float32, on a 2-core Xeon here without AMX bf16 ran at
    0.64x (152 vs 239 GFLOP/s) and the default model trained 20 % slower under bf16 autocast."""
    if "cpu" not in _BF16_PROBE:
        from .bench import matmul_peak
        _BF16_PROBE["cpu"] = matmul_peak(torch.bfloat16, n=n, reps=3) > margin * matmul_peak(
            torch.float32, n=n, reps=3)
    return _BF16_PROBE["cpu"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where bfloat16 is the faster number format, else ``"fp32"``; other
    values are returned as they are. A CUDA GPU: bf16 where supported. A CPU: bf16 with AMX; with
    AVX512-BF16 alone, bf16 only when a short matmul probe measures it faster than float32 (it is
    on some CPUs and not on others); without either, bf16 is emulated and fp32 is chosen. bf16
    autocast trains the default Fashion-MNIST recipe to the float32 accuracy within the seed spread
    (README, "Performance")."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            return "bf16"
        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            return "bf16" if _bf16_matmul_faster() else "fp32"
        return "fp32"
    return "fp32"


def init_weights(model: torch.nn.Module, path: str, name: str) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (registered as ``name``) for a new run
    (fine-tuning, a warm restart); clear errors if it holds another model or other shapes."""
    state, meta = read_checkpoint(path)
    held = (meta.get("config") or {}).get("name", meta.get("model"))
    if held != name:
        raise TrainingError(f"--init-from {path} holds model {held!r}, this run trains {name!r}; "
                            "expected a checkpoint of the same model")
    load_weights(model, state, source=str(path))


def fit(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics. Writes into ``cfg.out``:
    ``metrics.jsonl``, ``last.safetensors`` / ``best.safetensors`` (+ ``.json`` sidecars) and
    ``last.state.pt`` (optimizer, schedule position and RNG, for ``resume``).

    With ``cfg.ema`` > 0 an exponential moving average of the weights (:func:`~spikeformers.optim.build_ema`)
    is updated after every optimizer step and also written each epoch to ``ema.safetensors``; the
    logged ``test_acc`` / ``test_loss`` are then the EMA weights' (the trained weights' are
    ``test_acc_raw`` / ``test_loss_raw``), and ``best.safetensors`` holds the best EMA weights."""
    from .bench import cpu_name
    _check_config(cfg)
    ctx = dist_utils.init_distributed()
    # every rank must train in the same format; "auto" may rest on a timing probe, so rank 0 decides
    cfg = replace(cfg, precision=dist_utils.from_rank0(ctx, resolve_precision(cfg.precision, ctx.device)))
    progress = progress and ctx.is_main
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    if ctx.enabled and not ctx.is_main:  # rank 0 builds any on-disk cache first
        dist_utils.barrier(ctx)
    train_loader, test_loader, info = build_data(cfg, ctx.rank, ctx.world_size)
    if ctx.enabled and ctx.is_main:
        dist_utils.barrier(ctx)
    overrides = {"num_classes": info["num_classes"], "in_chans": info["in_chans"],
                 "img_size": info["img_size"], **cfg.model_kwargs}
    if cfg.T is not None:
        overrides["T"] = cfg.T
    if cfg.tet:
        overrides["tet"] = True
    model = create_model(cfg.model, **overrides).to(ctx.device)
    if cfg.fast_layers:
        from .speed import optimize
        optimize(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on BN, biases, PLIF w
    opt = build_optimizer(cfg.optimizer, [{"params": decay, "weight_decay": cfg.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                          weight_decay=cfg.weight_decay,
                          **({"max_grad_norm": cfg.max_grad_norm} if cfg.optimizer == "lamb" else {}))
    steps_per_epoch = len(train_loader) // cfg.accum_steps
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    mixer = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixer = Mixup(info["num_classes"], cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob,
                      cfg.label_smoothing)
    autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else None

    start_epoch, step, best_acc, best_raw = 0, 0, -1.0, -1.0
    elapsed_before = 0.0  # wall seconds spent by the earlier processes of a resumed run
    state_path = out / "last.state.pt"
    if cfg.resume and state_path.is_file():
        st = load_train_state(state_path)
        saved = st.get("config", {})
        for key in ("model", "data", "epochs", "batch_size", "T", "seed", "ema"):
            if saved.get(key, 0.0 if key == "ema" else None) != getattr(cfg, key):
                raise TrainingError(f"cannot resume {out}: it was started with {key}={saved.get(key)!r}, "
                                    f"this run asks for {key}={getattr(cfg, key)!r}. Use the same options or a new --out.")
        weights, _ = read_checkpoint(out / "last.safetensors")
        load_weights(model, weights, source=str(out / "last.safetensors"))
        model.to(ctx.device)
        opt.load_state_dict(st["optimizer"])
        start_epoch, step, best_acc = st["epoch"] + 1, st["step"], st["best_acc"]
        best_raw = st.get("best_acc_raw", -1.0)
        elapsed_before = (st["elapsed_s"] if "elapsed_s" in st
                          else _logged_elapsed(out / "metrics.jsonl", st["epoch"] + 1))
        torch.set_rng_state(st["torch_rng"])
        if progress:
            print(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs} (step {step}, best {best_acc:.2f} %)")
    elif cfg.resume and progress:
        print(f"--resume: no checkpoint in {out} yet, starting from scratch")
    if cfg.init_from and start_epoch == 0:
        init_weights(model, cfg.init_from, cfg.model)
        model.to(ctx.device)
        if progress:
            print(f"weights from {cfg.init_from}; optimizer and schedule start afresh")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    net = model  # what the loop calls; `model` stays the bare module (eval, checkpoints)
    if cfg.compile:
        net = torch.compile(model)
    if ctx.enabled:
        if cfg.sync_bn:
            if ctx.device.type != "cuda":
                raise TrainingError("sync_bn needs GPUs: torch's SyncBatchNorm has no CPU kernel. "
                                    "Expected a CUDA run, or drop --sync-bn / sync_bn on CPU.")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)
    ema = _make_ema(cfg, model, out, step, ctx.device)

    n_params = sum(p.numel() for p in model.parameters())
    if progress and start_epoch == 0:
        n_test = len(test_loader.labels) if hasattr(test_loader, "labels") else test_loader.num_samples
        print(f"model {cfg.model}: {n_params:,} parameters, T={model.T}; data {cfg.data}: "
              f"{train_loader.num_samples * ctx.world_size} train / {n_test} test; {cfg.epochs} epochs, "
              f"batch {cfg.batch_size} x {ctx.world_size} process(es) x {cfg.accum_steps} accumulation, "
              f"{cfg.optimizer}, {cfg.precision}, {torch.get_num_threads()} threads, device {ctx.device}"
              f"{f' ({cpu_name()})' if ctx.device.type == 'cpu' else ''}")
    metrics = {}
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        net.train()
        train_loader.set_epoch(epoch)
        if mixer is not None:
            mixer.enabled = cfg.mixup_off_epoch is None or epoch < cfg.mixup_off_epoch
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        micro = 0
        opt.zero_grad(set_to_none=True)
        for x, y in bar:
            lr = lr_schedule(cfg, step, steps_per_epoch, cfg.epochs * steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            target = y
            if mixer is not None:
                x, target = mixer(x, y)
            last_micro = (micro + 1) % cfg.accum_steps == 0
            sync = contextlib.nullcontext() if last_micro or not ctx.enabled else net.no_sync()
            with sync:
                with torch.autocast(ctx.device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    logits = net(x)
                loss = compute_loss(cfg, logits.float(), target)
                _check_logits(logits, y, step, lr, loss)
                (loss / cfg.accum_steps).backward()
            micro += 1
            if logits.ndim == 3:
                logits = logits.mean(0)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.detach().argmax(-1) == y).sum().item()
            if not last_micro:
                continue
            opt.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}", lr=f"{lr:.2e}", refresh=False)
            if step >= total:
                break
        bar.close()
        train_time = time.perf_counter() - t0
        if not ctx.is_main:  # rank 0 evaluates, logs and writes checkpoints
            dist_utils.barrier(ctx)
            continue
        test_raw = ema is None or (epoch + 1) % cfg.ema_raw_every == 0 or epoch + 1 == cfg.epochs
        ev = evaluate(model, test_loader, desc="test", progress=progress) if test_raw else None
        raw = {}
        if ema is not None:
            if test_raw:
                raw = {"test_loss_raw": ev["loss"], "test_acc_raw": ev["acc"]}
                best_raw = max(best_raw, ev["acc"])
            ev = evaluate(ema.module, test_loader, desc="test (EMA)", progress=progress)
        metrics = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
                   "train_acc": 100 * correct / max(seen, 1), "test_loss": ev["loss"], "test_acc": ev["acc"],
                   **raw, "lr": lr, "train_img_s": seen / max(train_time, 1e-9), "epoch_time_s": train_time,
                   "elapsed_s": elapsed_before + time.perf_counter() - t_start}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        info_ck = {"epoch": epoch + 1, "step": step, "metrics": metrics, "train_config": asdict(cfg)}
        save_checkpoint(out / "last.safetensors", model, **info_ck)
        kept = model
        if ema is not None:
            kept = ema.module
            save_checkpoint(out / "ema.safetensors", kept, **info_ck, ema_decay=cfg.ema)
        if ev["acc"] > best_acc:
            best_acc = ev["acc"]
            save_checkpoint(out / "best.safetensors", kept, **info_ck)
        save_train_state(state_path, {"optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                                      "best_acc": best_acc, "best_acc_raw": best_raw,
                                      "elapsed_s": metrics["elapsed_s"],
                                      "torch_rng": torch.get_rng_state(), "config": asdict(cfg)})
        dist_utils.barrier(ctx)
        if progress:
            ema_txt = "" if ema is None else " with EMA weights" + (f" (raw {raw['test_acc_raw']:.2f} %)" if raw else "")
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {metrics['train_loss']:.4f} "
                  f"acc {metrics['train_acc']:.2f} % | test loss {ev['loss']:.4f} acc {ev['acc']:.2f} %{ema_txt} "
                  f"(best {best_acc:.2f} %) | {metrics['train_img_s']:.0f} img/s")
    dist_utils.cleanup(ctx)
    if not ctx.is_main:
        return {}
    metrics["best_test_acc"] = best_acc
    if ema is not None:
        metrics["best_test_acc_raw"] = best_raw
    metrics["wall_s"] = time.perf_counter() - t_start
    metrics["earlier_processes_s"] = elapsed_before   # 0.0 unless this process resumed a killed run
    return metrics


def _logged_elapsed(metrics_path: Path, epoch: int) -> float:
    """``elapsed_s`` of ``epoch`` in a run's metrics log: where a state file written before the state kept
    the elapsed time (session 9) finds it; 0.0 when the log has no such line."""
    if not metrics_path.is_file():
        return 0.0
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return next((m.get("elapsed_s", 0.0) for m in reversed(lines) if m.get("epoch") == epoch), 0.0)


def _make_ema(cfg: TrainConfig, model: torch.nn.Module, out: Path, step: int, device):
    """The EMA of ``model`` when ``cfg.ema`` is on (None otherwise); on a resumed run (``step`` > 0)
    its weights come back from ``out/ema.safetensors``."""
    if not cfg.ema:
        return None
    ema = build_ema(model, cfg.ema)
    if step > 0:
        path = out / "ema.safetensors"
        if not path.is_file():
            raise TrainingError(f"cannot resume {out} with ema={cfg.ema}: {path} is missing (was the run "
                                "started without EMA?). Expected the EMA weights written by each epoch.")
        weights, _ = read_checkpoint(path)
        load_weights(ema.module, weights, source=str(path))
        ema.module.to(device)
        ema.n_averaged.fill_(step)
    return ema


def compute_loss(cfg: TrainConfig, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft-target CE after mixup, label-smoothed CE otherwise; TET over ``[T, B, K]`` logits."""
    if logits.ndim == 3:
        if not cfg.tet:
            raise TrainingError(f"the model returned per-time-step logits {list(logits.shape)} but tet is off")
        return tet_loss(logits, target, lambda o, t: classification_loss(o, t, cfg.label_smoothing),
                        cfg.tet_means, cfg.tet_lamb)
    return classification_loss(logits, target, cfg.label_smoothing)


def _check_config(cfg: TrainConfig) -> None:
    if cfg.accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {cfg.accum_steps}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {cfg.precision!r}")
    if cfg.eval_images is not None and cfg.eval_images < 1:
        raise ValueError(f"eval_images must be >= 1 (or None for the whole test set), got {cfg.eval_images}")
    if cfg.ema_raw_every < 1:
        raise ValueError(f"ema_raw_every must be >= 1 (epochs), got {cfg.ema_raw_every}")
    if cfg.ema and not 0.0 < cfg.ema < 1.0:
        raise ValueError(f"ema must be a decay in (0, 1) such as 0.9998, or 0 for off; got {cfg.ema}")
    if cfg.sched_per not in ("step", "epoch"):
        raise ValueError(f"sched_per must be 'step' or 'epoch', got {cfg.sched_per!r}")
