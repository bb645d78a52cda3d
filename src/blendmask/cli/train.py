"""train a model (resumes from OUT/last.pt)

`torchrun --nproc_per_node N -m blendmask train ...` trains with DDP; the work is
`blendmask.training.train.train_command`; the flags are the fields of
`blendmask.training.request.TrainRequest`.
"""

from __future__ import annotations

import argparse

from blendmask.cli.arguments import add_request_arguments, request_from_args
from blendmask.runtime.distributed import cleanup_distributed
from blendmask.training.request import TrainRequest
from blendmask.training.train import train_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_request_arguments(parser, TrainRequest)


def run(args: argparse.Namespace) -> int:
    try:
        train_command(request=request_from_args(TrainRequest, args))
    finally:
        cleanup_distributed()
    return 0
