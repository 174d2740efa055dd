"""The on-disk cache of exported graphs: one export per key, a changed key re-exports in place,
and a cache that cannot be written still yields a graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier_service import graph_cache
from classifier_service.graph_cache import GRAPH, cached_graph


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEERGUARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "compiled"


class Exporter:
    """Writes a graph whose text names the export, and counts exports."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, folder: Path) -> Path:
        self.calls += 1
        (folder / GRAPH).write_text(f"export {self.calls}")
        return folder / GRAPH


def test_a_graph_is_exported_once_per_key_and_again_when_the_key_changes(cache: Path) -> None:
    make = Exporter()
    with cached_graph("trunk-x", {"code": "a"}, make) as graph:
        assert graph.read_text() == "export 1" and graph.parent == cache / "trunk-x"
    with cached_graph("trunk-x", {"code": "a"}, make) as graph:
        assert graph.read_text() == "export 1"
    assert make.calls == 1
    with cached_graph("trunk-x", {"code": "b"}, make) as graph:  # new code: in place, one entry
        assert graph.read_text() == "export 2"
    assert make.calls == 2
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["trunk-x"]
    assert not [p for p in cache.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_a_failed_export_leaves_no_entry(cache: Path) -> None:
    def broken(folder: Path) -> Path:
        (folder / GRAPH).write_text("half")
        raise RuntimeError("exporter broke")

    with pytest.raises(RuntimeError, match="exporter broke"), cached_graph("trunk-y", {"k": 1}, broken):
        pass
    assert not (cache / "trunk-y").exists()
    make = Exporter()
    with cached_graph("trunk-y", {"k": 1}, make) as graph:
        assert graph.read_text() == "export 1"


def test_an_unwritable_cache_exports_for_this_start_only(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(graph_cache, "_store", refuse)
    make = Exporter()
    with cached_graph("trunk-z", {"k": 1}, make) as graph:
        assert graph.read_text() == "export 1"
        kept = graph
    assert not kept.exists()


def test_the_code_version_follows_the_files_that_shape_a_graph(tmp_path: Path) -> None:
    source = tmp_path / "trunk.py"
    source.write_text("a = 1\n")
    first = graph_cache.code_version(source)
    assert graph_cache.code_version(source) == first
    source.write_text("a = 2\n")
    assert graph_cache.code_version(source) != first


def test_a_prepared_cache_is_read_in_place_and_never_written(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph baked into the image (``STEERGUARD_PREPARED_CACHE_DIR``) is used where its key
    matches; another key is made in the writable cache, the prepared one left as it was."""
    prepared = tmp_path / "prepared"
    monkeypatch.setenv("STEERGUARD_CACHE_DIR", str(prepared))
    with cached_graph("trunk-x", {"code": "a"}, Exporter()):
        pass
    monkeypatch.setenv("STEERGUARD_CACHE_DIR", str(cache.parent))
    monkeypatch.setenv("STEERGUARD_PREPARED_CACHE_DIR", str(prepared))
    prepared.chmod(0o555)  # read-only, as in the image
    try:
        make = Exporter()
        with cached_graph("trunk-x", {"code": "a"}, make) as graph:
            assert graph == prepared / "compiled" / "trunk-x" / GRAPH and graph.read_text() == "export 1"
        assert make.calls == 0 and not cache.exists()
        with cached_graph("trunk-x", {"code": "b"}, make) as graph:  # other code: made here
            assert graph.parent == cache / "trunk-x" and graph.read_text() == "export 1"
        assert make.calls == 1
        assert (prepared / "compiled" / "trunk-x" / "key.json").read_text() == '{"code": "a"}'
    finally:
        prepared.chmod(0o755)
