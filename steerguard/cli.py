"""The ``steerguard`` command.

Subcommands live with the code they run; each exposes ``register(subparsers)``
that adds its parser (importing nothing heavy) and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Settings are parsed
here, once, and passed down.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, attribute) pairs; each attribute is register(subparsers).
TOP_LEVEL = [
    ("steerguard.commands.calibrate", "register"),
    ("steerguard.commands.classify", "register"),
    ("steerguard.commands.generate", "register"),
    ("steerguard.commands.evaluate", "register"),
    ("steerguard.commands.demo", "register"),
    ("sidecar.up", "register"),
]
SERVE = [
    ("classifier_service.cli", "register"),
    ("steer_service.cli", "register"),
    ("sidecar.cli", "register"),
]


def _register_all(subparsers: argparse._SubParsersAction, entries: list[tuple[str, str]]) -> None:
    for module_name, attr in entries:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A command whose module is not present yet is simply absent.
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        getattr(module, attr)(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerguard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _register_all(sub, TOP_LEVEL)
    serve = sub.add_parser("serve", help="run a service")
    serve_sub = serve.add_subparsers(dest="service", required=True)
    _register_all(serve_sub, SERVE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
