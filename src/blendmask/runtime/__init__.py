"""The floor the commands share: torchrun / DDP helpers (`distributed.py`) and the lock that
keeps two processes out of one output folder (`output_lock.py`). Atomic writes are in
`blendmask.atomic`."""

from __future__ import annotations
