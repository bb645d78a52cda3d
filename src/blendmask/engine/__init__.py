"""Training and the train / eval / predict / demo commands.

- `train.py`: the training loop (`train`) and COCO evaluation of a model (`evaluate_model`);
- `optim.py`: SGD param groups and the WarmupMultiStepLR schedule;
- `checkpoint.py`: `last.pt` (atomic, exact resume);
- `distributed.py`: torchrun / DDP helpers;
- `logging.py`: progress bar, metrics.jsonl, curves.png, TensorBoard;
- `commands.py`: the commands as functions; `cli_args.py`: their flags.
"""

from __future__ import annotations
