"""Session-scoped fixtures: a tiny random Llama for unit tests, SmolLM2 for integration tests.

Tests that need ``../shared/data`` skip with a reason when it is absent (a
user's fresh clone); ``.ci/run`` sets ``STEERGUARD_REQUIRE_DATA=1`` so that in
CI such a skip is a failure instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("STEERGUARD_DATA_DIR", REPO.parent / "shared" / "data"))


def require_data() -> Path:
    folder = data_dir()
    if not (folder / "PROVENANCE.md").is_file():
        reason = f"safety data sets not found at {folder} (set STEERGUARD_DATA_DIR or place ../shared/data)"
        if os.environ.get("STEERGUARD_REQUIRE_DATA") == "1":
            pytest.fail(reason + " - required in CI")
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_data()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devstack.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_host(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from steerguard.model.host import ModelHost

    return ModelHost.load(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tiny_host, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    from devstack.models import make_random_bundle

    folder = tmp_path_factory.mktemp("tiny-bundle")
    make_random_bundle(tiny_host, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_dir: Path):  # type: ignore[no-untyped-def]
    from steerguard.bundle import Bundle

    return Bundle.load(tiny_bundle_dir)


@pytest.fixture(scope="session")
def smol_host():  # type: ignore[no-untyped-def]
    """The real embedded SmolLM2 (integration tests)."""
    from steerguard.model.host import ModelHost

    return ModelHost.load()


@pytest.fixture(scope="session")
def default_bundle():  # type: ignore[no-untyped-def]
    from steerguard.bundle import DEFAULT_BUNDLE_DIR, Bundle

    if not (DEFAULT_BUNDLE_DIR / "manifest.json").is_file():
        pytest.skip("no default bundle committed yet (run 'steerguard calibrate')")
    return Bundle.load(DEFAULT_BUNDLE_DIR)


@pytest.fixture()
def anyio_backend() -> Iterator[str]:
    yield "asyncio"


@pytest.fixture()
def redis_proc() -> Iterator[Any]:
    """A ``redis-server`` of the test's own on a free port (never the machine's), stopped after."""
    from devstack.redis import RedisProcess

    try:
        proc = RedisProcess().start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"cannot start redis-server: {exc}")
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Any]:
    """A Redis Cluster of three masters formed for the module (``devstack.redis.ClusterSetup``)."""
    from devstack.redis import ClusterSetup

    try:
        setup = ClusterSetup().start()
    except (FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"cannot form a redis cluster: {exc}")
    yield setup
    setup.stop()


@pytest.fixture(scope="module")
def fake_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """The fake classifier (gRPC) and the demo chatbot process (echo): a sidecar's peers."""
    from devstack.fakes import start_demo_chatbot, start_fake_classifier

    classifier, _ = start_fake_classifier()
    chatbot = start_demo_chatbot(tmp_path_factory.mktemp("chatbot") / "chatbot.jsonl")
    try:
        yield classifier, chatbot
    finally:
        chatbot.stop()
        classifier.stop()
