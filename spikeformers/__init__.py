"""spikeformers: spiking vision transformers in one clean, tested package."""

__version__ = "0.1.0"

from .models import create_model, list_models  # noqa: E402
from .models.official import from_official  # noqa: E402

__all__ = ["create_model", "list_models", "from_official", "__version__"]
