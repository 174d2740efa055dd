"""The sidecar's added latency on a cache miss, overlap mode on vs off (issue 24).

In front of a chatbot whose time to first byte is 300 ms (the demo chatbot's
``x-demo-delay-ms``), each round sends one fresh request (a classifier cache
miss) three ways, in turn: to the chatbot directly, through a sidecar with
overlap off (classify, then forward) and through one with ``overlap: true``
(forward while classifying, hold the answer for the verdict). Added latency
is each path's percentile minus the direct path's.

Target: overlap mode adds at most 5 ms p50 over calling the upstream directly.

    python bench/bench_overlap.py                  # the real classifier (SmolLM2)
    python bench/bench_overlap.py --fake --quick   # smoke run with the scripted classifier
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import save  # noqa: E402

from devstack.net import free_port, grpc_serving, http_ok  # noqa: E402
from devstack.processes import Child, Stack  # noqa: E402

CHAT = "/v1/chat/completions"
POLICIES = {
    "overlap_off": "mode: enforce\ndefault: block\n",
    "overlap_on": (
        f"mode: enforce\ndefault: block\nroutes:\n  - {{path: {CHAT}, adapter: openai, overlap: true}}\n"
    ),
}


def start(ns: argparse.Namespace, run_dir: Path) -> tuple[Stack, dict[str, str]]:
    py = sys.executable
    ports = {name: free_port("127.0.0.1") for name in ("bot", "classifier", "overlap_off", "overlap_on")}
    if ns.fake:
        classifier = [py, "-m", "devstack.fakes", "classifier", "--port", str(ports["classifier"])]
    else:
        classifier = [py, "-m", "steerguard", "serve", "classifier", "--host", "127.0.0.1"]
        classifier += ["--port", str(ports["classifier"])]
    children = [
        (Child("classifier", classifier, run_dir / "classifier.log"), None),
        (
            Child(
                "bot",
                [py, "-m", "devstack.demo_chatbot", "--backend", "echo", "--port", str(ports["bot"])],
                run_dir / "bot.log",
            ),
            f"http://127.0.0.1:{ports['bot']}/healthz",
        ),
    ]
    for name, text in POLICIES.items():
        policy = run_dir / f"{name}.yaml"
        policy.write_text(text)
        argv = [py, "-m", "steerguard", "serve", "sidecar", "--host", "127.0.0.1", "--port", str(ports[name])]
        argv += [
            "--upstream",
            f"http://127.0.0.1:{ports['bot']}",
            "--classifier",
            f"127.0.0.1:{ports['classifier']}",
        ]
        argv += ["--steer", "127.0.0.1:1", "--policy", str(policy), "--log-level", "warning"]
        argv += ["--classify-timeout-ms", "10000", "--bundle-mismatch", "warn", "--metrics-port", "0"]
        children.append(
            (Child(name, argv, run_dir / f"{name}.log"), f"http://127.0.0.1:{ports[name]}/readyz")
        )
    stack = Stack([c for c, _ in children])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for child in stack.children:
        child.start(env)
    deadline = time.monotonic() + 300
    for child, url in children:
        ready = (
            (lambda: grpc_serving(f"127.0.0.1:{ports['classifier']}"))
            if url is None
            else (lambda u=url: http_ok(u))
        )
        while not ready():
            if not child.alive() or time.monotonic() > deadline:
                stack.stop()
                raise RuntimeError(f"{child.name} did not start:\n{child.tail()}")
            time.sleep(0.25)
    urls = {"direct": f"http://127.0.0.1:{ports['bot']}"}
    urls.update({name: f"http://127.0.0.1:{ports[name]}" for name in POLICIES})
    return stack, urls


async def one(http: aiohttp.ClientSession, url: str, ttfb_ms: int) -> float:
    """Seconds for one fresh chat request (never seen before: a classifier cache miss)."""
    prompt = f"What is a good name for a pet turtle? ({uuid.uuid4().hex[:8]})"
    body = {"model": "demo", "messages": [{"role": "user", "content": prompt}]}
    started = time.perf_counter()
    async with http.post(url + CHAT, json=body, headers={"x-demo-delay-ms": str(ttfb_ms)}) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: status {resp.status}")
    return time.perf_counter() - started


async def measure(urls: dict[str, str], rounds: int, ttfb_ms: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # warm: connections, the classifier's first passes
            for url in urls.values():
                await one(http, url, ttfb_ms)
        names = list(urls)
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):  # alternate the order
                times[name].append(await one(http, urls[name], ttfb_ms))
    direct = times["direct"]

    def pct(xs: list[float], q: float) -> float:
        s = sorted(xs)
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    out: dict[str, Any] = {"rounds": rounds, "upstream_ttfb_ms": ttfb_ms}
    for name in urls:
        xs = times[name]
        out[name] = {
            "p50_ms": round(1000 * statistics.median(xs), 2),
            "p99_ms": round(1000 * pct(xs, 0.99), 2),
            "added_p50_ms": round(1000 * (statistics.median(xs) - statistics.median(direct)), 2),
            "added_p99_ms": round(1000 * (pct(xs, 0.99) - pct(direct, 0.99)), 2),
        }
    out["target"] = {"overlap_on_added_p50_ms_max": 5.0}
    out["pass"] = out["overlap_on"]["added_p50_ms"] <= 5.0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake", action="store_true", help="the scripted classifier instead of the real one")
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 40, quick 5)")
    parser.add_argument("--ttfb-ms", type=int, default=300, help="the chatbot's time to first byte")
    parser.add_argument("--out", default="reports/bench/overlap.json")
    ns = parser.parse_args()
    rounds = ns.rounds or (5 if ns.quick else 40)
    with tempfile.TemporaryDirectory() as tmp:
        stack, urls = start(ns, Path(tmp))
        try:
            result = asyncio.run(measure(urls, rounds, ns.ttfb_ms))
        finally:
            stack.stop()
    result["classifier"] = "fake (scripted)" if ns.fake else "real (SmolLM2, default bundle)"
    save(result, ns.out)
    print(json.dumps({k: result[k] for k in ("overlap_off", "overlap_on", "pass")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
