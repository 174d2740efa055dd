"""Helpers shared by the offline commands: common flags, loading, and error reporting.

Only argparse is imported at module level, so ``steerguard --help`` stays fast;
torch and transformers are imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from steerguard.settings import add_flag


def add_jsonl_flags(parser: argparse.ArgumentParser) -> None:
    """``--input``/``--output`` JSONL paths shared by the offline commands."""
    add_flag(parser, "--input", default=None, help="input JSONL ('-' for stdin)")
    add_flag(parser, "--output", default=None, help="output JSONL ('-' for stdout)")


def add_model_flags(parser: argparse.ArgumentParser, *, bundle: bool = True, batch_size: int = 16) -> None:
    if bundle:
        add_flag(
            parser, "--bundle", default=None, help="calibration bundle directory (default: the shipped one)"
        )
    add_flag(parser, "--model", default=None, help="local Hugging Face model directory (default: SmolLM2)")
    add_flag(parser, "--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    add_flag(parser, "--batch-size", type=int, default=batch_size, help="prompts per forward pass")
    add_flag(parser, "--quiet", action="store_true", default=False, help="no progress bars")


def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a :class:`SteerguardError` into a one-line message and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from steerguard.errors import SteerguardError

        try:
            return fn(args)
        except SteerguardError as exc:
            print(f"steerguard {args.command}: error: {exc.reason}", file=sys.stderr)
            return 2

    return run


def load_host_and_bundle(args: argparse.Namespace, *, max_layers_for_probe: bool = False) -> tuple[Any, Any]:
    """Load the bundle first (cheap, fails fast), then the model, then check they match."""
    from steerguard.bundle import Bundle
    from steerguard.model.host import ModelHost

    bundle = Bundle.load(args.bundle)
    max_layers = bundle.probe_layer + 1 if max_layers_for_probe else None
    host = ModelHost.load(args.model, max_layers=max_layers, threads=args.threads)
    bundle.verify_model(host.identity)
    return host, bundle
