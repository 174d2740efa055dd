"""``steerguard serve sidecar``: registered by ``steerguard.cli``; imports nothing heavy."""

from __future__ import annotations

import argparse
import sys

from sidecar.settings import add_sidecar_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sidecar`` parser to ``steerguard serve``."""
    parser = subparsers.add_parser(
        "sidecar",
        help="HTTP guard proxy in front of a chatbot",
        description="Classify each chat request over gRPC; forward, block, steer or flag it per policy.",
    )
    add_sidecar_flags(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    """Parse settings and policy, then serve until SIGTERM/SIGINT."""
    from sidecar.app import serve
    from sidecar.policy import load_policy
    from sidecar.settings import SidecarSettings
    from steerguard.errors import SteerguardError

    try:
        settings = SidecarSettings.from_args(ns)
        policy = load_policy(settings.policy_file)
    except SteerguardError as exc:
        print(f"steerguard serve sidecar: {exc.reason}", file=sys.stderr)
        return 2
    serve(settings, policy)
    return 0
