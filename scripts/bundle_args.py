"""The arguments the bundle scripts share: a bundle in, a folder out, the data folder."""

from __future__ import annotations

import argparse


def parse(doc: str | None) -> argparse.Namespace:
    """``BUNDLE OUT [--data DIR]``, described by the first line of the script's docstring."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("bundle", help="the bundle folder to start from")
    parser.add_argument("out", help="the folder to write to")
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    return parser.parse_args()
