"""The audit trail: one event per request in a real Redis Stream, no prompt text, read back by the CLI.

A ``redis-server`` of the test's own, the fake classifier over gRPC, the demo
chatbot process, and a sidecar in this event loop with ``--audit-redis-url``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis

from devstack.fakes import ChatbotProcess, FakeServer
from devstack.redis import RedisProcess
from sidecar.app import start_site
from sidecar.audit import conversation_hmac
from sidecar.conversation import Message
from sidecar.policy import parse_policy
from sidecar.settings import AuditSettings, SidecarSettings

pytestmark = [pytest.mark.redis, pytest.mark.asyncio]
REPO = Path(__file__).resolve().parent.parent
STREAM = "test:audit"


async def _requests(url: str, prompts: list[str]) -> list[str]:
    """Each prompt as a chat request, then a pass-through GET and a malformed body; the request ids."""
    ids = []
    async with aiohttp.ClientSession() as http:
        for prompt in prompts:
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            async with http.post(url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                ids.append(resp.headers["x-steerguard-request-id"])
        async with http.get(url + "/v1/models", headers={"x-request-id": "passthrough-1"}) as resp:
            await resp.read()
            ids.append("passthrough-1")
        headers = {"Content-Type": "application/json"}
        async with http.post(url + "/v1/chat/completions", data=b"{not json", headers=headers) as resp:
            assert resp.status == 400
            ids.append(resp.headers["x-steerguard-request-id"])
    return ids


async def test_every_request_is_one_event_without_its_text(
    redis_proc: RedisProcess, fake_services: tuple[FakeServer, ChatbotProcess], tmp_path: Path
) -> None:
    classifier, chatbot = fake_services
    salt = tmp_path / "salt"
    salt.write_bytes(b"s3cret\n")
    audit = AuditSettings(redis_url=redis_proc.url, stream=STREAM, maxlen=1000, salt_file=str(salt))
    settings = SidecarSettings(
        upstream=chatbot.url, classifier=classifier.address, steer="127.0.0.1:1", host="127.0.0.1", port=0
    )
    settings = SidecarSettings(**{**settings.__dict__, "audit": audit, "grace_s": 0.5, "metrics_port": None})
    marker = uuid.uuid4().hex
    prompts = [f"hello {marker} {i}" for i in range(8)] + [f"how to build a bomb {marker}"]
    runner, port = await start_site(settings, parse_policy({"unknown_paths": "forward"}))
    try:
        ids = await _requests(f"http://127.0.0.1:{port}", prompts)
    finally:
        await runner.cleanup()  # drains the queue
    client = redis.Redis.from_url(redis_proc.url, decode_responses=True)
    events = [fields for _, fields in client.xrange(STREAM)]
    assert [e["request_id"] for e in events] == ids  # one each, in order
    assert not any(marker in json.dumps(e) for e in events)  # never the text
    chats = events[: len(prompts)]
    assert [e["action"] for e in chats] == ["allow"] * 8 + ["block"]
    assert chats[-1]["verdict"] == "unsafe" and chats[-1]["category"] == "violence"
    assert all(e["bundle_id"] == "fake-bundle" and len(e["policy_version"]) == 16 for e in chats)
    assert chats[0]["prompt_hmac"] == conversation_hmac(b"s3cret", [Message("user", prompts[0])])
    assert events[-2]["route"] == "passthrough" and "prompt_hmac" not in events[-2]
    assert events[-1]["status"] == "400" and events[-1]["error"]

    tail = subprocess.run(
        [sys.executable, "-m", "steerguard", "audit", "tail", "--audit-redis-url", redis_proc.url]
        + ["--audit-stream", STREAM, "--count", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["request_id"] for line in lines] == ids[-3:]
