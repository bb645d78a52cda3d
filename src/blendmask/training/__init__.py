"""Training: the `train` and `demo` commands as functions, and the loop under them.

- `train.py`: `train_command` (`blendmask train`); `demo.py`, `panoptic_demo.py`: `blendmask demo`;
- `request.py`: `TrainRequest`, the command's flags as one frozen request;
- `train_config.py`: the Config a run uses, resolved before anything is built;
- `training_run.py`: `TrainingRun`, the state of one process, its set-up (build, resume, DDP)
  and the evaluation each eval period (`evaluate_during_training`);
- `loop.py`: the training loop (`run_training`, `train_step`);
- `budget.py`: `TimeBudget`, the iterations that fit in a time limit;
- `optim.py`: SGD param groups and `WarmupMultiStepSchedule`;
- `loaders.py`: the training dataset and its deterministic loader;
- `checkpoint.py`: `last.pt` (atomic, exact resume); `resume.py`: resuming from it, refusing
  (or, asked, applying) changed settings;
- `logging.py`: progress output, metrics.jsonl, curves.png, TensorBoard.
"""

from __future__ import annotations
