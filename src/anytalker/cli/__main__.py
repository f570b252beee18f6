"""`python -m anytalker.cli ...` (what `accelerate launch -m anytalker.cli` and torchrun run)."""

import sys

from . import main

sys.exit(main())
