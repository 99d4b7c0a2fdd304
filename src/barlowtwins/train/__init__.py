"""Pretraining: the loop (``pretrain``) and the run directory it writes."""

from barlowtwins.train.loop import pretrain

__all__ = ["pretrain"]
