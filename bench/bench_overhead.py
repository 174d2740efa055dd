"""Sidecar overhead on the chat route against an ``http.server``-style upstream, keep-alive both ways.

Python's ``http.server`` writes a response's headers and body in two writes
without ``TCP_NODELAY``; on a kept-alive connection the body then waits for a
delayed acknowledgement (40 ms). The sidecar's upstream connections
acknowledge at once (sidecar.upstream), so a guarded call should cost no more
than a direct one plus the sidecar's own work. Measured side by side in one
run: direct and through the sidecar, on the chat route (classified by a fake
classifier, the local verdict cache off so every request makes the gRPC call)
and on a pass-through path. Target: the chat route adds at most 3 ms p50.

    python bench/bench_overhead.py [--requests 200] [--out reports/bench/overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from report import save  # noqa: E402  (bench/, on the path when a benchmark runs)

from devstack.fakes import start_fake_classifier, start_fake_steerer  # noqa: E402
from sidecar.app import start_site  # noqa: E402
from sidecar.policy import parse_policy  # noqa: E402
from sidecar.settings import SidecarSettings  # noqa: E402
from steerguard.logs import configure_logging  # noqa: E402

ANSWER = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()


class TwoWriteUpstream(BaseHTTPRequestHandler):
    """Headers, then the body: two writes, as http.server does them."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    do_GET = do_POST


def timings(port: int, path: str, method: str, n: int) -> list[float]:
    """Milliseconds per request over one kept-alive connection (the first few are warm-up)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "How do I bake bread?"}]})
    out = []
    for _ in range(n + 5):
        started = time.perf_counter()
        conn.request(
            method,
            path,
            body=body if method == "POST" else None,
            headers={"Content-Type": "application/json"},
        )
        conn.getresponse().read()
        out.append((time.perf_counter() - started) * 1000.0)
    conn.close()
    return out[5:]


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
    }


async def measure(n: int) -> dict[str, object]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), TwoWriteUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    classifier, _ = start_fake_classifier(0)
    steerer, _ = start_fake_steerer(0)
    settings = SidecarSettings(
        upstream=f"http://127.0.0.1:{upstream.server_address[1]}",
        classifier=classifier.address,
        steer=steerer.address,
        host="127.0.0.1",
        port=0,
        verdict_cache_ttl_s=0.0,
        metrics_port=None,
    )
    runner, port = await start_site(settings, parse_policy({"unknown_paths": "forward"}))
    loop = asyncio.get_running_loop()
    result: dict[str, object] = {}
    try:
        for name, path, method in (
            ("chat", "/v1/chat/completions", "POST"),
            ("passthrough", "/v1/models", "GET"),
        ):
            direct = await loop.run_in_executor(None, timings, upstream.server_address[1], path, method, n)
            guarded = await loop.run_in_executor(None, timings, port, path, method, n)
            d, g = summary(direct), summary(guarded)
            result[name] = {"direct": d, "sidecar": g, "added_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3)}
    finally:
        await runner.cleanup()
        upstream.shutdown()
        classifier.stop()
        steerer.stop()
    chat = result["chat"]
    assert isinstance(chat, dict)
    result["target"] = {"added_p50_ms_max": 3.0, "pass": chat["added_p50_ms"] <= 3.0}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default="reports/bench/overhead.json")
    ns = parser.parse_args()
    configure_logging("json", "warning")
    result = asyncio.run(measure(ns.requests))
    save(result, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
