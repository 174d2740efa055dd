"""Incremental detokenisation: stream text as tokens arrive, without broken characters.

Decoding one token at a time breaks words (SentencePiece leading spaces, byte
fallback splitting one UTF-8 character over several tokens). As in common
serving stacks, each step decodes a short window ending at the new token and
emits only what the window added beyond its already-emitted prefix; text that
ends in U+FFFD (an unfinished multi-byte character) is held back until the
next token completes it. The concatenated chunks equal ``decode(all tokens)``
for ordinary text; :meth:`flush` returns whatever is still held back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class TextStream:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self.tokens: list[int] = []
        self._prefix_at = 0  # window start
        self._read_at = 0  # tokens up to here are emitted
        self._emitted: list[str] = []

    def push(self, token: int) -> str:
        """Add a token; return the new text it completes (possibly empty)."""
        self.tokens.append(token)
        prefix = self._decode(self.tokens[self._prefix_at : self._read_at])
        text = self._decode(self.tokens[self._prefix_at :])
        if len(text) > len(prefix) and not text.endswith("\ufffd") and text.startswith(prefix):
            new = text[len(prefix) :]
            self._prefix_at, self._read_at = self._read_at, len(self.tokens)
            self._emitted.append(new)
            return new
        return ""

    def flush(self) -> str:
        """Text not yet emitted (at the end of a generation)."""
        full = self._decode(self.tokens)
        done = "".join(self._emitted)
        rest = full[len(done) :] if full.startswith(done) else ""
        self._emitted.append(rest)
        self._read_at = len(self.tokens)
        return rest
