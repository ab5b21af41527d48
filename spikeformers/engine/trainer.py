"""The training engine: :class:`Trainer` runs one :class:`~spikeformers.engine.config.TrainConfig`.

AdamW / LAMB, warm-up + cosine schedule, label smoothing, mixup / cutmix, TET loss, an EMA of the
weights, gradient accumulation, bf16 autocast, seeded runs, a progress bar, a JSON-lines metrics log,
atomic best / last checkpoints and ``resume`` of a killed run from its last checkpoint.

The phases, each a short method::

    Trainer(cfg).fit()
      setup()        processes, precision, seed, data, model, optimizer, schedule, mixup
      resume()       weights, optimizer, position and RNG of a killed run (``runtime.resume``)
      wrap()         torch.compile / DistributedDataParallel around the bare model
      for each epoch:
        train_epoch()  one pass over the training shard
        evaluate()     the test set (the EMA weights too, when on)
        save()         metrics line, checkpoints, optimizer state

Multi-process: under ``torchrun --nproc_per_node N -m spikeformers train ...`` (``WORLD_SIZE`` > 1)
the model is wrapped in DistributedDataParallel (NCCL on GPU, gloo on CPU), every rank reads its
own shard of each global batch, and rank 0 alone logs, evaluates and writes checkpoints. The
global batch is ``batch_size x world size x accum_steps``; N processes with batch B see exactly the
micro-batches one process with ``accum_steps = N`` sees (see
:class:`~spikeformers.data.sampler.BlockShardSampler`).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..accel import optimize
from ..data.loaders import EVENT_DATASETS, build_loaders
from ..data.mixup import Mixup
from ..errors import TrainingError, UnsupportedError
from ..models import create_model
from . import distributed as dist_utils
from .checkpoint import (
    load_train_state,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    save_train_state,
)
from .config import TrainConfig
from .evaluate import evaluate
from .hardware import cpu_name, resolve_precision
from .losses import training_loss
from .optim import build_ema, build_optimizer
from .schedule import lr_schedule

__all__ = ["Trainer", "fit", "seed_everything", "init_weights", "data_loaders"]

# options a resumed run must share with the run it continues
_RESUME_KEYS = ("model", "data", "epochs", "batch_size", "T", "seed", "ema")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_loaders(cfg: TrainConfig, rank: int = 0, world_size: int = 1, progress: bool = True):
    """``(train, test, info)`` for ``cfg``'s data and augmentation (see
    :func:`~spikeformers.data.loaders.build_loaders`)."""
    d, a = cfg.data, cfg.augment
    options = {k: getattr(a, k) for k in ("padding", "flip", "crop", "scale", "ratio", "hflip", "crop_pct",
                                          "interpolation", "randaugment", "random_erasing", "random_erasing_mode",
                                          "event_aug")}
    options.update(img_size=d.img_size, in_chans=d.in_chans, mean=d.mean, std=d.std, split_by=d.split_by,
                   cache_dir=d.cache_dir)
    if d.name in EVENT_DATASETS and cfg.model.T is not None:
        options["T"] = cfg.model.T
    return build_loaders(d.name, d.dir, d.batch_size, seed=cfg.runtime.seed, workers=d.workers,
                         eval_images=d.eval_images, rank=rank, world_size=world_size,
                         accum_steps=cfg.optim.accum_steps, progress=progress, **options)


def init_weights(model: torch.nn.Module, path: str, name: str) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (registered as ``name``) for a new run
    (fine-tuning, a warm restart); clear errors if it holds another model or other shapes."""
    state, meta = read_checkpoint(path)
    held = (meta.get("config") or {}).get("name", meta.get("model"))
    if held != name:
        raise TrainingError(f"--init-from {path} holds model {held!r}, this run trains {name!r}; "
                            "expected a checkpoint of the same model")
    load_weights(model, state, source=str(path))


class Trainer:
    """Trains ``cfg.model`` on ``cfg.data`` into the run folder ``cfg.out``: ``config.json``,
    ``metrics.jsonl``, ``last.safetensors`` / ``best.safetensors`` (+ ``.json`` sidecars) and
    ``last.state.pt`` (optimizer, schedule position and RNG, for ``resume``).

    With ``optim.ema`` > 0 an exponential moving average of the weights
    (:func:`~spikeformers.engine.optim.build_ema`) is updated after every optimizer step and
    written each epoch to ``ema.safetensors``; the logged ``test_acc`` / ``test_loss`` are then the
    EMA weights' (the trained weights' are ``test_acc_raw`` / ``test_loss_raw``), and
    ``best.safetensors`` holds the best EMA weights."""

    def __init__(self, cfg: TrainConfig, progress: bool = True):
        cfg.check()
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        self.state_path = self.out / "last.state.pt"
        self.start_epoch, self.step = 0, 0
        self.best_acc, self.best_raw = -1.0, -1.0
        self.earlier_s = 0.0  # wall seconds spent by the earlier processes of a resumed run
        self.ema = None
        self.tb = None        # the TensorBoard writer (runtime.log == "tensorboard")
        if cfg.runtime.log == "tensorboard":
            _tensorboard_writer_class()   # fail before any work when the package is missing

    # ------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Processes, precision, seed, data, model, optimizer, schedule length, mixup."""
        self.ctx = ctx = dist_utils.init_distributed()
        # every rank must train in the same format; "auto" may rest on a timing probe, so rank 0 decides
        precision = dist_utils.from_rank0(ctx, resolve_precision(self.cfg.runtime.precision, ctx.device))
        self.cfg = cfg = self.cfg.replace(precision=precision)
        self.progress = self.progress and ctx.is_main
        seed_everything(cfg.runtime.seed)
        if ctx.enabled and not ctx.is_main:  # rank 0 builds any on-disk cache first
            dist_utils.barrier(ctx)
        self.train_loader, self.test_loader, self.info = data_loaders(cfg, ctx.rank, ctx.world_size, self.progress)
        if ctx.enabled and ctx.is_main:
            dist_utils.barrier(ctx)
        info = self.info
        overrides = {"num_classes": info["num_classes"], "in_chans": info["in_chans"], "img_size": info["img_size"],
                     **cfg.model.kwargs}
        if cfg.model.T is not None:
            overrides["T"] = cfg.model.T
        if cfg.model.tet:
            overrides["tet"] = True
        self.model = create_model(cfg.model.name, **overrides).to(ctx.device)
        if cfg.runtime.fast_layers:
            optimize(self.model)
        o = cfg.optim
        self.opt = build_optimizer(o.optimizer, self.model, lr=o.lr, weight_decay=o.weight_decay,
                                   **({"max_grad_norm": o.max_grad_norm} if o.optimizer == "lamb" else {}))
        self.steps_per_epoch = len(self.train_loader) // o.accum_steps
        self.total = cfg.schedule.epochs * self.steps_per_epoch
        if cfg.schedule.max_steps is not None:
            self.total = min(self.total, cfg.schedule.max_steps)
        a = cfg.augment
        self.mixer = None
        if a.mixup > 0 or a.cutmix > 0:
            self.mixer = Mixup(info["num_classes"], a.mixup, a.cutmix, a.mixup_prob, a.mixup_switch_prob,
                               o.label_smoothing)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None

    def resume(self) -> None:
        """Continue the run in ``out`` when ``runtime.resume`` is set and it has a state file; else
        start from ``model.init_from``'s weights when given."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.runtime.resume and self.state_path.is_file():
            st = load_train_state(self.state_path)
            saved = TrainConfig.from_dict(st.get("config", {}))
            for key in _RESUME_KEYS:
                if saved.get(key) != cfg.get(key):
                    raise TrainingError(f"cannot resume {self.out}: it was started with {key}={saved.get(key)!r}, "
                                        f"this run asks for {key}={cfg.get(key)!r}. Use the same options or a new --out.")
            last = self.out / "last.safetensors"
            weights, _ = read_checkpoint(last)
            load_weights(self.model, weights, source=str(last))
            self.model.to(ctx.device)
            self.opt.load_state_dict(st["optimizer"])
            self.start_epoch, self.step, self.best_acc = st["epoch"] + 1, st["step"], st["best_acc"]
            self.best_raw = st.get("best_acc_raw", -1.0)
            self.earlier_s = st.get("elapsed_s", 0.0)
            torch.set_rng_state(st["torch_rng"])
            self._say(f"resuming {self.out} at epoch {self.start_epoch + 1}/{cfg.schedule.epochs} "
                      f"(step {self.step}, best {self.best_acc:.2f} %)")
        elif cfg.runtime.resume:
            self._say(f"--resume: no checkpoint in {self.out} yet, starting from scratch")
        if cfg.model.init_from and self.start_epoch == 0:
            init_weights(self.model, cfg.model.init_from, cfg.model.name)
            self.model.to(ctx.device)
            self._say(f"weights from {cfg.model.init_from}; optimizer and schedule start afresh")
        self.ema = self._make_ema()

    def wrap(self) -> None:
        """``self.net``, what the loop calls: the bare model, compiled and / or under DDP;
        ``self.model`` stays the bare module (evaluation, checkpoints)."""
        cfg, ctx = self.cfg, self.ctx
        self.net = torch.compile(self.model) if cfg.runtime.compile else self.model
        if ctx.enabled:
            if cfg.runtime.sync_bn:
                if ctx.device.type != "cuda":
                    raise TrainingError("sync_bn needs GPUs: torch's SyncBatchNorm has no CPU kernel. "
                                        "Expected a CUDA run, or drop --sync-bn / sync_bn on CPU.")
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
            if cfg.runtime.compile:
                self.net = torch.compile(self.net)

    # ------------------------------------------------------------------------------------ phases
    def train_epoch(self, epoch: int) -> dict:
        """One pass over this process's training shard; returns loss, accuracy, lr, images, time."""
        cfg, ctx, opt, net = self.cfg, self.ctx, self.opt, self.net
        accum = cfg.optim.accum_steps
        net.train()
        self.train_loader.set_epoch(epoch)
        if self.mixer is not None:
            self.mixer.enabled = cfg.augment.mixup_off_epoch is None or epoch < cfg.augment.mixup_off_epoch
        seen, loss_sum, correct, t0, micro, lr = 0, 0.0, 0, time.perf_counter(), 0, cfg.optim.lr
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}", disable=not self.progress,
                   dynamic_ncols=True, mininterval=1.0)
        opt.zero_grad(set_to_none=True)
        for x, y in bar:
            lr = lr_schedule(cfg.schedule, cfg.optim.lr, self.step, self.steps_per_epoch,
                             cfg.schedule.epochs * self.steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            target = y
            if self.mixer is not None:
                x, target = self.mixer(x, y)
            last_micro = (micro + 1) % accum == 0
            sync = contextlib.nullcontext() if last_micro or not ctx.enabled else net.no_sync()
            with sync:
                with torch.autocast(ctx.device.type, dtype=self.autocast_dtype or torch.float32,
                                    enabled=self.autocast_dtype is not None):
                    logits = net(x)
                loss = training_loss(logits.float(), target, cfg.optim.label_smoothing, cfg.model.tet,
                                     cfg.optim.tet_means, cfg.optim.tet_lamb)
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss is {loss.item()} at step {self.step} (lr {lr:.3g}): training diverged. "
                                        "Expected a finite loss; lower --lr, check the input data for NaN/inf, "
                                        "or resume from the last good checkpoint with --resume.")
                (loss / accum).backward()
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
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}", lr=f"{lr:.2e}", refresh=False)
            if self.step >= self.total:
                break
        bar.close()
        train_time = time.perf_counter() - t0
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": 100 * correct / max(seen, 1), "lr": lr,
                "train_img_s": seen / max(train_time, 1e-9), "epoch_time_s": train_time}

    def evaluate(self, epoch: int) -> dict:
        """Test loss and accuracy of the kept weights (the EMA's when on; the trained weights' as
        ``*_raw`` every ``ema_raw_every`` epochs)."""
        cfg, ema = self.cfg, self.ema
        test_raw = ema is None or (epoch + 1) % cfg.optim.ema_raw_every == 0 or epoch + 1 == cfg.schedule.epochs
        watch = self.model if ema is None else ema.module     # the weights test_acc is about
        ev, mon = None, None
        if test_raw:
            with self._firing(watch is self.model) as mon:
                ev = evaluate(self.model, self.test_loader, desc="test", progress=self.progress)
        out = {}
        if ema is not None:
            if test_raw:
                out = {"test_loss_raw": ev["loss"], "test_acc_raw": ev["acc"]}
                self.best_raw = max(self.best_raw, ev["acc"])
            with self._firing(True, ema.module) as mon:
                ev = evaluate(ema.module, self.test_loader, desc="test (EMA)", progress=self.progress)
        return {"test_loss": ev["loss"], "test_acc": ev["acc"], **out, **(mon.summary() if mon else {})}

    @contextlib.contextmanager
    def _firing(self, on: bool, model=None):
        """A FiringRateMonitor on ``model`` (default: the trained model) while ``runtime.firing_rates``
        and ``on``; else None."""
        if not (on and self.cfg.runtime.firing_rates):
            yield None
            return
        from ..analysis.firing import FiringRateMonitor
        with FiringRateMonitor(self.model if model is None else model) as mon:
            yield mon

    def save(self, epoch: int, metrics: dict) -> None:
        """The epoch's metrics line, ``last`` / ``ema`` / ``best`` checkpoints and the state file,
        each written atomically."""
        cfg, out = self.cfg, self.out
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self.tb.add_scalar(k, v, epoch + 1)
            for name, v in (metrics.get("firing_rates") or {}).items():
                if v is not None:
                    self.tb.add_scalar(f"firing_rates/{name}", v, epoch + 1)
            self.tb.flush()
        info = {"epoch": epoch + 1, "step": self.step, "metrics": metrics, "train_config": cfg.to_dict()}
        save_checkpoint(out / "last.safetensors", self.model, **info)
        kept = self.model
        if self.ema is not None:
            kept = self.ema.module
            save_checkpoint(out / "ema.safetensors", kept, **info, ema_decay=cfg.optim.ema)
        if metrics["test_acc"] > self.best_acc:
            self.best_acc = metrics["test_acc"]
            save_checkpoint(out / "best.safetensors", kept, **info)
        save_train_state(self.state_path, {"optimizer": self.opt.state_dict(), "epoch": epoch, "step": self.step,
                                           "best_acc": self.best_acc, "best_acc_raw": self.best_raw,
                                           "elapsed_s": metrics["elapsed_s"], "torch_rng": torch.get_rng_state(),
                                           "config": cfg.to_dict()})

    # ------------------------------------------------------------------------------------ the run
    def fit(self) -> dict:
        """Run every phase; returns the last epoch's metrics with ``best_test_acc``, ``wall_s`` and
        ``earlier_processes_s`` (what killed earlier processes of a resumed run spent), or {} on a
        rank other than 0."""
        self.setup()
        self.resume()
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            if cfg.runtime.log == "tensorboard":
                self.tb = _tensorboard_writer_class()(log_dir=str(self.out / "tensorboard"))
        self.wrap()
        if self.start_epoch == 0:
            self._say_header()
        metrics, t_start = {}, time.perf_counter()
        for epoch in range(self.start_epoch, cfg.schedule.epochs):
            if self.step >= self.total:
                break
            train = self.train_epoch(epoch)
            if not ctx.is_main:  # rank 0 evaluates, logs and writes checkpoints
                dist_utils.barrier(ctx)
                continue
            test = self.evaluate(epoch)
            metrics = {"epoch": epoch + 1, "step": self.step, "train_loss": train["train_loss"],
                       "train_acc": train["train_acc"], **test, "lr": train["lr"], "train_img_s": train["train_img_s"],
                       "epoch_time_s": train["epoch_time_s"],
                       "elapsed_s": self.earlier_s + time.perf_counter() - t_start}
            self.save(epoch, metrics)
            dist_utils.barrier(ctx)
            self._say_epoch(epoch, metrics)
        dist_utils.cleanup(ctx)
        if not ctx.is_main:
            return {}
        if self.tb is not None:
            self.tb.close()
        if metrics and cfg.runtime.plot:
            from ..analysis.plots import plot_run
            plot_run(self.out)                   # OUT/curves.png: loss, accuracy, lr, firing rate
        metrics["best_test_acc"] = self.best_acc
        if self.ema is not None:
            metrics["best_test_acc_raw"] = self.best_raw
        metrics["wall_s"] = time.perf_counter() - t_start
        metrics["earlier_processes_s"] = self.earlier_s   # 0.0 unless this process resumed a killed run
        return metrics

    # ------------------------------------------------------------------------------------ helpers
    def _make_ema(self):
        """The EMA of the model when ``optim.ema`` is on (None otherwise); on a resumed run its
        weights come back from ``out/ema.safetensors``."""
        cfg = self.cfg
        if not cfg.optim.ema:
            return None
        ema = build_ema(self.model, cfg.optim.ema)
        if self.step > 0:
            path = self.out / "ema.safetensors"
            if not path.is_file():
                raise TrainingError(f"cannot resume {self.out} with ema={cfg.optim.ema}: {path} is missing (was the "
                                    "run started without EMA?). Expected the EMA weights written by each epoch.")
            weights, _ = read_checkpoint(path)
            load_weights(ema.module, weights, source=str(path))
            ema.module.to(self.ctx.device)
            ema.n_averaged.fill_(self.step)
        return ema

    def _say(self, text: str) -> None:
        if self.progress:
            print(text)

    def _say_header(self) -> None:
        cfg, ctx, tl = self.cfg, self.ctx, self.test_loader
        n_params = sum(p.numel() for p in self.model.parameters())
        n_test = len(tl.labels) if hasattr(tl, "labels") else tl.num_samples
        where = f" ({cpu_name()})" if ctx.device.type == "cpu" else ""
        self._say(f"model {cfg.model.name}: {n_params:,} parameters, T={self.model.T}; data {cfg.data.name}: "
                  f"{self.train_loader.num_samples * ctx.world_size} train / {n_test} test; {cfg.schedule.epochs} "
                  f"epochs, batch {cfg.data.batch_size} x {ctx.world_size} process(es) x {cfg.optim.accum_steps} "
                  f"accumulation, {cfg.optim.optimizer}, {cfg.runtime.precision}, {torch.get_num_threads()} "
                  f"threads, device {ctx.device}{where}")

    def _say_epoch(self, epoch: int, m: dict) -> None:
        raw = " (raw {:.2f} %)".format(m["test_acc_raw"]) if "test_acc_raw" in m else ""
        ema_txt = "" if self.ema is None else " with EMA weights" + raw
        self._say(f"epoch {epoch + 1}/{self.cfg.schedule.epochs}: train loss {m['train_loss']:.4f} "
                  f"acc {m['train_acc']:.2f} % | test loss {m['test_loss']:.4f} acc {m['test_acc']:.2f} %{ema_txt} "
                  f"(best {self.best_acc:.2f} %) | {m['train_img_s']:.0f} img/s"
                  + (f" | firing rate {m['firing_rate']:.3f}" if m.get("firing_rate") is not None else ""))


def _tensorboard_writer_class():
    """torch's TensorBoard ``SummaryWriter``; an UnsupportedError naming the extra when the
    tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UnsupportedError("log='tensorboard' (--log tensorboard) needs the tensorboard package: "
                               "pip install 'spikeformers[tensorboard]'; metrics.jsonl is written either way "
                               "(`spikeformers plot RUN_DIR` draws it)") from None
    return SummaryWriter


def fit(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train with ``cfg`` (see :class:`Trainer`); returns the final metrics."""
    return Trainer(cfg, progress).fit()
