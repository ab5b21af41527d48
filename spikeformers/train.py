"""The training and evaluation engine: AdamW, warm-up + cosine schedule, label smoothing,
augmentation, seeded runs, a progress bar, a JSON-lines metrics log, atomic best/last checkpoints
and ``resume`` of a killed run from its last checkpoint."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import (CheckpointError, load_train_state, load_weights, read_checkpoint,
                         save_checkpoint, save_train_state)
from .data import InMemoryLoader, load_fashion_mnist
from .data import fashion_mnist as fmnist
from .models import create_model

__all__ = ["TrainConfig", "fit", "evaluate", "build_data", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a resume that does not match, ...)."""


@dataclass
class TrainConfig:
    model: str = "a2os2a_fmnist"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_epochs: float = 0.25
    label_smoothing: float = 0.1
    padding: int = 2             # random-crop padding (pixels); 0 disables
    flip: bool = True            # random horizontal flip
    T: int | None = None         # time steps; None keeps the model's default
    seed: int = 0
    out: str = "runs/a2os2a_fmnist"
    resume: bool = False
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    model_kwargs: dict = field(default_factory=dict)

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


def build_data(cfg: TrainConfig):
    """``(train_loader, test_loader, info)`` for ``cfg.data``; ``info`` has num_classes, in_chans,
    img_size."""
    if cfg.data != "fashion-mnist":
        raise ValueError(f"unknown dataset {cfg.data!r}; expected 'fashion-mnist'")
    xtr, ytr = load_fashion_mnist("train", cfg.data_dir)
    xte, yte = load_fashion_mnist("test", cfg.data_dir)
    train = InMemoryLoader(xtr, ytr, cfg.batch_size, fmnist.MEAN, fmnist.STD, train=True,
                           padding=cfg.padding, flip=cfg.flip, seed=cfg.seed, drop_last=True)
    test = InMemoryLoader(xte, yte, max(cfg.batch_size, 256), fmnist.MEAN, fmnist.STD)
    return train, test, {"num_classes": 10, "in_chans": 1, "img_size": 28, "classes": list(fmnist.CLASSES)}


def lr_at(step: int, total: int, warmup: int, base: float, min_lr: float) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine from ``base`` to ``min_lr``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, desc: str = "eval", progress: bool = True) -> dict:
    """Mean cross-entropy and top-1 accuracy (%) of ``model`` over ``loader``."""
    model.eval()
    n, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for x, y in bar:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        n += len(y)
    return {"loss": loss_sum / max(n, 1), "acc": 100.0 * correct / max(n, 1),
            "img_s": n / max(time.perf_counter() - t0, 1e-9), "n": n}


def _check_logits(logits: torch.Tensor, y: torch.Tensor, step: int, lr: float, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {loss.item()} at step {step} (lr {lr:.3g}): training diverged. "
                            "Expected a finite loss; lower --lr, check the input data for NaN/inf, "
                            "or resume from the last good checkpoint with --resume.")


def fit(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics. Writes into ``cfg.out``:
    ``metrics.jsonl``, ``last.safetensors`` / ``best.safetensors`` (+ ``.json`` sidecars) and
    ``last.state.pt`` (optimizer, schedule position and RNG, for ``resume``)."""
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    train_loader, test_loader, info = build_data(cfg)
    overrides = {"num_classes": info["num_classes"], "in_chans": info["in_chans"],
                 "img_size": info["img_size"], **cfg.model_kwargs}
    if cfg.T is not None:
        overrides["T"] = cfg.T
    model = create_model(cfg.model, **overrides)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on BN, biases, PLIF w
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    start_epoch, step, best_acc = 0, 0, -1.0
    state_path = out / "last.state.pt"
    if cfg.resume and state_path.is_file():
        st = load_train_state(state_path)
        saved = st.get("config", {})
        for key in ("model", "data", "epochs", "batch_size", "T", "seed"):
            if saved.get(key) != getattr(cfg, key):
                raise TrainingError(f"cannot resume {out}: it was started with {key}={saved.get(key)!r}, "
                                    f"this run asks for {key}={getattr(cfg, key)!r}. Use the same options or a new --out.")
        weights, _ = read_checkpoint(out / "last.safetensors")
        load_weights(model, weights, source=str(out / "last.safetensors"))
        opt.load_state_dict(st["optimizer"])
        start_epoch, step, best_acc = st["epoch"] + 1, st["step"], st["best_acc"]
        torch.set_rng_state(st["torch_rng"])
        if progress:
            print(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs} (step {step}, best {best_acc:.2f} %)")
    elif cfg.resume and progress:
        print(f"--resume: no checkpoint in {out} yet, starting from scratch")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    n_params = sum(p.numel() for p in model.parameters())
    if progress and start_epoch == 0:
        print(f"model {cfg.model}: {n_params:,} parameters, T={model.T}; data {cfg.data}: "
              f"{train_loader.num_samples} train / {len(test_loader.labels)} test; {cfg.epochs} epochs, "
              f"batch {cfg.batch_size}, {torch.get_num_threads()} threads")
    metrics = {}
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if step >= total:
            break
        model.train()
        train_loader.set_epoch(epoch)
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        for x, y in bar:
            lr = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            _check_logits(logits, y, step, lr, loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.detach().argmax(-1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}", lr=f"{lr:.2e}", refresh=False)
            if step >= total:
                break
        bar.close()
        train_time = time.perf_counter() - t0
        ev = evaluate(model, test_loader, desc="test", progress=progress)
        metrics = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
                   "train_acc": 100 * correct / max(seen, 1), "test_loss": ev["loss"], "test_acc": ev["acc"],
                   "lr": lr, "train_img_s": seen / max(train_time, 1e-9), "epoch_time_s": train_time,
                   "elapsed_s": time.perf_counter() - t_start}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        info_ck = {"epoch": epoch + 1, "step": step, "metrics": metrics, "train_config": asdict(cfg)}
        save_checkpoint(out / "last.safetensors", model, **info_ck)
        if ev["acc"] > best_acc:
            best_acc = ev["acc"]
            save_checkpoint(out / "best.safetensors", model, **info_ck)
        save_train_state(state_path, {"optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                                      "best_acc": best_acc, "torch_rng": torch.get_rng_state(),
                                      "config": asdict(cfg)})
        if progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {metrics['train_loss']:.4f} "
                  f"acc {metrics['train_acc']:.2f} % | test loss {ev['loss']:.4f} acc {ev['acc']:.2f} % "
                  f"(best {best_acc:.2f} %) | {metrics['train_img_s']:.0f} img/s")
    metrics["best_test_acc"] = best_acc
    metrics["wall_s"] = time.perf_counter() - t_start
    return metrics
