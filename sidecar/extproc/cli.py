"""``steerguard serve extproc``: registered by ``steerguard.cli``; imports nothing heavy."""

from __future__ import annotations

import argparse
import sys

from sidecar.extproc.settings import add_extproc_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extproc",
        help="Envoy ext_proc server: the sidecar's request checks inside an Envoy gateway",
        description="Judge chat requests Envoy sends over ext_proc; continue or answer per the policy.",
    )
    add_extproc_flags(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from sidecar.extproc.settings import ExtProcSettings
    from sidecar.policy import load_policy
    from steerguard.errors import SteerguardError

    try:
        settings = ExtProcSettings.from_args(ns)
        policy = load_policy(settings.policy_file)
    except SteerguardError as exc:
        print(f"steerguard serve extproc: {exc.reason}", file=sys.stderr)
        return 2
    try:
        from sidecar.extproc.server import serve
    except ImportError as exc:
        print(
            f"steerguard serve extproc: needs the extproc extra (pip install 'steerguard[extproc]'): {exc}",
            file=sys.stderr,
        )
        return 2
    return serve(settings, policy)
