"""Model families and the registry. Importing this package registers every variant."""

from . import a2os2a, qkformer, resformer, sdt, spikformer  # noqa: F401  (registration side effects)
from .registry import create_model, list_models, model_entry, register_model

__all__ = ["create_model", "list_models", "model_entry", "register_model"]
