"""Exported graphs kept on disk between starts (``$STEERGUARD_CACHE_DIR/compiled``).

Why: the compiled paths (:mod:`classifier_service.accelerated`) export a
truncated copy of the model to ONNX at every start, and the export is most
of a classifier's start-up: for SmolLM2 about 27 s for the single-prompt
trunk and 20 s for the passage reader (each exported by a process of its
own, ``accelerated.export_in_child``), against under a second to compile a
graph once exported. A restarted container (Kubernetes keeps an
``emptyDir`` across container restarts) or a second server on the same
machine reuses the graph instead.

An entry is a folder named for what it holds (``kind``, the weights' hash,
the layers) with ``key.json`` beside the graph: the weights' full hash, the
token ids baked in, and the code and library versions that made it. A key
that differs (new code, another torch) re-exports in place, so a model and
kind keep one entry. The entry is written in a temporary folder and renamed
into place, under a file lock: services that start together export once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steerguard.logs import get_logger
from steerguard.model.paths import cache_dir, file_lock, prepared_dir

log = get_logger(__name__)

GRAPH = "trunk.onnx"
KEY = "key.json"


def made_in_child(module: str, args: list[str], folder: Path, what: str) -> Path:
    """``folder / GRAPH``, written by ``python -m module *args`` in a process of its own.

    Why: exporting or quantising a graph holds the whole model in memory, and
    not all of it is given back (a classifier that exported its graphs at
    start held ~0.4 GiB more for its whole life than one that found them
    cached, docs/benchmarks.md); in Kubernetes every new pod starts with an
    empty cache.
    """
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed: {' | '.join(tail)}")
    return folder / GRAPH


def code_version(*sources: Path) -> str:
    """A short hash of the files that shape a graph and of the libraries that export it."""
    import torch
    import transformers

    digest = hashlib.sha256(f"{torch.__version__}|{transformers.__version__}".encode())
    for path in sources:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@contextmanager
def cached_graph(name: str, key: dict[str, Any], make: Callable[[Path], Path]) -> Iterator[Path]:
    """The graph named ``name`` whose ``key`` matches, from the cache or made now by
    ``make(folder)`` (which writes ``folder / GRAPH`` and returns its path).

    A matching entry of the prepared cache (:func:`~steerguard.model.paths.prepared_dir`)
    is read in place. Where the cache cannot be written (a read-only file
    system), the graph is made in a temporary folder that is gone after the block.
    """
    folder = cache_dir() / "compiled" / name
    record = json.dumps(key, sort_keys=True)
    prepared = prepared_dir()
    if prepared is not None and _stored_key(prepared / "compiled" / name) == record:
        log.info("exported graph from the prepared cache", graph=name)
        yield prepared / "compiled" / name / GRAPH
        return
    try:
        with file_lock(folder.parent / f".{name}.lock"):
            if _stored_key(folder) != record:
                _store(folder, record, make)
            else:
                log.info("exported graph from the cache", graph=name)
        found = True
    except OSError as exc:
        log.warning("graph cache unavailable, exporting for this start only", error=type(exc).__name__)
        found = False
    if found:
        yield folder / GRAPH
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield make(Path(tmp))


def _stored_key(folder: Path) -> str | None:
    try:
        return (folder / KEY).read_text()
    except OSError:
        return None


def _store(folder: Path, record: str, make: Callable[[Path], Path]) -> None:
    """Export into a fresh folder beside ``folder``, then put it in ``folder``'s place."""
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        if make(staging) != staging / GRAPH:
            raise ValueError(f"an exported graph must be written as {GRAPH}")
        (staging / KEY).write_text(record)  # last: an entry with a key is whole
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".old-"))
            folder.rename(old / "entry")
            shutil.rmtree(old, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
