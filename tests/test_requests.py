"""One command boundary: a command's flags are the fields of its frozen request
(`PredictRequest`, `TrainRequest`, `PostprocessRequest`), the parser is built from them and the
Python API takes the same request. Wrong if a flag is written in a second place (a parser
option with no field behind it), if the command line and the keyword arguments give two
different requests, or if a request can change once made."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from blendmask.cli.arguments import add_request_arguments, request_from_args
from blendmask.cli.main import build_parser
from blendmask.config.flags import flag, freeze_sequences, positive_int
from blendmask.evaluation.request import EvalRequest, PostprocessRequest
from blendmask.prediction.request import PredictRequest
from blendmask.training.request import TrainRequest
from blendmask.training.train_config import resolve_train_config


@dataclass(frozen=True, kw_only=True)
class _Request:
    """Every kind of flag the requests use, in one small request."""

    inputs: tuple[str, ...] = flag(positional=True, nargs="+", help="the inputs")
    out: str = flag(required=True, help="where")
    count: int = flag(3, names=("--n",), aliases=("--count",), parse=positive_int, help="how many")
    draw: bool = flag(True, names=("--no-draw",), action="store_false", help="draw nothing")
    tags: tuple[str, ...] = flag((), names=("--tag",), action="append", help="repeatable")
    first: str | None = flag(None, group="pick", required=True, help="one of two")
    second: str | None = flag(None, group="pick", help="the other")
    workers: int | None = flag(0, cli_default=None, help="None on the command line")
    ready: object = None  # no flag: the Python API's alone

    def __post_init__(self) -> None:
        freeze_sequences(self, "inputs", "tags")


def _parser(request_class: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_request_arguments(parser, request_class)
    return parser


def test_a_field_with_a_flag_is_an_option_of_the_parser(capsys) -> None:
    """Wrong if a field's spelling, parser, alias, action, group or command-line default is
    lost on the way to argparse, or if the parsed flags do not make the request."""
    parser = _parser(_Request)
    args = parser.parse_args(["a", "b", "--out", "o", "--count", "5", "--no-draw", "--first", "f"])
    request = request_from_args(_Request, args, ready="r")
    want = _Request(inputs=("a", "b"), out="o", count=5, draw=False, first="f", workers=None)
    assert request == dataclasses.replace(want, ready="r")
    args = parser.parse_args(["a", "--out", "o", "--second", "s", "--tag", "x", "--tag", "y"])
    assert (args.count, args.draw, args.tags, args.first, args.workers) == (
        3,
        True,
        ["x", "y"],
        None,
        None,
    )
    help_text = parser.format_help()
    assert "--n COUNT" in help_text and "--count" not in help_text  # the alias is hidden
    for bad in (["a", "--out", "o"], ["a", "--out", "o", "--first", "f", "--second", "s"]):
        with pytest.raises(SystemExit):  # the group is required, and exclusive
            parser.parse_args(bad)
    capsys.readouterr()


def _dests(command: str) -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest for a in sub.choices[command]._actions if a.dest not in ("help",)}


@pytest.mark.parametrize(
    ("command", "request_class"),
    [("predict", PredictRequest), ("train", TrainRequest), ("eval", EvalRequest)],
)
def test_every_option_of_a_command_is_a_field_of_its_request(command, request_class) -> None:
    """Wrong if `predict`, `train` or `eval` parses a flag that is not a field of its request (a flag
    written twice, in the parser and again in the function), or a field has no flag."""
    fields = {f.name for f in dataclasses.fields(request_class)}
    assert _dests(command) == fields


def test_eval_and_predict_share_the_post_processing_fields() -> None:
    """Wrong if eval and predict spell a post-processing flag each their own way."""
    shared = dataclasses.fields(PostprocessRequest)
    for request_class in (PredictRequest, EvalRequest):
        fields = {f.name: f for f in dataclasses.fields(request_class)}
        for item in shared:
            names = fields[item.name].metadata["flag"].names
            assert names == item.metadata["flag"].names, (request_class, item.name)
    # each with its own default threshold: eval keeps every detection (AP needs the low ones)
    assert EvalRequest(out="o").score_threshold is None
    assert PredictRequest(inputs=["a.png"], out="o").score_threshold == 0.3


def test_the_command_line_and_the_python_api_make_the_same_request() -> None:
    argv = ["predict", "--weights", "w.pt", "a.png", "b", "--out", "o", "--max-detections", "5"]
    argv += ["--set", "data.test_scale=2", "--classes", "1,cat", "--no-overlays", "--no-resume"]
    got = request_from_args(PredictRequest, build_parser().parse_args(argv))
    want = PredictRequest(
        weights="w.pt",
        inputs=["a.png", "b"],
        out="o",
        max_detections=5,
        overrides=["data.test_scale=2"],
        classes=[1, "cat"],
        overlays=False,
        resume=False,
        workers=None,  # the command line's "not given" (2 for an instance model)
    )
    assert got == want and hash(got) == hash(want)


def test_a_request_cannot_change_once_made() -> None:
    """Wrong if a field can be reassigned, or if a caller's list stays shared with it."""
    overrides = ["solver.max_iter=5"]
    request = TrainRequest(out="o", preset="tiny", overrides=overrides)
    overrides.append("solver.base_lr=1")
    assert request.overrides == ("solver.max_iter=5",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.out = "elsewhere"  # type: ignore[misc]


def test_resolve_train_config_takes_the_request(tmp_path) -> None:
    """The request and its keyword arguments resolve the same Config; the panoptic data flags
    (once turned into --set by the command line) are fields too."""
    request = TrainRequest(
        out=tmp_path, preset="tiny", batch_size=8, train_panoptic_json="p.json", seed=3
    )
    cfg = resolve_train_config(request, quiet=True)
    same = resolve_train_config(
        out=tmp_path, preset="tiny", batch_size=8, train_panoptic_json="p.json", seed=3, quiet=True
    )
    assert cfg.to_dict() == same.to_dict()
    assert (cfg.data.train_panoptic_json, cfg.solver.seed, cfg.solver.ims_per_batch) == (
        "p.json",
        3,
        8,
    )
    # keyword arguments replace fields of a given request
    assert resolve_train_config(request, seed=4, quiet=True).solver.seed == 4
