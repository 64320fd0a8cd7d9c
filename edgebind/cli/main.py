"""``edgebind`` entry point: parses global flags and dispatches to one module per subcommand.

Each subcommand module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and only
parses arguments and calls the library; a module whose optional dependency is missing still lists
its command and explains what to install when it is used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..errors import EdgebindError, MissingDependencyError

# Subcommand name -> module in edgebind.cli. Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "download": "download",
    "export": "export",
    "labels": "labels",
    "calibrate": "calibrate",
    "build": "build",
    "verify": "verify",
    "info": "info",
    "record": "record",
    "run": "run",
    "bench": "bench",
}


def _configure_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG if verbosity > 0 else logging.ERROR)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edgebind")
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Some dependencies (onnxruntime.quantization) configure the root logger; do not print our records twice.
    root.propagate = False


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="edgebind",
        description="ImageBind-style multimodal embeddings on the edge: export, engines, runtime, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"edgebind {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__package__}.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose - args.quiet)
    try:
        return int(args._run(args) or 0)
    except MissingDependencyError as exc:
        print(f"edgebind {args.command}: {exc}", file=sys.stderr)
        return 3
    except EdgebindError as exc:
        print(f"edgebind {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edgebind {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
