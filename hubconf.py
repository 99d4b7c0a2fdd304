"""torch.hub entries: ``torch.hub.load(repo_or_dir, 'resnet50' | 'resnet18' | 'backbone', weights=PATH_OR_URL)``.

Each returns the backbone without classifier, in eval mode (see ``src/barlowtwins/hub.py``). The
repository's own ``src`` comes first on the path, so the entries match this checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from barlowtwins.hub import OFFICIAL_RESNET50, backbone, resnet18, resnet50  # noqa: E402

dependencies = ["torch", "torchvision", "yaml"]
__all__ = ["OFFICIAL_RESNET50", "backbone", "resnet18", "resnet50"]
