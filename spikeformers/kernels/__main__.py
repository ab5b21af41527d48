"""``python -m spikeformers.kernels``: which kernels this machine runs."""

from . import status

print(status())
