"""Files carried inside a request: text files and PDFs are read and judged, the rest reported.

Chat APIs take documents inline, base64-encoded: OpenAI chat's ``file`` part
(``file.file_data``, a data URL), the Responses API's ``input_file``
(``file_data``) and Anthropic's ``document`` block (``source`` of type
``base64``). A guard that skipped them would let a harmful request hide in an
attached file, so their text joins what the classifier reads, in the part's
place. Bytes that decode as text are read as text whatever media type the part
claims (an upstream may sniff, and a wrong label must not hide a request); a
PDF's text is extracted with pypdf, and an office document's (Word, PowerPoint,
Excel, OpenDocument: zipped XML) from its XML parts. Whatever cannot be read (a
file stored upstream, one behind a URL, an encrypted or broken PDF, other
binary formats) is reported unjudged, as images are, and follows the policy's
``on_unjudged``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import io
import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from steerguard.errors import InvalidInput, PayloadTooLarge

# A file's text beyond this is not read on: the request is refused as too large (413) rather
# than judged in part. Four times the policy's default context cap, so a file this long would be
# oversize anyway; the bound keeps one request's time and memory in check (a PDF's text comes at
# roughly 0.6 million characters a second on one core).
MAX_FILE_TEXT_CHARS = 1024 * 1024

# pypdf warns about every quirk of a malformed file; such warnings are noise in a proxy's log.
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Payload:
    """One file a content part carries: its base64 data, or None where only a reference is sent."""

    kind: str  # the part's type, as reported when the file cannot be read
    data: str | None


def file_texts(part: dict[str, Any], unjudged: list[str]) -> tuple[list[str], bool]:
    """The text of every file in ``part`` and whether it carried any; unreadable ones go to ``unjudged``."""
    texts: list[str] = []
    found = False
    for payload in _payloads(part):
        found = True
        text = None if payload.data is None else read_file(payload.data)
        if text is None:
            unjudged.append(payload.kind)
        else:
            texts.append(text)
    return texts, found


def _payloads(part: dict[str, Any]) -> Iterator[Payload]:
    kind = str(part.get("type") or "file")
    inner = part.get("file")  # OpenAI chat: {"type": "file", "file": {"file_data" | "file_id": ...}}
    for holder in (inner, part) if isinstance(inner, dict) else (part,):
        if isinstance(holder.get("file_data"), str):
            yield Payload(kind, holder["file_data"])
        elif any(isinstance(holder.get(k), str) for k in ("file_id", "file_url")):
            yield Payload(kind, None)  # stored upstream or fetched by it: nothing here to read
    source = part.get("source")  # Anthropic: {"type": "base64" | "url" | "file", ...}
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            yield Payload(kind, source["data"])
        elif source.get("type") in ("url", "file"):
            yield Payload(kind, None)


def read_file(data: str) -> str | None:
    """A base64 file's text (bare or a ``data:`` URL); None when it is neither text nor a readable PDF."""
    raw = _decode(data)
    text = as_text(raw)
    if text is None and raw.startswith(b"%PDF-"):
        text = pdf_text(raw)
    elif text is None and raw.startswith(b"PK\x03\x04"):
        text = office_text(raw)
    if text is not None and len(text) > MAX_FILE_TEXT_CHARS:
        raise PayloadTooLarge(f"a file in the request holds over {MAX_FILE_TEXT_CHARS} characters of text")
    return text


def _decode(data: str) -> bytes:
    if data.startswith("data:"):
        header, sep, data = data.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput("a file's data URL must be base64-encoded")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("a file's data is not valid base64") from None


def as_text(raw: bytes) -> str | None:
    """``raw`` as text (UTF-8, or UTF-16/32 with a byte-order mark); None for binary data."""
    encoding = "utf-8"
    for bom, name in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if raw.startswith(bom):
            encoding = name
            break
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def pdf_text(raw: bytes) -> str | None:
    """Every page's text, pages apart by blank lines; None for an encrypted or unreadable PDF."""
    from pypdf import PdfReader  # imported on first use: most requests carry no PDF

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            return None
        pages: list[str] = []
        size = 0
        for page in reader.pages:
            pages.append(page.extract_text() or "")
            size += len(pages[-1])
            if size > MAX_FILE_TEXT_CHARS:
                break
    except Exception:  # a hostile file may break the parser anywhere: it is then unreadable
        return None
    return "\n\n".join(pages)


# Where a paragraph, cell or row ends in the XML of Word (w:p), PowerPoint/DrawingML (a:p),
# OpenDocument (text:p, text:h, table:table-row) and Excel (si: a shared string, row).
_BREAKS = re.compile(r"</(?:w:p|a:p|text:p|text:h|table:table-row|si|row)>|<w:br/>|<w:tab/>")
_TAGS = re.compile(r"<[^>]*>")


def office_text(raw: bytes) -> str | None:
    """The text of every XML part of a zipped office document; None for a zip with none, or broken.

    Every part is read, headers, comments and notes included, as an upstream's converter may
    read them too. A part is read only up to the text cap, so a zip bomb costs no more than that.
    """
    texts: list[str] = []
    size = 0
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".xml") or size > MAX_FILE_TEXT_CHARS:
                    continue
                with archive.open(info) as part:
                    xml = part.read(4 * MAX_FILE_TEXT_CHARS).decode("utf-8", "replace")
                text = html.unescape(_TAGS.sub("", _BREAKS.sub("\n", xml))).strip()
                if text:
                    texts.append(text)
                    size += len(text)
    except Exception:  # broken, encrypted, or compressed in a way zipfile cannot read: unreadable
        return None
    return "\n\n".join(texts) if texts else None
