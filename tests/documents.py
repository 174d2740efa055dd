"""Files for the sidecar's file tests: minimal PDFs written byte by byte, and data URLs."""

from __future__ import annotations

import base64
import html
import io
import zipfile
import zlib

from pypdf import PdfWriter


def pdf_with_lines(lines: list[str], *, pages: int = 1) -> bytes:
    """A minimal, valid PDF whose pages show ``lines`` in Helvetica (a Flate-compressed content stream)."""
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    content = "BT /F1 11 Tf 14 TL 72 720 Td " + " ".join(f"({t}) '" for t in escaped) + " ET"
    stream = zlib.compress(content.encode("latin-1"))
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
    ]
    font = 3 + 2 * pages
    for i in range(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            f" /Resources << /Font << /F1 {font} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode()
        )
        objects.append(
            f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode() + stream + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def with_blank_page(pdf: bytes | None) -> bytes:
    """``pdf`` (or an empty PDF) with a page that has no text layer added, as a scanned page has none."""
    writer = PdfWriter(clone_from=io.BytesIO(pdf)) if pdf is not None else PdfWriter()
    writer.add_blank_page(612, 792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def data_url(raw: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(raw).decode()}"


def office_document(kind: str, paragraphs: list[str]) -> bytes:
    """A minimal zipped office document (``docx``, ``pptx`` or ``odt``) holding ``paragraphs``."""
    tag, ns = {
        "docx": ("w", 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'),
        "pptx": ("a", 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'),
        "odt": ("text", 'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"'),
    }[kind]
    part = {"docx": "word/document.xml", "pptx": "ppt/slides/slide1.xml", "odt": "content.xml"}[kind]
    run = (
        "<w:r><w:t>{}</w:t></w:r>"
        if kind == "docx"
        else "<a:r><a:t>{}</a:t></a:r>"
        if kind == "pptx"
        else "{}"
    )
    body = "".join(f"<{tag}:p>" + run.format(html.escape(p)) + f"</{tag}:p>" for p in paragraphs)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr(part, f'<?xml version="1.0"?><doc {ns}><body>{body}</body></doc>')
    return buffer.getvalue()
