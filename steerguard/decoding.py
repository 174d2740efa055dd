"""Readings of a text that an encoding or a disguise hides: base64, rot13, reversed text,
leetspeak, and the ciphers of :mod:`steerguard.ciphers` (hex, Morse, letters spaced apart,
...); invisible and look-alike characters.

A harmful request in base64 or rot13 reads as noise to the probe, while the
chat model behind the guard may decode it and comply. So every text is also
judged as each decoding that makes it read *more* like language than it did:
the decoded text must be printable and hold more common English words than the
original (a plain English request yields no candidate, so ordinary traffic
pays nothing). Generic rules, fixed before any evaluation; no data set tuned
them.

Disguises change how a text tokenises but not how a person, or a larger chat
model, reads it: zero-width characters and soft hyphens inside words, Unicode
tag characters (invisible copies of ASCII, "ASCII smuggling"), full-width or
mathematical letters, marks struck through letters, Cyrillic and Greek letters
that look Latin. A text that uses one is also read as it looks
(:func:`unhidden`), before any decoding.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

from steerguard import ciphers

# Frequent English function words: a text "reads like language" by how many of its words are here.
_COMMON_WORDS = """
a i an the and or but if of to in on at by for with from as is are was were be been being do does did
how what why when where who which that this these those it its you he she we they me my your our
their not no can could should would will make get give tell write help need want step steps
"""
COMMON = frozenset(_COMMON_WORDS.split())
_EDGES = re.compile(r"^\W+|\W+$")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_LEET = str.maketrans(
    {"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "0": "o", "5": "s", "$": "s", "7": "t", "+": "t"}
)
_HAS_LETTER = re.compile(r"[A-Za-z]")
_MIXED = re.compile(r"[A-Za-z][0-9@$!+]|[0-9@$!+][A-Za-z]")
MIN_LEET_SHARE = 0.3  # of the words with letters: an id or two in a sentence is not leetspeak
MIN_WORDS = 4
MIN_COMMON = 2  # a reading must hold at least two common words: one can be chance in noise
# A reading counts when it reads clearly more like language: at least this share of common words,
# and this much more than the text as written (a hex id in plain English must not count).
# Chosen on calibration prompts only (2026-12-07; were 0.25 and 0.2, without "a" and "i"): of the
# harmful ones, 98% in rot13 and 97.5% reversed get a reading (82% each before); 0 of 1,253 benign
# prompts get one, and 10 of 3,000 strings of random letter-words (docs/evaluation.md, "Ciphers").
MIN_WORDINESS = 0.2
MIN_GAIN = 0.1


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
    """Digits and signs read as letters, in a text where many words mix them (ids alone do not count)."""
    words = [w for w in text.split() if _HAS_LETTER.search(w)]
    mixed = sum(bool(_MIXED.search(w)) for w in words)
    if mixed < 2 or mixed < MIN_LEET_SHARE * len(words):
        return None
    return text.translate(_LEET)


def _ciphered(text: str, base: float) -> list[str | None]:
    """Decodings any text has: kept only where they read clearly more like language than ``text``
    (whose wordiness is ``base``)."""
    out = [_rot13(text), _reversed(text), _leet(text), ciphers.words_reversed(text)]
    if base < MIN_WORDINESS:  # a text that reads as English is no cipher
        out += [ciphers.atbash(text), *ciphers.caesar(text)]
    return out


def _structured(text: str) -> list[str | None]:
    """Decodings only a text of their form has (Morse, spaced letters, codes): its form is the evidence,
    so a reading that holds some language and more than the text is kept."""
    return [ciphers.spaced(text), ciphers.morse(text), ciphers.percent(text), ciphers.char_codes(text)]


def readings(text: str) -> list[str]:
    """Decodings of ``text`` that read more like language than ``text`` itself, best first.

    A disguised text's plain reading comes first, and the decodings are of that reading.
    """
    found: dict[str, float] = {}
    plain = unhidden(text)
    if plain is not None:
        found[plain] = 3.0  # a disguise is deliberate: its reading is always judged
        text = plain
    base = wordiness(text)
    for decoded in (_base64(text), ciphers.hexadecimal(text)):
        if decoded is not None and decoded != text:
            found[decoded] = wordiness(decoded) + 1.0  # decoded bytes are strong evidence, whatever the words
    for candidate in _structured(text):
        if candidate is not None and candidate != text and (score := wordiness(candidate)) > base:
            found.setdefault(candidate, score)
    for candidate in _ciphered(text, base):
        if candidate is None or candidate == text:
            continue
        score = wordiness(candidate)
        if score >= base + MIN_GAIN and score >= MIN_WORDINESS:
            found.setdefault(candidate, score)
    return sorted(found, key=found.__getitem__, reverse=True)


# Tag characters (U+E0020-U+E007E) mirror printable ASCII and are invisible when shown.
_TAGGED = re.compile("[\U000e0020-\U000e007e]")
# Characters that show as nothing (zero-width spaces and joiners, word joiner, invisible
# operators, byte-order mark, soft hyphen, Mongolian vowel separator, combining grapheme joiner).
_INVISIBLE = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f"
# One touching a letter or digit hides a word (a joiner between emoji hides nothing).
_INVISIBLE_BY_WORD = re.compile(f"(?<=\\w)[{_INVISIBLE}]|[{_INVISIBLE}](?=\\w)")
_UNSEEN = str.maketrans({c: None for c in _INVISIBLE} | {t: t - 0xE0000 for t in range(0xE0020, 0xE007F)})
# Compatibility forms that restyle a letter or digit: full-width, mathematical alphanumerics,
# circled and parenthesised (ligatures and superscripts, common in pasted text, do not count).
_RESTYLED = re.compile("[\uff01-\uff5e\U0001d400-\U0001d7ff\u2460-\u24ff\U0001f130-\U0001f189]")
MIN_RESTYLED = 3  # one full-width or bold letter is typography; a word of them is a disguise
# Combining marks left on Latin letters once the text is composed (NFC): strike-through or
# "Zalgo" text. An accent typed as a combining mark composes into its letter and stays.
_MARKS = re.compile("(?<=[A-Za-z])[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
# Cyrillic and Greek letters drawn like Latin ones (the common part of Unicode's confusables).
_LOOKALIKE = str.maketrans(
    "\u0430\u0432\u0435\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0455\u0456\u0458\u0501\u051b\u051d"
    "\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0423\u0405\u0406\u0408"
    "\u03b1\u03bf\u03bd\u03c1\u03c5\u03b9\u03ba\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5\u03a7",
    "abekmhopctyxsijdqwABEKMHOPCTXYSIJaovpuikABEZHIKMNOPTYX",
)
_LATIN = re.compile(r"[A-Za-z]")
_WORD = re.compile(r"\w+")


def _lookalikes_in_latin(text: str) -> bool:
    """Whether a word mixes Latin letters with look-alikes, or a mostly Latin text holds a word of them.

    One-letter words are left alone: a Greek letter in a formula is no disguise.
    """
    if text.translate(_LOOKALIKE) == text:
        return False
    changed = [w for w in _WORD.findall(text) if len(w) > 1 and w.translate(_LOOKALIKE) != w]
    if not changed:
        return False
    if any(_LATIN.search(w) for w in changed):
        return True
    letters = [c for c in text if c.isalpha()]
    return sum("a" <= c.lower() <= "z" for c in letters) >= 0.5 * len(letters)


def unhidden(text: str) -> str | None:
    """``text`` as it reads when shown, where it uses a disguise; None for a text that uses none.

    Tag characters become the ASCII they mirror, invisible characters and marks struck
    through Latin letters go, compatibility forms (full-width, mathematical, circled letters)
    fold to plain ones, and look-alike Cyrillic or Greek letters in Latin text become the
    Latin letters they imitate.
    """
    if text.isascii():
        return None  # the common case, at C speed: nothing to unhide
    unseen = _TAGGED.search(text) is not None or _INVISIBLE_BY_WORD.search(text) is not None
    restyled = len(_RESTYLED.findall(text)) >= MIN_RESTYLED
    # Compose only where a mark follows a letter: most non-ASCII text (accents typed whole) has none.
    has_marks = _MARKS.search(text) is not None
    composed = unicodedata.normalize("NFC", text) if has_marks else text
    marked = has_marks and len(_MARKS.findall(composed)) >= MIN_RESTYLED
    lookalikes = _lookalikes_in_latin(text)
    if not (unseen or restyled or marked or lookalikes):
        return None
    out = (_MARKS.sub("", composed) if marked else text).translate(_UNSEEN)
    out = unicodedata.normalize("NFKC", out) if restyled else out
    out = out.translate(_LOOKALIKE) if lookalikes else out
    return out if out != text and out.strip() else None
