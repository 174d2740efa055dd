"""Candidate decodings of the other ways a request is commonly hidden from a classifier:
letters spaced apart, hex, percent-encoding, character codes (decimal or binary), Morse,
a Caesar shift of any size, Atbash, and each word spelt backwards.

A larger chat model reads all of these (ask one to answer a hex or Morse
message); the probe reads noise. Each function returns a candidate text, or
None where the text has no such structure; :func:`steerguard.decoding.readings`
keeps a candidate only where it reads clearly more like language than the text
as written, so an ordinary request pays only these quick scans. Generic rules;
their few thresholds (shares of letters, of spaced or Morse tokens) were set on
calibration prompts and synthetic benign text only (docs/evaluation.md, "Ciphers").
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from urllib.parse import unquote

# A text whose words are mostly letters set apart ("h o w  t o", "h.o.w t.o").
MIN_SPACED_SHARE = 0.6
_LETTER_SPLIT = re.compile(r"(?<=[\w'])[.\-_*·](?=[\w'])")
_SPACED_WORD = re.compile(r"^[\w'](?:[.\-_*·][\w'])+[.,!?:;]?$")
_WORD_GAP = re.compile(r"\s{2,}|\s+[/|]\s+")
MIN_LETTER_SHARE = 0.75  # of a decoded run's characters
# Runs of at least 8 bytes in hex ("68 6f 77", "0x68,0x6f", "\x68\x6f", "686f77").
_HEX_RUN = re.compile(r"(?:(?:0x|\\x)?[0-9A-Fa-f]{2}[\s,:]?){8,}")
_HEX_PAIR = re.compile(r"(?:0x|\\x)?([0-9A-Fa-f]{2})")
_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2}){3,}")
# Runs of at least 6 numbers: 7-8-bit binary groups or decimal character codes.
_CODE_RUN = re.compile(r"(?:\b\d{2,8}\b[\s,;]*){6,}")
MORSE_CODES = (
    ".- -... -.-. -.. . ..-. --. .... .. .--- -.- .-.. -- -. --- .--. --.- .-. ... - ..- ...- .-- -..- "
    "-.-- --.. ----- .---- ..--- ...-- ....- ..... -.... --... ---.. ----. .-.-.- --..-- ..--.. -.-.-- -..-."
)
_MORSE = dict(zip(MORSE_CODES.split(" "), string.ascii_lowercase + string.digits + ".,?!/", strict=True))
_MORSE_TOKEN = re.compile(r"^[.\-]{1,7}$")
MIN_MORSE_TOKENS = 6
# English letter frequencies (%), to rank Caesar shifts before any is read for words.
_FREQ_PERCENT: tuple[float, ...] = (8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4)
_FREQ_PERCENT += (6.7, 7.5, 1.9, 0.095, 6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074)
_FREQ = dict(zip(string.ascii_lowercase, _FREQ_PERCENT, strict=True))
CAESAR_TRIES = 3  # the shifts whose letters fit English best are read for words
_ATBASH = str.maketrans(
    string.ascii_lowercase + string.ascii_uppercase,
    string.ascii_lowercase[::-1] + string.ascii_uppercase[::-1],
)


def spaced(text: str) -> str | None:
    """Letters set apart by spaces (words by wider gaps or slashes) or by dots and dashes, joined."""
    tokens = text.split()
    if len(tokens) < 4:
        return None
    if sum(len(t) == 1 for t in tokens) >= MIN_SPACED_SHARE * len(tokens):
        return " ".join("".join(word.split()) for word in _WORD_GAP.split(text.strip()))
    if sum(len(t) == 1 or bool(_SPACED_WORD.match(t)) for t in tokens) >= MIN_SPACED_SHARE * len(tokens):
        return " ".join(_LETTER_SPLIT.sub("", t) for t in tokens)
    return None


def _decoded_runs(pattern: re.Pattern[str], decode: Callable[[str], str | None], text: str) -> str | None:
    """``text`` with each run ``pattern`` finds replaced by its decoding; None if none decodes."""
    found = False

    def one(match: re.Match[str]) -> str:
        nonlocal found
        out = decode(match.group(0))
        if out is None or not _reads_as_text(out):
            return match.group(0)
        found = True
        return out + " "

    decoded = pattern.sub(one, text)
    return decoded if found else None


def _reads_as_text(out: str) -> bool:
    """Printable words (three or more), mostly letters and spaces: random bytes or numbers rarely are."""
    if len(out.split()) < 3 or not all(c.isprintable() or c in "\n\t" for c in out):
        return False
    return sum(c.isalpha() or c.isspace() for c in out) >= MIN_LETTER_SHARE * len(out)


def _hex_bytes(run: str) -> str | None:
    try:
        return bytes.fromhex("".join(_HEX_PAIR.findall(run))).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _codes(run: str) -> str | None:
    numbers = re.findall(r"\d+", run)
    if all(set(n) <= {"0", "1"} and len(n) in (7, 8) for n in numbers):
        values = [int(n, 2) for n in numbers]
    else:
        values = [int(n) for n in numbers]
    return "".join(map(chr, values)) if all(9 <= v < 127 for v in values) else None


def hexadecimal(text: str) -> str | None:
    return _decoded_runs(_HEX_RUN, _hex_bytes, text)


def percent(text: str) -> str | None:
    return _decoded_runs(_PERCENT, unquote, text)


def char_codes(text: str) -> str | None:
    return _decoded_runs(_CODE_RUN, _codes, text)


def morse(text: str) -> str | None:
    """Morse code: letters apart by spaces, words by slashes or wider gaps."""
    tokens = text.replace("/", " ").split()
    if len(tokens) < MIN_MORSE_TOKENS or sum(bool(_MORSE_TOKEN.match(t)) for t in tokens) < 0.8 * len(tokens):
        return None
    words = [w.split() for w in _WORD_GAP.split(text.strip())]
    return " ".join("".join(_MORSE.get(code, "?") for code in word) for word in words)


def shift(text: str, k: int) -> str:
    """``text`` with every Latin letter moved ``k`` places along the alphabet (a Caesar shift)."""
    low, up = string.ascii_lowercase, string.ascii_uppercase
    return text.translate(str.maketrans(low + up, low[k:] + low[:k] + up[k:] + up[:k]))


def caesar(text: str) -> list[str]:
    """The Caesar shifts of ``text`` whose letter counts fit English best (rot13 is read apart)."""
    counts = Counter(c for c in text.lower() if "a" <= c <= "z")
    total = sum(counts.values())
    if total < 12:
        return []

    expected = [f * total / 100 for f in _FREQ.values()]
    low = string.ascii_lowercase

    def misfit(k: int) -> float:  # chi-squared of the shifted letters against English
        return sum((counts[low[(i - k) % 26]] - e) ** 2 / e for i, e in enumerate(expected))

    best = sorted((k for k in range(1, 26) if k != 13), key=misfit)[:CAESAR_TRIES]
    return [shift(text, k) for k in best]


def atbash(text: str) -> str:
    return text.translate(_ATBASH)


def words_reversed(text: str) -> str:
    return " ".join(word[::-1] for word in text.split(" "))
