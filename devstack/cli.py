"""``python -m devstack``: the development tools' own command, run from a checkout.

Kept apart from the product's ``steerguard`` command, so no product module
imports a dev tool. ``python -m devstack up [--smoke]`` runs the whole stack on
this machine (the README's run command).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devstack import up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
