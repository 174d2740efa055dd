"""Content hashes of model weights, cached so a restart does not rehash.

A bundle is only valid for the exact weights it was calibrated on; the hash is
how a load on a different model is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from steerguard.model.paths import cache_dir, prepared_dir


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _memo(path: Path) -> dict[str, str]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def weights_sha256(files: Iterable[Path]) -> str:
    """sha256 over the files' own hashes, in name order; memoised by (path, size, mtime)."""
    memo_path = cache_dir() / "hashes.json"
    prepared = prepared_dir()
    # The prepared cache's hashes first: its files are read-only, so their entries stay true.
    memo = {**(_memo(prepared / "hashes.json") if prepared else {}), **_memo(memo_path)}
    outer = hashlib.sha256()
    changed = False
    for f in sorted(Path(p).resolve() for p in files):
        st = f.stat()
        key = f"{f}:{st.st_size}:{st.st_mtime_ns}"
        digest = memo.get(key)
        if digest is None:
            digest = _file_sha256(f)
            memo[key] = digest
            changed = True
        outer.update(f.name.encode() + b"\0" + digest.encode())
    if changed:
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo))
            tmp.replace(memo_path)
        except OSError:
            pass  # a read-only cache only costs a rehash next time
    return outer.hexdigest()
