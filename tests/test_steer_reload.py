"""The steer service serves a new bundle without a restart; generations already running finish on the old.

In process over real gRPC, on the tiny random Llama: a long generation runs
while the bundle directory's symlink moves to a second bundle and the reload
check swaps the service. The running generation ends normally (all its
tokens, ``finish_reason: length``), ``DescribeBundle`` names the new bundle,
the old engine stops once drained, and a broken bundle keeps the new one.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from devstack.models import make_random_bundle
from devstack.steer import liven
from steer_service.config import SteerConfig
from steer_service.server import ServiceSlot, _swapper, create_server, server_options
from steer_service.service import SteerService
from steerguard.grpc_common.reload import BundleReload
from steerguard.grpc_common.server import ServerOptions
from steerguard.model.host import ModelHost
from steerguard.v1 import common_pb2, steer_pb2, steer_pb2_grpc

TOKENS = 120


def _point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    tmp.replace(link)  # atomic, as a Kubernetes volume swap is


def _reloads(result: str) -> float:
    return REGISTRY.get_sample_value("steerguard_config_reloads_total", {"result": result}) or 0.0


def test_a_new_bundle_is_served_and_running_generations_finish_on_the_old(
    tmp_path: Path, tiny_model_dir
) -> None:  # type: ignore[no-untyped-def]
    import grpc

    host = liven(ModelHost.load(tiny_model_dir))
    first = make_random_bundle(host, tmp_path / "a", seed=1)
    second = make_random_bundle(host, tmp_path / "b", seed=2)
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "a")
    config = SteerConfig(ignore_eos=True, max_new_tokens_cap=TOKENS)
    old = SteerService(host, first, config).start()
    slot = ServiceSlot(old)
    reload = BundleReload(link, host, lambda b: SteerService(host, b, config).start(), _swapper(slot))
    server = create_server("127.0.0.1:0", server_options(ServerOptions(), config), slot).start()
    server.set_serving()
    chunks: list[steer_pb2.GenerateChunk] = []
    started = threading.Event()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = steer_pb2_grpc.SteererStub(channel)

            def long_generation() -> None:
                request = steer_pb2.GenerateRequest(prompt="tell me a story", max_new_tokens=TOKENS)
                for chunk in stub.Generate(request, timeout=120):
                    chunks.append(chunk)
                    started.set()

            thread = threading.Thread(target=long_generation)
            thread.start()
            assert started.wait(30)
            ok_before = _reloads("ok")
            _point(link, tmp_path / "b")
            assert reload.check()
            assert _reloads("ok") == ok_before + 1
            info = stub.DescribeBundle(common_pb2.DescribeBundleRequest(), timeout=10)
            assert info.bundle_id == second.bundle_id != first.bundle_id
            assert not reload.check(), "unchanged directory: nothing to do"
            short = list(stub.Generate(steer_pb2.GenerateRequest(prompt="hi", max_new_tokens=4), timeout=60))
            assert short[-1].finish_reason == "length"
            thread.join(120)
            assert chunks and chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == TOKENS
            deadline = time.monotonic() + 30
            while old.engine._thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not old.engine._thread.is_alive(), "the old engine stops once its calls are done"

            broken = tmp_path / "broken"
            broken.mkdir()
            (broken / "manifest.json").write_text("{not json")
            invalid_before = _reloads("invalid")
            _point(link, broken)
            assert not reload.check()
            assert _reloads("invalid") == invalid_before + 1
            assert (
                stub.DescribeBundle(common_pb2.DescribeBundleRequest(), timeout=10).bundle_id
                == second.bundle_id
            )
    finally:
        server.stop(0)
        current = slot.get()
        if current is not None:
            current.close()


@pytest.mark.parametrize("flag", ["--bundle-poll-s"])
def test_the_steer_command_takes_the_poll_flag(flag: str) -> None:
    from steerguard.cli import build_parser

    ns = build_parser().parse_args(["serve", "steer", flag, "2.5"])
    assert ns.bundle_poll_s == 2.5
