"""The `blendmask` command: one module per subcommand, each with `add_arguments(parser)` and
`run(args) -> int`; `main.py` builds the parser and turns errors into one line. Argument
parsing lives only in this package; the work lives in the layers below."""

from blendmask.cli.main import main

__all__ = ["main"]
