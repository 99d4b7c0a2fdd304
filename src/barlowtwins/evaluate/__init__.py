"""Evaluation protocols of the paper (§3, appendices B and C) and the kNN monitor."""
