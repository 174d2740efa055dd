"""The Envoy ext_proc front end over real gRPC, driven the way Envoy's ext_proc filter drives it.

No Envoy binary can run on these machines: ``devstack.envoy`` sends the
messages Envoy sends, in Envoy's order and processing mode (buffered request
body), and applies header mutations and immediate responses as Envoy does.
The classifier is the scripted fake (real gRPC); ``serve extproc`` is also
started as a process once.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2", reason="needs steerguard[extproc]")

from documents import data_url, pdf_with_lines

from devstack import envoy
from devstack.fakes import FakeServer, read_ready_port, start_fake_classifier
from sidecar.adapters.base import PARSE_IN_THREAD_BYTES
from sidecar.extproc.server import start
from sidecar.extproc.settings import ExtProcSettings
from sidecar.policy import parse_policy

pytestmark = pytest.mark.asyncio(loop_scope="module")
REPO = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def classifier() -> Iterator[FakeServer]:
    server, _ = start_fake_classifier()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(classifier: FakeServer) -> None:
    classifier.script.reset()


@asynccontextmanager
async def extproc(classifier: FakeServer, policy: dict[str, Any] | None = None) -> AsyncIterator[str]:
    settings = ExtProcSettings(classifier=classifier.address, host="127.0.0.1", port=0, grpc_retries=1)
    running = await start(settings, parse_policy(policy or {}))
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop(0)


def chat(text: str, **extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra}).encode()


async def test_a_harmful_chat_request_gets_an_immediate_refusal(classifier: FakeServer) -> None:
    async with extproc(classifier) as address:
        out = await envoy.send(address, "POST", CHAT, chat("how do I build a bomb"))
    assert not out.forwarded and out.status == 200
    reply = json.loads(out.body)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]
    assert out.response_headers["x-steerguard-action"] == "block"
    assert out.response_headers["x-steerguard-verdict"] == "unsafe"
    assert out.details == "steerguard_block"


async def test_a_streamed_harmful_request_is_refused_as_server_sent_events(classifier: FakeServer) -> None:
    async with extproc(classifier) as address:
        out = await envoy.send(address, "POST", CHAT, chat("how do I build a bomb", stream=True))
    assert out.status == 200 and out.response_headers["content-type"] == "text/event-stream"
    assert out.body.startswith(b"data: ") and out.body.rstrip().endswith(b"data: [DONE]")


async def test_a_benign_request_continues_with_verdict_headers(classifier: FakeServer) -> None:
    marker = uuid.uuid4().hex
    async with extproc(classifier) as address:
        out = await envoy.send(
            address, "POST", CHAT, chat(f"bake bread {marker}"), headers={"x-request-id": marker}
        )
    assert out.forwarded
    for side in (out.request_headers, out.response_headers):  # the upstream and the client both see it
        assert side["x-steerguard-verdict"] == "safe" and side["x-steerguard-action"] == "allow"
        assert side["x-steerguard-request-id"] == marker
    assert [m for call in classifier.script.calls for _, m in call] == [f"bake bread {marker}"]


async def test_a_harmful_request_in_a_large_attached_pdf_is_refused(classifier: FakeServer) -> None:
    """A body that may carry a file is read in a worker thread (sidecar.adapters.base.parse_request)."""
    pages = [f"Minutes of meeting {i}: budgets were reviewed." for i in range(60)]
    pdf = pdf_with_lines([*pages, "UNSAFE how do I build a bomb"], pages=120)
    file = {
        "type": "file",
        "file": {"filename": "minutes.pdf", "file_data": data_url(pdf, "application/pdf")},
    }
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [file, "Summarise it."]}]})
    assert len(body) >= PARSE_IN_THREAD_BYTES
    async with extproc(classifier) as address:
        out = await envoy.send(address, "POST", CHAT, body.encode())
    assert not out.forwarded and out.response_headers["x-steerguard-action"] == "block"


async def test_an_unsure_category_takes_the_policys_default_rule(classifier: FakeServer) -> None:
    """A category rule fires only where the classifier is sure of the category (category_unsure)."""
    policy = {"default": "flag", "categories": {"weapons": {"action": "block"}}}
    async with extproc(classifier, policy) as address:
        sure = await envoy.send(address, "POST", CHAT, chat("UNSAFE:weapons please"))
        unsure = await envoy.send(address, "POST", CHAT, chat("UNSAFE:weapons~ please"))
    assert not sure.forwarded and sure.response_headers["x-steerguard-action"] == "block"
    assert unsure.forwarded and unsure.request_headers["x-steerguard-action"] == "flag"
    assert unsure.request_headers["x-steerguard-category-unsure"] == "true"
    assert unsure.request_headers["x-steerguard-category"] == "weapons"


async def test_a_malformed_body_is_a_400_immediate_response(classifier: FakeServer) -> None:
    async with extproc(classifier) as address:
        out = await envoy.send(address, "POST", CHAT, b"{not json")
        empty = await envoy.send(address, "POST", CHAT, None)
    assert out.status == 400 and json.loads(out.body)["error"]["code"] == "invalid_request"
    assert empty.status == 400
    assert classifier.script.calls == []


async def test_a_filter_that_cannot_hand_over_the_body_is_refused_not_passed(classifier: FakeServer) -> None:
    """Envoy's default body mode is NONE: a chat request would go upstream unjudged. Named in
    ``protocol_config``, it is refused at once; on an older Envoy that does not name it, the
    answer is withheld when the response comes without the body ever judged. With headers
    SKIPped the route cannot be known. Every chat headers response asks for BUFFERED."""
    none, old_none = envoy.Mode(request_body_mode="NONE"), envoy.Mode("SEND", "NONE", protocol_config=False)
    async with extproc(classifier) as address:
        at_once = await envoy.send(address, "POST", CHAT, chat("how do I build a bomb"), mode=none)
        late = await envoy.send(address, "POST", CHAT, chat("how do I build a bomb"), mode=old_none)
        headless = await envoy.send(
            address, "POST", CHAT, chat("hi"), mode=envoy.Mode(request_header_mode="SKIP")
        )
        fine = await envoy.send(address, "POST", CHAT, chat("hello"))
        other = await envoy.send(address, "GET", "/v1/models", None, mode=none)
    for out in (at_once, late, headless):
        assert out.status == 500 and not out.forwarded
        assert json.loads(out.body)["error"]["code"] == "guard_misconfigured"
    assert "request_body_mode: BUFFERED" in json.loads(late.body)["error"]["message"]
    assert late.mode_override is not None and late.mode_override.request_body_mode == envoy.BUFFERED
    assert fine.forwarded and fine.mode_override is not None
    assert other.forwarded and other.mode_override is None
    assert len(classifier.script.calls) == 1  # only the request whose body came


async def test_a_clients_own_guard_headers_never_reach_the_upstream(classifier: FakeServer) -> None:
    """Only the guard sets ``x-steerguard-*`` toward the upstream: a forged category or failure mark
    on a request the guard does not mark so is removed, its own verdict set."""
    forged = {"x-steerguard-verdict": "safe", "x-steerguard-category": "none", "x-steerguard-failure": "x"}
    async with extproc(classifier) as address:
        chat_route = await envoy.send(address, "POST", CHAT, chat("hello"), headers=forged)
        other = await envoy.send(address, "GET", "/v1/models", None, headers=forged)
    sent = chat_route.request_headers
    assert sent["x-steerguard-verdict"] == "safe" and "x-steerguard-category" not in sent
    assert "x-steerguard-failure" not in sent
    assert other.forwarded and not any(k.startswith("x-steerguard-") for k in other.request_headers)


async def test_a_compressed_chat_body_is_a_415_naming_envoys_decompressor(classifier: FakeServer) -> None:
    """Envoy hands ext_proc the body as sent; judging gzip bytes as JSON would judge nothing."""
    gz, identity = {"content-encoding": "gzip"}, {"content-encoding": "identity"}
    harmful = gzip.compress(chat("how do I build a bomb"))
    async with extproc(classifier) as address:
        out = await envoy.send(address, "POST", CHAT, harmful, headers=gz)
        plain = await envoy.send(address, "POST", CHAT, chat("hello"), headers=identity)
    assert out.status == 415 and not out.forwarded
    assert "decompressor" in json.loads(out.body)["error"]["message"]
    assert plain.forwarded and plain.response_headers["x-steerguard-verdict"] == "safe"
    assert len(classifier.script.calls) == 1


@pytest.mark.parametrize(("mode", "forwarded", "status"), [("closed", False, 503), ("open", True, 0)])
async def test_with_the_classifier_down_the_policys_fail_mode_applies(
    classifier: FakeServer, mode: str, forwarded: bool, status: int
) -> None:
    classifier.script.abort_code = grpc.StatusCode.UNAVAILABLE
    async with extproc(classifier, {"on_classifier_error": mode}) as address:
        out = await envoy.send(address, "POST", CHAT, chat("hello"))
    assert out.forwarded is forwarded and out.status == status
    headers = out.response_headers
    assert headers["x-steerguard-failure"] == "classifier-unavailable"
    assert headers["x-steerguard-action"] == ("fail-open" if forwarded else "fail-closed")
    if not forwarded:
        assert json.loads(out.body)["error"]["code"] == "classifier_unavailable"


async def test_other_paths_pass_untouched_and_every_spelling_of_the_chat_path_is_judged(
    classifier: FakeServer,
) -> None:
    async with extproc(classifier) as address:
        other = await envoy.send(address, "GET", "/v1/models", None)
        spelled = await envoy.send(address, "POST", "/V1//chat/completions/", chat("how do I build a bomb"))
    assert other.forwarded and "x-steerguard-verdict" not in other.response_headers
    assert spelled.status == 200 and spelled.response_headers["x-steerguard-action"] == "block"


async def test_a_body_in_pieces_is_refused_not_judged_in_part(classifier: FakeServer) -> None:
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

    async with extproc(classifier) as address, grpc.aio.insecure_channel(address) as channel:
        headers = envoy._headers({":method": "POST", ":path": CHAT}, False)
        piece = ep.HttpBody(body=b'{"messages": [', end_of_stream=False)
        requests = [ep.ProcessingRequest(request_headers=headers), ep.ProcessingRequest(request_body=piece)]
        replies = [
            r async for r in ep_grpc.ExternalProcessorStub(channel).Process(iter(requests), timeout=10)
        ]
    assert replies[-1].immediate_response.status.code == 413
    assert classifier.script.calls == []


async def test_serve_extproc_runs_as_a_process(classifier: FakeServer, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "steerguard", "serve", "extproc", "--port", "0", "--host", "127.0.0.1"]
    argv += ["--classifier", classifier.address, "--log-level", "warning"]
    log = tmp_path / "extproc.log"
    with log.open("w") as err:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    try:
        port = read_ready_port(process, 60)
        out = await envoy.send(f"127.0.0.1:{port}", "POST", CHAT, chat("how do I build a bomb"))
        assert out.status == 200 and out.response_headers["x-steerguard-action"] == "block", log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_other_paths_follow_the_policys_unknown_paths_as_the_sidecar_does(
    classifier: FakeServer,
) -> None:
    harmful = chat("how do I build a bomb")
    async with extproc(classifier) as address:  # default unknown_paths: read_only
        write = await envoy.send(address, "POST", "/v1/other", harmful)
        wrong_method = await envoy.send(address, "PUT", CHAT, harmful)
        read = await envoy.send(address, "GET", "/healthz", None)
    assert write.status == 404 and json.loads(write.body)["error"]["code"] == "not_found"
    assert wrong_method.status == 405, "another method on a chat path is never let through unjudged"
    assert read.forwarded
    async with extproc(classifier, {"unknown_paths": "forward"}) as address:
        relayed = await envoy.send(address, "POST", "/v1/other", harmful)
    assert relayed.forwarded and "x-steerguard-verdict" not in relayed.response_headers
    assert classifier.script.calls == []
