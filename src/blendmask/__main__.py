"""`python -m blendmask ...` and `torchrun --nproc_per_node N -m blendmask train ...`."""

from __future__ import annotations

import sys

from blendmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
