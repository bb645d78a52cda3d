"""The command-line surface: every flag documented, one name per option (old spellings are
hidden aliases that still parse), `presets` printing whole descriptions, `explain --out` writing
where it says, and `--conf 0` keeping every candidate (as docs/python_api.md says) in `explain`
too."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest
import torch
from PIL import Image

from blendmask.checkpoint_io import save_model_file
from blendmask.cli import main
from blendmask.cli.main import build_parser
from blendmask.presets import PRESETS, get_preset

# Old spellings kept as hidden aliases: (subcommand, alias, canonical option, dest).
ALIASES = [
    ("predict", "--workers", "--num-workers", "workers"),
    ("predict", "--score-threshold", "--conf", "score_threshold"),
    ("predict", "--max-detections", "--max-det", "max_detections"),
    ("eval", "--score-threshold", "--conf", "score_threshold"),
    ("eval", "--max-detections", "--max-det", "max_detections"),
    ("explain", "--score-threshold", "--conf", "score_threshold"),
]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_flag_has_help() -> None:
    """Wrong if any option or positional of any subcommand shows in --help without a word on
    what it does (hidden aliases, help=SUPPRESS, are the only ones left out)."""
    missing = []
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


@pytest.mark.parametrize(("command", "alias", "canonical", "dest"), ALIASES)
def test_old_spellings_parse_but_are_hidden(command, alias, canonical, dest) -> None:
    """Wrong if an old spelling stops parsing (scripts break), sets another field than its
    new name, or still shows in --help next to it (two names for one option)."""
    sub = _subparsers()[command]
    required = {
        "predict": ["--weights", "w.pt", "img.png", "--out", "o"],
        "eval": ["--out", "o"],
        "explain": ["--weights", "w.pt", "img.png", "--out", "o.png"],
    }[command]
    value = "3"
    if dest == "score_threshold":
        value = "0.25"
    old = sub.parse_args([*required, alias, value])
    new = sub.parse_args([*required, canonical, value])
    assert getattr(old, dest) == getattr(new, dest) == type(getattr(new, dest))(value)
    text = sub.format_help()
    assert canonical in text and alias not in text


def test_workers_default_is_not_a_given_flag() -> None:
    """predict's --num-workers defaults to None (2 for an instance model), so that a panoptic
    model can tell a given --num-workers from the default."""
    sub = _subparsers()["predict"]
    assert sub.parse_args(["--weights", "w", "i", "--out", "o"]).workers is None


def test_presets_print_whole_descriptions(monkeypatch, capsys) -> None:
    """Wrong if a preset's description is cut at its first docstring line (e.g. "...,
    K=4, M=14," and the rest lost) or if lines run past the terminal's width."""
    width = 80
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["presets"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert all(len(line) <= width for line in text.splitlines())
    entries = text.split("\n")
    starts = [i for i, line in enumerate(entries) if not line.startswith(" ")]
    assert [entries[i].split()[0] for i in starts] == list(PRESETS)
    for (name, fn), a, b in zip(PRESETS.items(), starts, [*starts[1:], len(entries)]):
        shown = " ".join(" ".join(entries[a:b]).split()[1:])
        assert shown == " ".join(inspect.cleandoc(fn.__doc__).split()), name


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random model file and a 70 x 50 image (random weights: every score is far under
    the default candidate threshold's ~0.22)."""
    from blendmask.predictor import Predictor

    root = tmp_path_factory.mktemp("cli_flags")
    torch.manual_seed(0)
    pred = Predictor.from_config(get_preset("tiny"), device="cpu")
    weights = root / "model.pt"
    save_model_file(weights, pred.cfg, pred.model)
    image = root / "image.png"
    pixels = torch.randint(0, 256, (50, 70, 3), generator=torch.Generator().manual_seed(1))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(image)
    return weights, image


@pytest.mark.slow
def test_explain_out_is_the_file_written(tiny_model, tmp_path, capsys) -> None:
    """Wrong if `--out DIR` (or a name without suffix) prints one path and writes another
    (it printed "wrote DIR" and wrote DIR.png)."""
    weights, image = tiny_model
    folder = tmp_path / "figures"
    folder.mkdir()
    base = ["explain", "--weights", str(weights), str(image), "--device", "cpu", "--top", "1"]
    for out, expected in (
        (folder, folder / "image_explain.png"),
        (tmp_path / "plain", tmp_path / "plain.png"),
        (tmp_path / "named.png", tmp_path / "named.png"),
    ):
        assert main([*base, "--out", str(out)]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {expected}"
        assert expected.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "figures.png").exists()


@pytest.mark.slow
def test_explain_conf_zero_keeps_every_candidate(tiny_model, monkeypatch) -> None:
    """Wrong if `explain --conf 0` still applies the model's candidate threshold (0.05 on
    cls x ctr: nothing of a random model passes) where `predict --conf 0` keeps every
    candidate: the same flag would mean two things."""
    import blendmask.explain as explain_module
    from blendmask.predictor import Predictor

    weights, image = tiny_model
    explained = []
    original = explain_module.explain_image

    def spy(*args, **kwargs):
        explained.append(original(*args, **kwargs))
        return explained[-1]

    monkeypatch.setattr(explain_module, "explain_image", spy)
    base = ["explain", "--weights", str(weights), str(image), "--device", "cpu", "--top", "3"]
    assert main([*base, "--out", str(Path(weights).parent / "default.png")]) == 0
    assert main([*base, "--out", str(Path(weights).parent / "zero.png"), "--conf", "0"]) == 0
    default, zero = explained
    predicted = Predictor.from_checkpoint(weights, "cpu", score_threshold=0.0)([str(image)])[0]
    assert len(default.scores) == 0  # the model's own candidate threshold: nothing
    assert len(predicted) >= 3 and len(zero.scores) == 3  # --conf 0: as predict, the top 3
    assert float(zero.scores.max()) < 0.05**0.5  # all under the old candidate threshold


def test_predict_onnx_warns_when_conf_is_under_the_files_candidate_threshold(caplog) -> None:
    """An ONNX file's candidate threshold is a constant of its graph: `--conf 0` cannot lower
    it as it does for a model.pt, and predict says so instead of silently keeping less."""
    from blendmask.cli.predict import _warn_fixed_candidates

    cfg = get_preset("tiny")
    cfg.model.fcos.inference_th_test = 0.05
    caplog.set_level("WARNING", logger="blendmask")
    _warn_fixed_candidates("m.onnx", cfg, 0.3)  # 0.09 >= 0.05: the file has them all
    assert not caplog.records
    _warn_fixed_candidates("m.onnx", cfg, 0.0)
    (record,) = caplog.records
    assert "m.onnx" in record.getMessage() and "inference_th_test" in record.getMessage()
