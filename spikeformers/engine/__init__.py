"""Training and its parts: the :class:`Trainer` and its nested :class:`TrainConfig`, optimizers, losses,
schedules, evaluation, checkpoints, multi-process runs, and facts about the hardware."""

from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .config import TrainConfig
from .evaluate import evaluate
from .trainer import Trainer, fit

__all__ = ["Trainer", "TrainConfig", "fit", "evaluate", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
