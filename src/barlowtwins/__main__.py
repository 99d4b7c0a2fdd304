"""``python -m barlowtwins`` (also what ``torchrun -m barlowtwins`` runs)."""

import sys

from barlowtwins.cli import main

sys.exit(main())
