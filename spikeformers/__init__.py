"""spikeformers: spiking vision transformers in one clean, tested package.

Layout (each folder one layer; imports point down only)::

    nn/        neurons, surrogates, layers, attention/ (one file per mechanism + registry)
    models/    one file per family, the model registry, official checkpoint mapping
    kernels/   C and Triton kernels with their build, loading and dispatch (imports nothing of ours)
    accel/     opt-in transforms of a built model: fast layers, BatchNorm folding, int8
    engine/    Trainer, config, optimizers, losses, checkpoints, distributed runs, hardware facts
    data/      real on-disk dataset formats, transforms, loaders
    analysis/  energy and the addition-only audit, benchmarks, attention comparisons
    errors.py  one error hierarchy
    cli.py     ``spikeformers <command>``
"""

__version__ = "0.1.0"

from .analysis.firing import FiringRateMonitor  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .models.official import from_official  # noqa: E402
from .models.registry import from_pretrained  # noqa: E402

__all__ = ["create_model", "list_models", "from_official", "from_pretrained", "FiringRateMonitor", "__version__"]
