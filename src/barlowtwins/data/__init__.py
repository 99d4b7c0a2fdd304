"""Images in, batches out: sources (what ``--data`` names), the shard reader, and the one loader path."""

from barlowtwins.data.loaders import batches, resolve_workers, training_batches
from barlowtwins.data.sources import ImageSource, Samples, digits, in_memory, open_source, sample_index, select_samples

__all__ = [
    "ImageSource",
    "Samples",
    "batches",
    "digits",
    "in_memory",
    "open_source",
    "resolve_workers",
    "sample_index",
    "select_samples",
    "training_batches",
]
