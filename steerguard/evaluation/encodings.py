"""Held-out harmful prompts hidden by an encoding (base64, rot13, reversed, leetspeak): caught or not.

Each variant is judged as the classifier judges it: as written and as each
reading :mod:`steerguard.decoding` finds, the highest score deciding. The
variants are built here from the held-out split, so none was seen in
calibration; the decoding rules were fixed before this was first measured.
Held-out benign prompts are scored the same way, to show what the readings
cost ordinary traffic.
"""

from __future__ import annotations

import base64
import codecs
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from steerguard.bundle import Bundle
from steerguard.data.loaders import Example
from steerguard.decoding import readings
from steerguard.evaluation.config import EvalConfig
from steerguard.evaluation.heldout import subsample
from steerguard.evaluation.scoring import max_over_views, r
from steerguard.evaluation.stats import proportion
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost

_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})
ENCODINGS: dict[str, Callable[[str], str]] = {
    "base64": lambda t: base64.b64encode(t.encode("utf-8")).decode("ascii"),
    "rot13": lambda t: codecs.encode(t, "rot13"),
    "reversed": lambda t: t[::-1],
    "leetspeak": lambda t: t.lower().translate(_LEET),
}


def judged_scores(host: ModelHost, bundle: Bundle, texts: Sequence[str], cfg: EvalConfig) -> np.ndarray:
    """Each text's unsafe score as the classifier reads it: the max over the text and its readings."""
    views = [[normalise_request(v) for v in [text, *readings(text)[:2]]] for text in texts]
    return max_over_views(host, bundle, views, cfg, "encoded prompts")


def encoding_section(
    host: ModelHost, bundle: Bundle, harmful: list[Example], benign: list[Example], cfg: EvalConfig
) -> dict[str, Any]:
    """Caught rates per encoding on held-out harmful prompts; benign prompts flagged with readings on."""
    h = subsample(harmful, cfg.encoded_prompts, cfg.seed + 5)
    out: dict[str, Any] = {"prompts": len(h), "threshold": r(bundle.threshold), "by_encoding": {}}
    caught_all: list[bool] = []
    for name, encode in ENCODINGS.items():
        flagged = (
            judged_scores(host, bundle, [encode(e.prompt) for e in h], cfg) >= bundle.threshold
        ).tolist()
        caught_all += flagged
        out["by_encoding"][name] = {
            "caught": r(float(np.mean(flagged))) if flagged else None,
            **proportion(flagged),
        }
    out["caught"] = {"rate": r(float(np.mean(caught_all))) if caught_all else None, **proportion(caught_all)}
    b = subsample(benign, cfg.encoded_prompts, cfg.seed + 6)
    benign_flagged = (judged_scores(host, bundle, [e.prompt for e in b], cfg) >= bundle.threshold).tolist()
    out["benign_flagged_with_readings"] = proportion(benign_flagged)
    return out
