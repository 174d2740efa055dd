"""The ``steerguard`` command.

Subcommands live with the code they run; each exposes ``register(subparsers)``
that adds its parser (importing nothing heavy) and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Settings are parsed
here, once, and passed down.

Every command is imported by name: a broken install fails loudly here instead
of silently losing a command. A command whose run needs the ``model`` extra
(torch, transformers) says so when that extra is missing, while the light
commands (``serve sidecar``) work on the base install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from classifier_service import cli as classifier_cli
from sidecar import cli as sidecar_cli
from sidecar.extproc import cli as extproc_cli
from steer_service import cli as steer_cli
from steerguard.commands import calibrate, classify, demo, evaluate, generate

Register = Callable[[Any], Any]
TOP_LEVEL: tuple[Register, ...] = (
    calibrate.register,
    classify.register,
    generate.register,
    evaluate.register,
    demo.register,
    sidecar_cli.register_audit,
)
SERVE: tuple[Register, ...] = (
    classifier_cli.register,
    steer_cli.register,
    sidecar_cli.register,
    extproc_cli.register,
)
# Packages of the ``model`` extra; a command that needs one names the extra to install.
MODEL_EXTRA = frozenset(
    {"torch", "transformers", "gguf", "accelerate", "safetensors", "sklearn", "matplotlib", "tqdm"}
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerguard", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in TOP_LEVEL:
        register(sub)
    serve = sub.add_parser("serve", help="run a service")
    serve_sub = serve.add_subparsers(dest="service", required=True)
    for register in SERVE:
        register(serve_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root not in MODEL_EXTRA:
            raise
        print(
            f"steerguard {args.command}: this command needs the model extra ({root} is not installed): "
            "pip install 'steerguard[model]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
