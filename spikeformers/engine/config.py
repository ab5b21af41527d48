"""The training configuration: one nested dataclass whose defaults live here and nowhere else.

``TrainConfig`` has six sections, each a small dataclass:

==========  ==========================================================================
section     what it holds
==========  ==========================================================================
model       which registered model, its time steps and constructor overrides
data        which dataset, where, batch size, loader workers, input size
augment     crops, flips, RandAugment, random erasing, mixup / cutmix, event augments
optim       optimizer, learning rate, weight decay, accumulation, loss, EMA of weights
schedule    epochs, warm-up, cosine to ``min_lr``, cool-down, step cap
runtime     seed, output folder, resume, precision, fast layers, compile, SyncBN
==========  ==========================================================================

Every option also has a *flat name*, unique across sections, which is what the command line
(``--lr``, ``--set lr=1e-3``), flat YAML recipes and older run folders use: the field name itself,
except ``model`` (``model.name``), ``model_kwargs`` (``model.kwargs``), ``data`` (``data.name``) and
``data_dir`` (``data.dir``). :meth:`TrainConfig.from_dict` reads nested sections, flat names, or a
mix; the ``train`` command's option defaults are read from here (``tests/test_train.py`` checks).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace

from ..errors import ConfigError

__all__ = ["TrainConfig", "ModelConfig", "DataConfig", "AugmentConfig", "OptimConfig", "ScheduleConfig",
           "RuntimeConfig", "SECTIONS", "flat_fields"]


def _opt(default, help: str = "", **kw):
    """A field with its help text (the CLI's and the docs')."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _opt("a2os2a_fmnist", "registered model name (see `spikeformers models`)")
    T: int | None = _opt(None, "time steps (None: the model's own)")
    kwargs: dict = _opt({}, "extra constructor kwargs of the model, e.g. {'embed_dim': 256}")
    tet: bool = _opt(False, "per-time-step logits and the TET loss (Deng et al. 2022)")
    init_from: str | None = _opt(None, "start from this checkpoint's weights (same model; fresh optimizer and schedule)")


@dataclass
class DataConfig:
    name: str = _opt("fashion-mnist", "dataset")
    dir: str | None = _opt(None, "dataset folder (default: $SPIKEFORMERS_DATA or the system copy)")
    batch_size: int = _opt(64, "images per process and micro-batch")
    workers: int = _opt(2, "DataLoader worker processes (not Fashion-MNIST, which is held in memory)")
    eval_images: int | None = _opt(None, "evaluate on the first N test images only (None: all)")
    img_size: int | None = _opt(None, "input side (None: the dataset's own)")
    in_chans: int | None = _opt(None, "event data: 2 (ON/OFF) or 3 (ON/OFF/sum)")
    mean: list | None = _opt(None, "normalisation mean per channel (None: the dataset's)")
    std: list | None = _opt(None, "normalisation std per channel (None: the dataset's)")
    split_by: str = _opt("number", "event frames: split by event 'number' or 'time'")
    cache_dir: str | None = _opt(None, "event data: folder of the cached frames")


@dataclass
class AugmentConfig:
    padding: int = _opt(0, "random-crop padding in pixels (0: off; Fashion-MNIST and crop=pad)")
    flip: bool = _opt(False, "random horizontal flip of Fashion-MNIST images")
    crop: str | None = _opt(None, "rrc | pad | none (None: the dataset's default)")
    scale: list | None = _opt(None, "random-resized-crop area range")
    ratio: list | None = _opt(None, "random-resized-crop aspect range")
    hflip: float | None = _opt(None, "horizontal flip probability (image datasets)")
    crop_pct: float | None = _opt(None, "test-time centre crop fraction")
    interpolation: str | None = _opt(None, "resize interpolation")
    randaugment: str | None = _opt(None, "RandAugment policy, e.g. rand-m9-n1-mstd0.4-inc1")
    random_erasing: float = _opt(0.0, "random erasing probability")
    random_erasing_mode: str = _opt("const", "random erasing fill: const | rand | pixel")
    event_aug: str | None = _opt(None, "event augmentation: flip | roll | wide | flip+wide | flip+roll")
    mixup: float = _opt(0.0, "mixup alpha (0: off)")
    cutmix: float = _opt(0.0, "cutmix alpha (0: off)")
    mixup_prob: float = _opt(1.0, "probability of mixing a batch")
    mixup_switch_prob: float = _opt(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_off_epoch: int | None = _opt(None, "no mixup / cutmix from this epoch on")


@dataclass
class OptimConfig:
    optimizer: str = _opt("adamw", "adamw | lamb | sgd | adam")
    # lr 3e-3: seeds 0-2 of the default model reached 90.81-91.27 % against 90.00-90.98 % at 2e-3
    lr: float = _opt(3e-3, "peak learning rate")
    weight_decay: float = _opt(0.01, "decoupled weight decay (not on BatchNorm, biases, PLIF w)")
    max_grad_norm: float | None = _opt(None, "LAMB's global-norm clip (timm default 1.0; None: off)")
    accum_steps: int = _opt(1, "gradient accumulation: an optimizer step every N micro-batches")
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy")
    tet_means: float = _opt(1.0, "TET: weight of the per-step cross-entropies")
    tet_lamb: float = _opt(0.001, "TET: weight of the MSE regulariser")
    ema: float = _opt(0.0, "EMA decay of the weights, e.g. 0.9998 (0: off); the EMA weights are evaluated and kept as best")
    ema_raw_every: int = _opt(1, "with EMA: also test the trained weights every N epochs (and at the last)")


@dataclass
class ScheduleConfig:
    epochs: int = _opt(10, "epochs")
    warmup_epochs: float = _opt(0.25, "linear warm-up length in epochs")
    warmup_lr: float = _opt(0.0, "learning rate the warm-up starts from")
    min_lr: float = _opt(1e-5, "learning rate at the end of the cosine")
    cooldown_epochs: int = _opt(0, "epochs at min_lr after the cosine (included in epochs)")
    sched_per: str = _opt("step", "step (per-iteration cosine) | epoch (timm: once per epoch)")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (smoke runs)")


@dataclass
class RuntimeConfig:
    seed: int = _opt(0, "seed of weights, data order and augmentation")
    out: str | None = _opt(None, "folder for checkpoints and logs (None: runs/MODEL)")
    resume: bool = _opt(False, "continue a killed run from OUT/last.safetensors")
    precision: str = _opt("auto", "auto | fp32 | bf16; auto = bf16 where the hardware has it natively "
                                  "(AMX, AVX512-BF16 when faster, CUDA bf16), else fp32")
    fast_layers: bool = _opt(True, "1x1 convs as matmuls, channels-last tensors, C-kernel BatchNorm (same weights)")
    compile: bool = _opt(False, "torch.compile the training graph (minutes to build on CPU)")
    sync_bn: bool = _opt(False, "SyncBatchNorm across processes (GPU only)")
    log: str = _opt("jsonl", "jsonl (OUT/metrics.jsonl, always written) | tensorboard (also TensorBoard "
                             "event files in OUT/tensorboard; the tensorboard extra)")
    firing_rates: bool = _opt(True, "record every spiking layer's firing rate on the test pass into metrics.jsonl")
    plot: bool = _opt(True, "draw OUT/curves.png (loss, accuracy, lr, firing rate) at the end of the run")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "augment": AugmentConfig, "optim": OptimConfig,
            "schedule": ScheduleConfig, "runtime": RuntimeConfig}
_ALIASES = {"model": ("model", "name"), "model_kwargs": ("model", "kwargs"), "data": ("data", "name"),
            "data_dir": ("data", "dir")}


def flat_fields() -> dict[str, tuple[str, str, dict]]:
    """Flat option name -> (section, field, metadata) for every option."""
    inverse = {v: k for k, v in _ALIASES.items()}
    out = {}
    for sec, cls in SECTIONS.items():
        for f in fields(cls):
            out[inverse.get((sec, f.name), f.name)] = (sec, f.name, dict(f.metadata))
    return out


_FLAT = flat_fields()


@dataclass
class TrainConfig:
    """Everything a training run needs; see the module docstring for the sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_dict(cls, d: dict | None = None, **flat) -> "TrainConfig":
        """A config from nested sections (``{"optim": {"lr": 1e-3}}``), flat names (``{"lr": 1e-3}``)
        or both; ``flat`` keyword arguments are applied last. Unknown names raise a
        :class:`~spikeformers.errors.ConfigError` that lists the valid ones."""
        values: dict[str, dict] = {sec: {} for sec in SECTIONS}
        for key, value in {**(d or {}), **flat}.items():
            if key in SECTIONS and isinstance(value, dict):   # "model" / "data" may also be a flat name
                known = {f.name for f in fields(SECTIONS[key])}
                unknown = sorted(set(value) - known)
                if unknown:
                    raise ConfigError(f"unknown option(s) {unknown} in section {key!r}; expected some of {sorted(known)}")
                values[key].update(value)
            elif key in _FLAT:
                sec, name, _ = _FLAT[key]
                values[sec][name] = value
            else:
                raise ConfigError(f"unknown training option {key!r}; expected a section {sorted(SECTIONS)} or "
                                  f"one of {sorted(_FLAT)}")
        return cls(**{sec: SECTIONS[sec](**v) for sec, v in values.items()})

    @staticmethod
    def default(name: str):
        """The default value of the option with flat ``name``."""
        sec, fname, _ = _FLAT[name]
        f = next(f for f in fields(SECTIONS[sec]) if f.name == fname)
        return f.default_factory() if f.default is MISSING else f.default

    def get(self, name: str):
        """The value of the option with flat ``name``."""
        sec, fname, _ = _FLAT[name]
        return getattr(getattr(self, sec), fname)

    def flat(self) -> dict:
        """Every option by its flat name."""
        return {name: self.get(name) for name in _FLAT}

    def to_dict(self) -> dict:
        """The nested dict (what ``config.json`` of a run holds)."""
        return asdict(self)

    def replace(self, **flat) -> "TrainConfig":
        """A copy with the options given by flat name changed."""
        by_sec: dict[str, dict] = {}
        for key, value in flat.items():
            if key not in _FLAT:
                raise ConfigError(f"unknown training option {key!r}; expected one of {sorted(_FLAT)}")
            sec, fname, _ = _FLAT[key]
            by_sec.setdefault(sec, {})[fname] = value
        return replace(self, **{sec: replace(getattr(self, sec), **v) for sec, v in by_sec.items()})

    @property
    def out(self) -> str:
        """The run folder: ``runtime.out``, or ``runs/<model name>``."""
        return self.runtime.out or f"runs/{self.model.name}"

    def check(self) -> None:
        """Raise a ConfigError naming the first option out of its range."""
        o, s, r = self.optim, self.schedule, self.runtime
        if o.accum_steps < 1:
            raise ConfigError(f"accum_steps must be >= 1, got {o.accum_steps}")
        if r.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {r.precision!r}")
        if self.data.eval_images is not None and self.data.eval_images < 1:
            raise ConfigError(f"eval_images must be >= 1 (or None for the whole test set), got {self.data.eval_images}")
        if o.ema_raw_every < 1:
            raise ConfigError(f"ema_raw_every must be >= 1 (epochs), got {o.ema_raw_every}")
        if o.ema and not 0.0 < o.ema < 1.0:
            raise ConfigError(f"ema must be a decay in (0, 1) such as 0.9998, or 0 for off; got {o.ema}")
        if r.log not in ("jsonl", "tensorboard"):
            raise ConfigError(f"log must be 'jsonl' or 'tensorboard', got {r.log!r}")
        if s.sched_per not in ("step", "epoch"):
            raise ConfigError(f"sched_per must be 'step' or 'epoch', got {s.sched_per!r}")
        if s.epochs < 1 or self.data.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {s.epochs} and {self.data.batch_size}")
