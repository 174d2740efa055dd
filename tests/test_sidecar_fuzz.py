"""1,000 malformed requests against a real sidecar process: only 4xx, no traceback, no body text in its log.

Seeded, so a failure repeats. Eight kinds, 125 each: truncated JSON, invalid
UTF-8, lone surrogates, duplicate keys and non-finite numbers, deep nesting,
wrong types, wrong methods and content types, and malformed HTTP sent over a
raw socket. Every request carries a secret marker; the sidecar's whole log
(stdout and stderr) must never contain it.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.fakes import FakeServer, read_ready_port, start_fake_classifier, start_fake_steerer

REPO = Path(__file__).resolve().parent.parent
PER_KIND = 125
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def sidecar_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[int, subprocess.Popen[str], Path]]:
    classifier: FakeServer
    classifier, _ = start_fake_classifier(0)
    steerer, _ = start_fake_steerer(0)
    log = tmp_path_factory.mktemp("fuzz") / "sidecar.log"
    argv = [sys.executable, "-m", "steerguard", "serve", "sidecar", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--metrics-port", "0"]
    argv += [
        "--upstream",
        "http://127.0.0.1:9",
        "--classifier",
        classifier.address,
        "--steer",
        steerer.address,
    ]
    with log.open("w") as log_file:  # stdout carries only the ready line; the log goes to a file
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO)
    try:
        port = read_ready_port(proc, timeout_s=60)
        yield port, proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        classifier.stop()
        steerer.stop()


def _valid(secret: str) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": f"please help {secret}"}]}


def _http(method: str, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _kinds(rng: random.Random) -> dict[str, Callable[[str], bytes]]:
    def truncated(s: str) -> bytes:
        body = json.dumps(_valid(s)).encode()
        return _http("POST", CHAT, body[: rng.randrange(1, len(body) - 1)])

    def bad_utf8(s: str) -> bytes:
        body = json.dumps(_valid(s)).encode()
        at = body.index(s.encode())
        return _http("POST", CHAT, body[:at] + bytes([rng.choice([0xFF, 0xC0, 0xED, 0x80])]) + body[at:])

    def surrogate(s: str) -> bytes:
        unit = f"\\ud{rng.randrange(0x800, 0x1000):03x}"  # a lone UTF-16 surrogate, D800-DFFF
        return _http("POST", CHAT, json.dumps(_valid(s)).replace("please", unit).encode())

    def ambiguous(s: str) -> bytes:
        extra = rng.choice(
            [
                ', "messages": []',
                ', "temperature": NaN',
                ', "top_p": Infinity',
                ', "seed": -Infinity',
                ', "temperature": 1e999',
            ]
        )
        return _http("POST", CHAT, json.dumps(_valid(s))[:-1].encode() + extra.encode() + b"}")

    def nested(s: str) -> bytes:
        depth = rng.randrange(65, 3000)
        return _http(
            "POST",
            CHAT,
            json.dumps(_valid(s))[:-1].encode() + b', "x": ' + b"[" * depth + b"]" * depth + b"}",
        )

    def wrong_types(s: str) -> bytes:
        shape = rng.choice(
            [
                {"messages": 7},
                {"messages": s},
                {"messages": None},
                {"messages": [{"content": s}]},
                {"messages": [{"role": "user", "content": 5}], "note": s},
                {**_valid(s), "stream": "yes"},
                {**_valid(s), "temperature": "hot"},
                [s],
                s,
            ]
        )
        return _http("POST", CHAT, json.dumps(shape).encode())

    def methods(s: str) -> bytes:
        body = json.dumps(_valid(s)).encode()
        if rng.random() < 0.5:
            return _http(rng.choice(["PUT", "PATCH", "DELETE", "GET", "OPTIONS"]), CHAT, body)
        return _http("POST", CHAT, body, rng.choice(["text/plain", "application/x-www-form-urlencoded", ""]))

    def broken_http(s: str) -> bytes:
        return rng.choice(
            [
                f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {s}\r\n\r\n{s}".encode(),
                f"POST {CHAT} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ{s}\r\n{s}\r\n".encode(),
                f"POST {CHAT} HTTP/1.1\r\nHo\x00st: {s}\r\n\r\n".encode(),
                f"POST {CHAT} HTTP/1.1\r\nX-{s}: ".encode() + b"a" * 10000 + b"\r\n\r\n",
                f"POST {CHAT} HTTP/1.1\r\nBad Header {s}\r\n\r\n".encode(),
                f"POST {CHAT} HTTP/9.9\r\nHost: {s}\r\n\r\n".encode(),
            ]
        )

    return {
        f.__name__: f
        for f in (truncated, bad_utf8, surrogate, ambiguous, nested, wrong_types, methods, broken_http)
    }


def _send(port: int, raw: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        head = s.recv(64)
    return int(head.split(b" ", 2)[1])


def test_a_thousand_malformed_requests_get_only_4xx_and_leave_no_trace(sidecar_process) -> None:  # type: ignore[no-untyped-def]
    port, proc, log_path = sidecar_process
    rng = random.Random(1234)
    secrets: list[str] = []
    statuses: dict[str, set[int]] = {}
    for name, make in _kinds(rng).items():
        for _ in range(PER_KIND):
            secret = "SECRET" + uuid.uuid4().hex[:12]
            secrets.append(secret)
            status = _send(port, make(secret))
            statuses.setdefault(name, set()).add(status)
            assert 400 <= status < 500, (name, status)
    assert len(secrets) == 1000
    proc.terminate()
    stdout, _ = proc.communicate(timeout=20)
    log = stdout + log_path.read_text()
    assert "Traceback" not in log
    leaked = [s for s in secrets if s in log]
    assert not leaked, f"{len(leaked)} request texts reached the log"
    assert statuses["methods"] >= {405, 415}
