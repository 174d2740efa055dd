"""Cache keys: ``prefix:bundle_id:sha256``.

The last part is :meth:`Conversation.digest` (sha256 of the normalised
conversation), so the key can be logged and stored without revealing the
prompt; the check below keeps anything else from being passed by mistake.
"""

from __future__ import annotations

import re

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def verdict_key(prefix: str, bundle_id: str, digest: str) -> str:
    """The key of the verdict of ``bundle_id`` on the request whose sha256 is ``digest``."""
    if not _SHA256.match(digest):
        raise ValueError("a verdict key needs the sha256 hex digest of the request, not its text")
    if not bundle_id:
        raise ValueError("a verdict key needs a bundle_id")
    return f"{prefix}:{bundle_id}:{digest}"
