"""The neurons and surrogate gradients under their first name; they live in
:mod:`spikeformers.nn.neurons` and :mod:`spikeformers.nn.surrogates`."""

from .nn.neurons import *  # noqa: F401,F403
from .nn.neurons import __all__  # noqa: F401
