"""Cache keys: ``prefix:bundle_id:hash``.

The hash is of :meth:`Conversation.digest` (sha256 of the normalised
conversation), so the key can be logged and stored without revealing the
prompt; the check below keeps anything else from being passed by mistake.

With a secret (``--cache-key-secret-file``, from a Kubernetes Secret) the
hash is HMAC-SHA256 of that digest under the secret. Why: a bare sha256 lets
anyone who can read Redis confirm a guessed prompt by hashing it (and see,
from the verdict stored beside it, whether it was judged unsafe); a keyed
hash needs the secret too. Replicas that share a cache must share the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def verdict_key(prefix: str, bundle_id: str, digest: str, secret: bytes | None = None) -> str:
    """The key of the verdict of ``bundle_id`` on the request whose sha256 is ``digest``."""
    if not _SHA256.match(digest):
        raise ValueError("a verdict key needs the sha256 hex digest of the request, not its text")
    if not bundle_id:
        raise ValueError("a verdict key needs a bundle_id")
    if secret:
        digest = hmac.new(secret, digest.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{prefix}:{bundle_id}:{digest}"
