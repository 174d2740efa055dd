"""A small, deliberately unguarded chatbot: the "legacy app" the sidecar is put in front of.

It speaks two APIs, as legacy bots do:

- OpenAI-style ``POST /v1/chat/completions`` (with ``stream: true`` as SSE);
- its own ``POST /api/ask`` taking ``{"question": ..., "history": [...]}`` and
  answering ``{"answer": ...}`` (for the sidecar's generic JSON adapter).

Two backends: ``model`` answers with the embedded SmolLM2 (what ``steerguard
up`` runs), ``echo`` answers instantly and deterministically (tests and
benchmarks). ``--request-log FILE`` appends one JSON line per request it
receives, before answering, with the exact headers and body: tests assert on
this log that a harmful request never reached the bot and a safe one arrived
byte-for-byte. It is off by default because it records prompts. Test hooks:
the ``x-demo-delay-ms`` header delays the answer, ``x-demo-chunk-delay-ms``
paces streamed chunks.

Run: ``python -m devstack.demo_chatbot --port 8000 --backend echo``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

MODEL_NAME = "demo-chatbot"
# Test hook of the echo backend: a safe-looking request whose answer a fake classifier finds unsafe.
ECHO_UNSAFE_HOOK = ("UNS4FE", "UNSAFE")


@dataclass(frozen=True)
class Usage:
    """Last item a backend yields: why it stopped and token counts."""

    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Backend(Protocol):
    """Produces an answer to a conversation piece by piece, then (optionally) a :class:`Usage`."""

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int) -> AsyncIterator[str | Usage]: ...


class EchoBackend:
    """Answers ``You said: <last user message>`` word by word, instantly."""

    def answer(self, messages: list[dict[str, str]]) -> str:
        last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        return "You said: " + last.replace(*ECHO_UNSAFE_HOOK)

    async def stream(self, messages: list[dict[str, str]], max_new_tokens: int) -> AsyncIterator[str | Usage]:
        words = self.answer(messages).split(" ")
        for i, word in enumerate(words):
            yield word if i == 0 else " " + word
        yield Usage("stop", 0, len(words))


class ModelBackend:
    """Greedy generation with the embedded model (one request at a time: it is CPU-bound)."""

    def __init__(self, model_path: str | None, threads: int = 0) -> None:
        from steerguard.model.chat import normalise_request
        from steerguard.model.host import ModelHost

        self._normalise = normalise_request
        self.host = ModelHost.load(model_path, threads=threads)
        self._lock = threading.Lock()

    def _generate(
        self, messages: list[dict[str, str]], max_new_tokens: int, emit: Callable[[str | Usage | None], None]
    ) -> None:
        import torch
        from transformers import TextIteratorStreamer

        try:
            conv = self._normalise(messages=messages)
            ids = torch.tensor([self.host.token_ids(conv)], dtype=torch.long)
            streamer = TextIteratorStreamer(self.host.tokenizer, skip_prompt=True, skip_special_tokens=True)
            result: dict[str, Any] = {}

            def run() -> None:
                result["out"] = self.host.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    streamer=streamer,
                    pad_token_id=self.host.tokenizer.pad_token_id,
                )

            with self._lock:
                worker = threading.Thread(target=run, daemon=True)
                worker.start()
                for piece in streamer:
                    if piece:
                        emit(piece)
                worker.join()
            produced = int(result["out"].shape[1] - ids.shape[1]) if "out" in result else 0
            emit(Usage("length" if produced >= max_new_tokens else "stop", int(ids.shape[1]), produced))
        finally:
            emit(None)

    async def stream(self, messages: list[dict[str, str]], max_new_tokens: int) -> AsyncIterator[str | Usage]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Usage | None] = asyncio.Queue()

        def emit(piece: str | Usage | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        threading.Thread(target=self._generate, args=(messages, max_new_tokens, emit), daemon=True).start()
        while True:
            piece = await queue.get()
            if piece is None:
                return
            yield piece


async def collect(pieces: AsyncIterator[str | Usage]) -> tuple[str, Usage]:
    """The whole answer and its usage."""
    text: list[str] = []
    usage = Usage()
    async for piece in pieces:
        if isinstance(piece, Usage):
            usage = piece
        else:
            text.append(piece)
    return "".join(text), usage


def _messages_of(document: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for m in document.get("messages", []) if isinstance(document, dict) else []:
        if not isinstance(m, dict):
            continue
        content = m.get("content", "")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
        role = {"developer": "system"}.get(m.get("role", ""), m.get("role", ""))
        if role in {"system", "user", "assistant"}:
            out.append({"role": role, "content": str(content)})
    return out


class RequestLog:
    """Append-only JSON lines of every request as received (opt-in: it holds prompts)."""

    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115

    def write(self, request: web.Request, body: bytes) -> None:
        if self._file is None:
            return
        record = {
            "ts": time.time(),
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_b64": base64.b64encode(body).decode(),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        self._file.write(json.dumps(record) + "\n")

    def gone(self, request: web.Request, body: bytes) -> None:
        """The client hung up before the answer (a proxy cancelled the request): noted by body digest."""
        if self._file is None:
            return
        record = {"ts": time.time(), "event": "client_gone", "path": request.raw_path}
        record["body_sha256"] = hashlib.sha256(body).hexdigest()
        self._file.write(json.dumps(record) + "\n")


@dataclass
class Completion:
    """One chat completion being answered: its id, time, model and the messages it answers."""

    cid: str
    created: int
    model: str
    messages: list[dict[str, str]]
    limit: int

    def whole(self, text: str, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.cid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": usage.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        }

    def event(self, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _stream(request: web.Request, backend: Backend, c: Completion) -> web.StreamResponse:
    """The answer as OpenAI-style server-sent events (``x-demo-chunk-delay-ms`` paces them)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(c.event({"role": "assistant", "content": ""}, None))
    usage = Usage()
    pause = float(request.headers.get("x-demo-chunk-delay-ms", "0")) / 1000.0
    async for piece in backend.stream(c.messages, c.limit):
        if isinstance(piece, Usage):
            usage = piece
        else:
            await response.write(c.event({"content": piece}, None))
            if pause:
                await asyncio.sleep(pause)
    await response.write(c.event({}, usage.finish_reason) + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def create_app(
    backend: Backend, request_log: str | None = None, max_new_tokens: int = 128
) -> web.Application:
    """The chatbot's routes."""
    log = RequestLog(request_log)
    app = web.Application(client_max_size=16 * 1024 * 1024)

    async def logged_body(request: web.Request) -> bytes:
        body = await request.read()
        log.write(request, body)
        delay = request.headers.get("x-demo-delay-ms")
        if delay:
            await asyncio.sleep(float(delay) / 1000.0)
            if request.transport is None or request.transport.is_closing():
                log.gone(request, body)
        return body

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await logged_body(request)
        try:
            document = json.loads(body)
        except ValueError:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        limit = int(document.get("max_tokens") or document.get("max_completion_tokens") or max_new_tokens)
        model = document.get("model") or MODEL_NAME
        c = Completion(
            "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time()), model, _messages_of(document), limit
        )
        if document.get("stream"):
            return await _stream(request, backend, c)
        text, usage = await collect(backend.stream(c.messages, limit))
        return web.json_response(c.whole(text, usage))

    async def ask(request: web.Request) -> web.Response:
        body = await logged_body(request)
        try:
            document = json.loads(body)
        except ValueError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        history = [h for h in document.get("history", []) if isinstance(h, dict)]
        messages = [*history, {"role": "user", "content": str(document.get("question", ""))}]
        text, _ = await collect(backend.stream(messages, max_new_tokens))
        return web.json_response({"answer": text, "model": MODEL_NAME})

    async def other(request: web.Request) -> web.Response:
        body = await logged_body(request)
        echo = {
            "path": request.raw_path,
            "method": request.method,
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(echo, headers={"x-demo-upstream": "1"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/api/ask", ask)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


async def _main(ns: argparse.Namespace) -> None:
    backend: Backend = EchoBackend() if ns.backend == "echo" else ModelBackend(ns.model, ns.threads)
    runner = web.AppRunner(create_app(backend, ns.request_log, ns.max_new_tokens), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ns.host, ns.port, backlog=2048)
    await site.start()
    port = int(runner.addresses[0][1]) if runner.addresses else ns.port
    print(json.dumps({"event": "ready", "service": "demo-chatbot", "port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.demo_chatbot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--backend", choices=["model", "echo"], default="model")
    parser.add_argument("--model", default=None, help="local HF model directory (default: embedded SmolLM2)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="answer length when the request sets none"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--request-log", default=None, help="append each received request here (holds prompts)"
    )
    ns = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
