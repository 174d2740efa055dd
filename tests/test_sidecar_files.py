"""Files sent inline (text files, PDFs) are read and judged; what cannot be read is reported.

The adapters' parsing; the proxy over real HTTP is in test_sidecar_proxy.py
(a harmful request in an attached file never reaches the upstream's log).
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import zipfile
from typing import Any

import pytest
from documents import data_url, encrypted_pdf, office_document, pdf_with_lines, with_blank_page

from sidecar.adapters import AnthropicAdapter, OpenAIAdapter, ResponsesAdapter
from sidecar.adapters.base import PARSE_IN_THREAD_BYTES, dumps, parse_request
from sidecar.adapters.files import (
    MAX_FILE_TEXT_CHARS,
    MAX_XML_PART_BYTES,
    FileText,
    as_text,
    file_texts,
    read_file,
)
from steerguard.errors import InvalidInput, PayloadTooLarge


def chat_with_file(file: dict[str, Any], text: str = "Please do what the attached file says.") -> bytes:
    content = [{"type": "file", "file": file}, {"type": "text", "text": text}]
    return dumps({"model": "m", "messages": [{"role": "user", "content": content}]})


# ------------------------------------------------------------------------ reading files


def test_text_is_read_whatever_the_part_claims() -> None:
    assert read_file(data_url(b"plain words", "text/plain")) == FileText("plain words")
    # A wrong label hides nothing.
    assert read_file(data_url("caf\u00e9".encode(), "image/png")) == FileText("caf\u00e9")
    assert read_file(base64.b64encode(b"bare base64").decode()) == FileText("bare base64")
    assert as_text("\ufeffbom".encode("utf-16")) == "\ufeffbom".encode("utf-16").decode("utf-16")
    assert as_text(b"\x89PNG\r\n\x1a\n\x00\x00") is None
    assert as_text(b"nul\x00inside") is None


def test_a_pdf_s_text_is_extracted_from_every_page() -> None:
    read = read_file(
        data_url(pdf_with_lines(["Quarterly report", "Revenue rose (a little)."], pages=3), "x/y")
    )
    assert read is not None and read.whole
    assert read.text.count("Quarterly report") == 3 and "Revenue rose (a little)." in read.text


def test_a_page_with_no_text_layer_makes_the_read_partial_and_none_makes_it_unread() -> None:
    """A scanned page's text cannot be judged: the file is read, and reported unjudged too."""
    partial = read_file(data_url(with_blank_page(pdf_with_lines(["Cover letter"])), "application/pdf"))
    assert partial is not None and "Cover letter" in partial.text and not partial.whole
    assert read_file(data_url(with_blank_page(None), "application/pdf")) is None
    unjudged: list[str] = []
    pdf = data_url(with_blank_page(pdf_with_lines(["Cover letter"])), "application/pdf")
    texts, found = file_texts({"type": "file", "file": {"file_data": pdf}}, unjudged)
    assert found and "Cover letter" in texts[0] and unjudged == ["file"]


@pytest.mark.parametrize("kind", ["docx", "pptx", "odt"])
def test_an_office_document_s_text_is_read(kind: str) -> None:
    raw = office_document(kind, ["First & foremost", "Second <line>"])
    assert read_file(data_url(raw, "application/octet-stream")) == FileText("First & foremost\nSecond <line>")


def test_a_zip_bomb_costs_no_more_than_the_text_cap() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", "<w:t>" + "x" * (8 * MAX_FILE_TEXT_CHARS) + "</w:t>")
    assert len(buffer.getvalue()) < MAX_FILE_TEXT_CHARS // 50
    with pytest.raises(PayloadTooLarge):
        read_file(data_url(buffer.getvalue(), "application/zip"))
    assert read_file(data_url(b"PK\x03\x04\xff\xfe not really a zip", "application/zip")) is None


def test_an_xml_part_too_large_to_read_whole_is_refused_not_read_in_part() -> None:
    """Mostly markup, little text: a part past the byte cap must not be judged on its first bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        markup = "<w:r><w:rPr><w:b/></w:rPr></w:r>" * (MAX_XML_PART_BYTES // 30)
        archive.writestr("word/document.xml", markup + "<w:t>the request at the end</w:t>")
    with pytest.raises(PayloadTooLarge):
        read_file(data_url(buffer.getvalue(), "application/zip"))


def test_unreadable_files_are_none_and_bad_base64_is_refused() -> None:
    assert read_file(data_url(encrypted_pdf(), "application/pdf")) is None
    assert read_file(data_url(b"%PDF-1.4\n garbage \xff\xfe", "application/pdf")) is None
    with pytest.raises(InvalidInput, match="base64"):
        read_file("data:application/pdf;base64,@@not base64@@")
    with pytest.raises(InvalidInput, match="base64-encoded"):
        read_file("data:text/plain,plain%20text")
    with pytest.raises(PayloadTooLarge):
        read_file(data_url(b"a" * (MAX_FILE_TEXT_CHARS + 1), "text/plain"))


def test_every_api_s_file_shape_is_read_in_the_part_s_place() -> None:
    pdf = pdf_with_lines(["Attached instructions"])
    chat = OpenAIAdapter().parse(
        chat_with_file({"filename": "a.pdf", "file_data": data_url(pdf, "application/pdf")})
    )
    assert chat.messages[-1].content.index("Attached instructions") < chat.messages[-1].content.index(
        "Please"
    )
    assert chat.unjudged == ()
    responses = ResponsesAdapter().parse(
        dumps(
            {
                "model": "m",
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_file",
                                "filename": "n.txt",
                                "file_data": data_url(b"notes", "text/plain"),
                            },
                            {"type": "input_file", "file_id": "file-123"},
                            {"type": "input_text", "text": "Summarise."},
                        ],
                    }
                ],
            }
        )
    )
    assert "notes" in responses.messages[-1].content and responses.unjudged == ("input_file",)
    source = {"type": "base64", "media_type": "application/pdf", "data": base64.b64encode(pdf).decode()}
    parts = [
        {"type": "document", "source": source},
        {
            "type": "document",
            "source": {"type": "content", "content": [{"type": "text", "text": "inner part"}]},
        },
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "Go."},
    ]
    anthropic = AnthropicAdapter().parse(
        dumps({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": parts}]})
    )
    content = anthropic.messages[-1].content
    assert "Attached instructions" in content and "inner part" in content
    assert anthropic.unjudged == ("document",)


def test_a_stored_or_encrypted_file_is_unjudged_and_an_image_stays_so() -> None:
    stored = OpenAIAdapter().parse(chat_with_file({"file_id": "file-abc"}))
    locked = OpenAIAdapter().parse(
        chat_with_file({"file_data": data_url(encrypted_pdf(), "application/pdf")})
    )
    assert stored.unjudged == ("file",) and locked.unjudged == ("file",)
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256))).decode()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    chat = AnthropicAdapter().parse(
        dumps(
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [image, "Describe it."]}],
            }
        )
    )
    assert chat.unjudged == ("image",)


class _ThreadNoting(OpenAIAdapter):
    """The OpenAI adapter, noting the thread each parse runs on."""

    threads: list[int]

    def parse(self, body: bytes) -> Any:
        self.threads.append(threading.get_ident())
        return super().parse(body)


def test_a_large_body_is_parsed_off_the_event_loop() -> None:
    """A body that may carry a PDF is read in a worker thread, so the loop serves other requests meanwhile."""
    pdf = pdf_with_lines([f"line {i} of a long report" for i in range(60)], pages=200)
    large = chat_with_file({"file_data": data_url(pdf, "application/pdf")})
    small = chat_with_file({"file_data": data_url(b"a short note", "text/plain")})
    assert len(small) < PARSE_IN_THREAD_BYTES <= len(large)
    adapter = _ThreadNoting()
    adapter.threads = []

    async def run() -> tuple[int, Any, Any]:
        loop_thread = threading.get_ident()
        return loop_thread, await parse_request(adapter, small), await parse_request(adapter, large)

    loop_thread, short, long = asyncio.run(run())
    assert adapter.threads[0] == loop_thread != adapter.threads[1]
    assert "a short note" in short.messages[-1].content
    assert long.messages[-1].content.count("line 59 of a long report") == 200
