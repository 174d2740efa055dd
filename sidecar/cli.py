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
    return serve(settings, policy)


def register_audit(subparsers: argparse._SubParsersAction) -> None:
    """Add ``steerguard audit tail``: read the sidecar's audit stream back."""
    from sidecar.settings import AuditSettings
    from steerguard.settings import add_flag

    audit = subparsers.add_parser("audit", help="read the sidecar's audit trail")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    tail = sub.add_parser(
        "tail",
        help="print audit events as JSON lines, oldest first",
        description="The last --count events of the audit stream, then (--follow) new ones as they come.",
    )
    defaults = AuditSettings()
    add_flag(
        tail, "--audit-redis-url", default="redis://127.0.0.1:6379/0", help="the Redis holding the stream"
    )
    add_flag(tail, "--audit-stream", default=defaults.stream, help="the stream's key")
    tail.add_argument("--count", type=int, default=20, help="events from the end (0: none, with --follow)")
    tail.add_argument("--follow", action="store_true", help="keep printing new events until interrupted")
    tail.set_defaults(func=run_tail)


def run_tail(ns: argparse.Namespace) -> int:
    from sidecar.audit import tail

    try:
        tail(ns.audit_redis_url, ns.audit_stream, ns.count, ns.follow)
    except KeyboardInterrupt:
        return 0
    return 0
