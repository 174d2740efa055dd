"""Files carried inside a request: text files, PDFs and office documents are read and judged.

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
``on_unjudged``; so is a PDF with a page that has no text layer (a scanned page),
beside the text of the pages that have one.
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
class FileText:
    """What a file's text could be read: ``whole`` is False where a part of it could not."""

    text: str
    whole: bool = True


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
        read = None if payload.data is None else read_file(payload.data)
        if read is not None:
            texts.append(read.text)
        if read is None or not read.whole:
            unjudged.append(payload.kind)
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


def read_file(data: str) -> FileText | None:
    """A base64 file's text (bare or a ``data:`` URL); None when it is text of no kind read here."""
    raw = _decode(data)
    text = as_text(raw)
    read = FileText(text) if text is not None else None
    if read is None and raw.startswith(b"%PDF-"):
        read = pdf_text(raw)
    elif read is None and raw.startswith(b"PK\x03\x04"):
        read = office_text(raw)
    if read is not None and len(read.text) > MAX_FILE_TEXT_CHARS:
        raise _too_large()
    return read


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"a file in the request holds over {MAX_FILE_TEXT_CHARS} characters of text")


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


def pdf_text(raw: bytes) -> FileText | None:
    """Every page's text, pages apart by blank lines; None for an encrypted, unreadable or textless PDF.

    A page with no text layer (scanned, or text drawn as an image) makes the read partial.
    """
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
    if not any(page.strip() for page in pages):
        return None
    return FileText("\n\n".join(pages), whole=all(page.strip() for page in pages))


# Where a paragraph, cell or row ends in the XML of Word (w:p), PowerPoint/DrawingML (a:p),
# OpenDocument (text:p, text:h, table:table-row) and Excel (si: a shared string, row).
_BREAKS = re.compile(r"</(?:w:p|a:p|text:p|text:h|table:table-row|si|row)>|<w:br/>|<w:tab/>")
_TAGS = re.compile(r"<[^>]*>")


# An XML part past this many bytes is refused (413) rather than read in part: a zip bomb costs
# no more than this, and the text of a part this large would be over the cap anyway.
MAX_XML_PART_BYTES = 4 * MAX_FILE_TEXT_CHARS


def office_text(raw: bytes) -> FileText | None:
    """The text of every XML part of a zipped office document; None for a zip with none, or broken.

    Every part is read, headers, comments and notes included, as an upstream's converter may
    read them too.
    """
    texts: list[str] = []
    size = 0
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".xml") or size > MAX_FILE_TEXT_CHARS:
                    continue
                with archive.open(info) as part:
                    xml = part.read(MAX_XML_PART_BYTES + 1)
                if len(xml) > MAX_XML_PART_BYTES:
                    size = MAX_FILE_TEXT_CHARS + 1
                    break
                text = html.unescape(_TAGS.sub("", _BREAKS.sub("\n", xml.decode("utf-8", "replace")))).strip()
                if text:
                    texts.append(text)
                    size += len(text)
    except Exception:  # broken, encrypted, or compressed in a way zipfile cannot read: unreadable
        return None
    if size > MAX_FILE_TEXT_CHARS:
        raise _too_large()
    return FileText("\n\n".join(texts)) if texts else None
