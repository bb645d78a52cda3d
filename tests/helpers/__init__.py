"""Code shared by the tests, and the only place tests import shared code from.

A test file imports no other test file (tests/test_layout.py checks it): what two tests share
lives here, one module per topic. `tests/` is on sys.path through pyproject.toml's
`[tool.pytest.ini_options] pythonpath`, so a test writes `from helpers.models import spread_model`.

- `paths`: where the test data and the shipped nuclei data sit.
- `models`: tiny models with spread-out random weights (export, ONNX, distributed eval tests).
- `reference`: the reference's test-time resize and synthetic checkpoints with its keys.
- `adelaidet`: AdelaiDet key lists, where each key lands in our model, its forward pass.
- `self_ground_truth`: a random model and a COCO ground truth made of its own masks.
- `processes`: running torchrun without leaving workers behind.
- `panoptic`: panoptic-quality fixtures (categories, a random image pair).
- `serve`: a `blendmask serve` process on a free port, and HTTP calls to it.
"""
