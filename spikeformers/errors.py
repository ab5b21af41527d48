"""One error hierarchy. Every error spikeformers raises on purpose (bad input, a missing dataset, a
checkpoint that does not match) is a :class:`SpikeformersError`; the command line turns these, and
only these, into a one-line message. Any other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in type a Python user would expect (``ConfigError`` is a
``ValueError``, ``UnknownNameError`` a ``KeyError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["SpikeformersError", "ConfigError", "UnknownNameError", "InputError", "DatasetError",
           "DatasetNotFoundError", "CheckpointError", "TrainingError", "UsageError",
           "UnsupportedError"]


class SpikeformersError(Exception):
    """Base class of the errors spikeformers raises on purpose."""


class ConfigError(SpikeformersError, ValueError):
    """An option, argument or recipe value is not what was expected."""


class UnknownNameError(ConfigError, KeyError):
    """A name (model, attention, dataset, official source) that is not registered."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputError(SpikeformersError, ValueError, TypeError):
    """A tensor handed to a model or neuron has the wrong type, shape, dtype or values."""


class DatasetError(SpikeformersError):
    """A dataset is missing, incomplete or not in its expected on-disk format."""


class DatasetNotFoundError(DatasetError):
    """A dataset is not where ``--data-dir`` says; the message shows the on-disk layout expected."""

    def __init__(self, name: str, data_dir, layout: str, detail: str = ""):
        super().__init__(f"{name} not found under {str(data_dir)!r}{': ' + detail if detail else ''}.\n"
                         f"Expected this layout (download it yourself; nothing is fetched):\n{layout.rstrip()}")


class CheckpointError(SpikeformersError):
    """A checkpoint cannot be read, holds another model, or does not fit the model."""


class TrainingError(SpikeformersError):
    """Training cannot go on (a non-finite loss, a resume that does not match, ...)."""


class UsageError(SpikeformersError, RuntimeError):
    """An object used in a way its state does not allow (training a model fused for inference, a
    recorder read before any forward pass)."""


class UnsupportedError(SpikeformersError):
    """This machine or build lacks what was asked for (int8 operators, a GPU, an optional package)."""
