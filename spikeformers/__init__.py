"""spikeformers: spiking vision transformers in one clean, tested package."""

__version__ = "0.1.0"
