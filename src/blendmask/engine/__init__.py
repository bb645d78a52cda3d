"""Training and the train / eval / predict / demo / convert commands as functions.

- `loop.py`: the training loop (`run_training`, `train_step`);
- `training_run.py`: `TrainingRun`, the state of one process, and its set-up (build, resume, DDP);
- `train_config.py`: the Config a run uses, resolved before anything is built;
- `budget.py`: `TimeBudget`, the iterations that fit in a time limit;
- `optim.py`: SGD param groups and `WarmupMultiStepSchedule`;
- `loaders.py`: the training dataset and its deterministic loader;
- `checkpoint.py`: `last.pt` (atomic, exact resume);
- `resume.py`: resuming from `last.pt`, refusing (or, asked, applying) changed settings;
- `evaluate.py`: COCO evaluation of a model, during training and from a model file;
- `distributed.py`: torchrun / DDP helpers;
- `logging.py`: progress output, metrics.jsonl, curves.png, TensorBoard;
- `train.py`, `predict.py`, `demo.py`, `convert.py`: the commands (their flags live in
  `blendmask.cli`).
"""

from __future__ import annotations
