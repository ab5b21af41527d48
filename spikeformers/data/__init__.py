"""Datasets from their real on-disk formats, and fast in-memory loaders."""

from .fashion_mnist import DatasetError, download_fashion_mnist, find_fashion_mnist, load_fashion_mnist
from .loader import InMemoryLoader, random_crop_flip

__all__ = ["DatasetError", "download_fashion_mnist", "find_fashion_mnist", "load_fashion_mnist",
           "InMemoryLoader", "random_crop_flip"]
