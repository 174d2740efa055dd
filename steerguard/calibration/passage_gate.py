"""Calibration of the passage gate: harmful requests against the model's own benign prose.

Why: the passage head reads layers 6-10 and let through requests that the
request probe (layer 18) catches when they stand alone, while the request
probe, fitted on requests, flags plain prose read as a user turn (46% of
the model's benign paragraphs, 23% of its sentences, on calibration data).
So a long text's candidates (:mod:`steerguard.passages`) are judged by both
the probe and this gate: a logistic head on the same last-token state,
fitted on harmful calibration prompts against the paragraphs and sentences
of the prose the passage step writes (answers to pool prompts, never
held-out ones). Rows are grouped by prompt or answer into folds; the cut is
the lowest that flags at most ``passage_gate_flagged`` of the prose rows
out of fold. Its bias is shifted so the cut sits at the probe's threshold.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.heads import fit_head, grouped_oof, head_tensors, lowest_cut
from steerguard.calibration.threshold import auroc
from steerguard.logs import get_logger
from steerguard.messages import Message
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost
from steerguard.model.states import cached_states

log = get_logger(__name__)

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_SENTENCE_CHARS = 16


def prose_rows(texts: Sequence[str]) -> list[tuple[str, str]]:
    """``(text, group)``: every paragraph of every answer, and the sentences of paragraphs with several."""
    out: list[tuple[str, str]] = []
    for i, text in enumerate(texts):
        for para in (p.strip() for p in text.split("\n")):
            if not para:
                continue
            out.append((para, f"answer:{i}"))
            sentences = [s.strip() for s in SENTENCE_END.split(para) if len(s.strip()) >= MIN_SENTENCE_CHARS]
            if len(sentences) > 1:
                out += [(s, f"answer:{i}") for s in sentences]
    return out


def _fold(group: str) -> int:
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % FIT.folds


def fit_passage_gate(
    host: ModelHost,
    harmful: Sequence[str],
    texts: Sequence[str],
    probe: tuple[int, float],
    cfg: CalibrationConfig,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The gate's :class:`~steerguard.manifest.PassageInfo` fields and tensors.

    ``probe``: the request probe's layer and threshold. Candidates are read as
    :func:`steerguard.passages.candidate_scores` reads them: a lone user turn.
    """
    layer, threshold = probe
    rows = [(t, 1, f"prompt:{t}") for t in harmful] + [(t, 0, g) for t, g in prose_rows(texts)]
    convs = [Conversation((Message("user", t),)) for t, _, _ in rows]
    x = cached_states(
        host, convs, batch_size=cfg.batch_size, progress=cfg.progress, layers=[layer], desc="passage gate"
    )[:, 0].numpy()
    labels = np.array([y for _, y, _ in rows])
    folds = np.array([_fold(g) for _, _, g in rows])
    oof = grouped_oof(x, labels, folds, cfg.passage_gate_c)
    cut = lowest_cut(oof[labels == 0], cfg.passage_gate_flagged)
    tensors = head_tensors("passage_gate", fit_head(x, labels, cfg.passage_gate_c), cut, threshold)
    record = {
        "harmful": int(labels.sum()),
        "prose_rows": int((labels == 0).sum()),
        "answers": len(texts),
        "recall": round(float((oof[labels == 1] >= cut).mean()), 6),
        "prose_flagged": round(float((oof[labels == 0] >= cut).mean()), 6),
        "auroc": round(auroc(labels, oof), 6),
    }
    log.info("passage gate", cut=round(cut, 6), **record)
    fields = {
        "gate_cut": round(cut, 6),
        "candidate_floor": cfg.passage_candidate_floor,
        "candidate_tokens": cfg.passage_candidate_tokens,
        "gate": record,
    }
    return fields, tensors
