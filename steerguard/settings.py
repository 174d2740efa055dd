"""Flags that fall back to environment variables, parsed once at the entry point.

Rule used by every command: the flag ``--foo-bar`` may also be set by the
environment variable ``STEERGUARD_FOO_BAR`` (a flag on the command line wins).
Kubernetes manifests rely on this rule, and a test checks that the variables
they set are flags the command reads.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

ENV_PREFIX = "STEERGUARD_"


def env_name(flag: str) -> str:
    """``--redis-url`` -> ``STEERGUARD_REDIS_URL``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_flag(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> argparse.Action:
    """Add ``flag`` whose default comes from its environment variable when set.

    Booleans use ``action="store_true"``; their variable accepts 1/0/true/false.
    """
    env = env_name(flag)
    raw = os.environ.get(env)
    help_text = kwargs.pop("help", "")
    kwargs["help"] = f"{help_text} [env {env}]".strip()
    if raw is not None:
        if kwargs.get("action") == "store_true":
            kwargs["default"] = _parse_bool(raw)
        else:
            convert = kwargs.get("type", str)
            try:
                kwargs["default"] = convert(raw)
            except (TypeError, ValueError) as exc:
                parser.error(f"environment variable {env}: {exc}")
    return parser.add_argument(flag, **kwargs)


def env_flags(parser: argparse.ArgumentParser) -> set[str]:
    """All environment variable names a parser reads (for manifest checks)."""
    names: set[str] = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in {"--help"}:
                names.add(env_name(opt))
    return names
