"""Readings of a text that an encoding hides: base64, rot13, reversed text, leetspeak.

A harmful request in base64 or rot13 reads as noise to the probe, while the
chat model behind the guard may decode it and comply. So every text is also
judged as each decoding that makes it read *more* like language than it did:
the decoded text must be printable and hold more common English words than the
original (a plain English request yields no candidate, so ordinary traffic
pays nothing). Generic rules, fixed before any evaluation; no data set tuned
them.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

# Frequent English function words: a text "reads like language" by how many of its words are here.
_COMMON_WORDS = """
an the and or but if of to in on at by for with from as is are was were be been being do does did
how what why when where who which that this these those it its you he she we they me my your our
their not no can could should would will make get give tell write help need want step steps
"""
COMMON = frozenset(_COMMON_WORDS.split())
_EDGES = re.compile(r"^\W+|\W+$")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_LEET = str.maketrans(
    {"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "0": "o", "5": "s", "$": "s", "7": "t", "+": "t"}
)
MIN_WORDS = 4
MIN_COMMON = 2  # a reading must hold at least two common words: one can be chance in noise
# A reading counts when it reads clearly more like language: at least this share of common words,
# and this much more than the text as written (a hex id in plain English must not count).
MIN_WORDINESS = 0.25
MIN_GAIN = 0.2


def wordiness(text: str) -> float:
    """Share of a text's words that are common English words (0 for a text with too few words).

    Words are the whitespace-separated tokens, so a decoding that only turns
    noise into other noise (a hex id into letters) cannot gain words.
    """
    words = [_EDGES.sub("", token).lower() for token in text.split()]
    hits = sum(w in COMMON for w in words)
    if len(words) < MIN_WORDS or hits < MIN_COMMON:
        return 0.0
    return hits / len(words)


def _printable(text: str) -> bool:
    return bool(text) and sum(c.isprintable() or c in "\n\t" for c in text) >= 0.95 * len(text)


def _base64(text: str) -> str | None:
    """The base64 runs of ``text`` decoded in place, when at least one decodes to printable text."""
    found = False

    def decode(match: re.Match[str]) -> str:
        nonlocal found
        run = match.group(0)
        try:
            raw = base64.b64decode(
                run + "=" * (-len(run) % 4), altchars=b"-_" if "-" in run or "_" in run else None
            )
            out = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            return run
        if not _printable(out):
            return run
        found = True
        return out

    decoded = _B64_RUN.sub(decode, text)
    return decoded if found else None


def _rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _reversed(text: str) -> str:
    return text[::-1]


def _leet(text: str) -> str | None:
    if not re.search(r"[A-Za-z][0-9@$!+]|[0-9@$!+][A-Za-z]", text):
        return None
    return text.translate(_LEET)


def readings(text: str) -> list[str]:
    """Decodings of ``text`` that read more like language than ``text`` itself, best first."""
    base = wordiness(text)
    found: dict[str, float] = {}
    b64 = _base64(text)
    if b64 is not None and b64 != text:
        found[b64] = wordiness(b64) + 1.0  # decoded bytes are strong evidence, whatever the words
    for candidate in (_rot13(text), _reversed(text), _leet(text)):
        if candidate is None or candidate == text:
            continue
        score = wordiness(candidate)
        if score >= base + MIN_GAIN and score >= MIN_WORDINESS:
            found.setdefault(candidate, score)
    return sorted(found, key=found.__getitem__, reverse=True)
