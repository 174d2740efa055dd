"""Streaming JSONL with errors that name the file and line.

The offline CLI reads inputs of any length, so lines are parsed one at a time
and yielded with their 1-based line number; a malformed line raises
:class:`~steerguard.errors.DataError` naming it instead of a bare
``JSONDecodeError`` from somewhere deep in a batch. Blank lines are skipped
(but still counted, so numbers match an editor's).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from steerguard.errors import DataError, InvalidInput


def _open_read(path: str | Path) -> IO[str]:
    if str(path) == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot open {path}: {exc.strerror}") from exc


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; each line must be a JSON object."""
    fh = _open_read(path)
    try:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno + 1}: not valid UTF-8") from exc
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            except ValueError as exc:  # e.g. out-of-range numbers
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj
    finally:
        if fh is not sys.stdin:
            fh.close()


def request_of(obj: dict[str, Any], where: str) -> Any:
    """The :class:`Conversation` of a ``{"prompt"}`` or ``{"messages"}`` line.

    Errors are prefixed by ``where`` (``file:line``)."""
    from steerguard.model.chat import normalise_request

    try:
        return normalise_request(prompt=obj.get("prompt"), messages=obj.get("messages"))
    except InvalidInput as exc:
        raise DataError(f"{where}: {exc.reason}") from exc
    except (TypeError, AttributeError) as exc:
        raise DataError(f"{where}: malformed request ({exc})") from exc


class JsonlWriter:
    """Write objects one per line (UTF-8, no ASCII escaping); ``-`` is stdout."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path == "-":
            self._fh: IO[str] = sys.stdout
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.count += 1

    def write_all(self, objs: Iterable[dict[str, Any]]) -> None:
        for obj in objs:
            self.write(obj)

    def close(self) -> None:
        if self._fh is not sys.stdout:
            self._fh.close()
        else:
            self._fh.flush()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
