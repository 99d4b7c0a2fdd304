"""Self-supervised objectives, one per file."""
