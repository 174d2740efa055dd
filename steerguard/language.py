"""Which language a request is in, so a bundle calibrated on English data says when it reads another.

The probe was fitted on English prompts; on other languages it ranks less
well (a harmful request in French, Spanish or German was judged safe). The
verdict therefore names the request's language and whether the bundle was
calibrated for it, and the sidecar's policy decides what an uncalibrated
language gets (``on_language``). Identification is py3langid (langid.py's
maintained fork, which ships its model): about 0.1 ms a request once loaded.
Texts with too few letters, or identified with low confidence, are ``und``
(undetermined) and judged like any other.
"""

from __future__ import annotations

import functools
from typing import Any

from steerguard.model.chat import Conversation

UNDETERMINED = "und"
MIN_LETTERS = 20
MIN_CONFIDENCE = 0.8
MAX_CHARS = 4000  # the start of a long text says its language as well as the whole


@functools.lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(text: str) -> str:
    """ISO 639-1 code of ``text``'s language, or ``und``."""
    sample = text[:MAX_CHARS]
    if sum(c.isalpha() for c in sample) < MIN_LETTERS:
        return UNDETERMINED
    code, confidence = _identifier().classify(sample)
    return str(code) if confidence >= MIN_CONFIDENCE else UNDETERMINED


def user_side_text(conv: Conversation) -> str:
    """What the requester wrote: every turn but the assistant's."""
    return "\n".join(m.content for m in conv.messages if m.role != "assistant")
