"""Reading weight files without running code stored in them.

Weight files of other projects are pickles: detectron2 / Caffe2 `.pkl` files of numpy arrays,
and PyTorch `.pth` files that sometimes hold numpy arrays too. Unpickling may call any function
the file names, so both readers here allow numpy arrays, dicts and plain values only: the
`.pkl` unpickler refuses every other global, and `torch.load(weights_only=True)` is given the
numpy globals (and nothing else) that it needs to rebuild arrays.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler for weight pickles: builds numpy arrays and containers, nothing else."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1")
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight pickle")
        if module.startswith("numpy.core"):
            # numpy 2 moved numpy.core to numpy._core; old pickles still name the former
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def read_weight_pickle(path: Path) -> Any:
    """The object of a `.pkl` weight file, read with `ArrayUnpickler` (latin1 for the
    Python-2-era Caffe2 files)."""
    try:
        with path.open("rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - any unreadable pickle is the same user error
        raise ValueError(f"{path}: not a readable weight pickle ({exc})") from None


def numpy_safe_globals() -> list[Any]:
    """What `torch.load(weights_only=True)` needs to rebuild numpy arrays (no other code)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # Files written with numpy 1.x name the module numpy.core. torch 2.5 takes objects only
    # (no (object, name) pairs) and keys each by its __module__ and __name__: aliases that
    # carry the old names serve every torch.
    allowed += [_alias(multiarray._reconstruct), _alias(multiarray.scalar)]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def _alias(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` under the name numpy 1.x pickles give it, numpy.core.multiarray.<name>."""

    def alias(*args: Any) -> Any:
        return function(*args)

    alias.__module__ = "numpy.core.multiarray"
    alias.__name__ = alias.__qualname__ = function.__name__
    return alias
