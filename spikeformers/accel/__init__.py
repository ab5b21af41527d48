"""Opt-in transforms of a built model: fast layers (:func:`optimize`), BatchNorm folding
(:func:`fuse`), int8 products (:func:`quantize_int8`, :func:`int8_inference`), and the allocator
setting of long runs (:func:`keep_freed_memory`). Nothing in :mod:`spikeformers.nn` or
:mod:`spikeformers.models` imports this package: models are built from stock layers and these
functions change them afterwards, keeping their parameters and state dicts.
"""

from .fuse import fuse, unfused_batchnorms
from .int8 import Int8Products, int8_available, int8_inference, quantize_int8
from .memory import keep_freed_memory
from .optimize import MatmulConv1d, MatmulConv2d, SmallMapConv2d, optimize

__all__ = ["optimize", "fuse", "unfused_batchnorms", "Int8Products", "int8_available", "int8_inference",
           "quantize_int8", "keep_freed_memory", "MatmulConv1d", "MatmulConv2d", "SmallMapConv2d"]
