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

Then the score a candidate needs (:func:`candidate_cut`), on the request
probe's out-of-fold scores of the calibration prompts: strict enough that
candidates flag at most ``passage_candidate_flagged`` of the borderline and
XSTest-safe ones, never so strict that fewer than ``min_recall`` of the
harmful ones pass.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.heads import fit_head, grouped_oof, head_tensors, lowest_cut, on_threshold
from steerguard.calibration.probe import LinearProbe
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


@dataclass(frozen=True)
class ProbeOOF:
    """The request probe's out-of-fold scores of calibration prompts: what the candidates' cut is
    set on (:func:`candidate_cut`). ``harmful`` lines up with the gate's harmful prompts;
    ``hard`` holds the borderline and XSTest-safe prompts and ``hard_scores`` theirs."""

    harmful: np.ndarray
    hard: list[str]
    hard_scores: np.ndarray


def _states(host: ModelHost, texts: Sequence[str], layer: int, cfg: CalibrationConfig) -> np.ndarray:
    """Last-token states at ``layer`` of each text read as a lone user turn, as candidates are read."""
    convs = [Conversation((Message("user", t),)) for t in texts]
    return cached_states(
        host, convs, batch_size=cfg.batch_size, progress=cfg.progress, layers=[layer], desc="passage gate"
    )[:, 0].numpy()


def fit_passage_gate(
    host: ModelHost,
    harmful: Sequence[str],
    texts: Sequence[str],
    probe: tuple[int, float],
    cfg: CalibrationConfig,
    oof: ProbeOOF | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The gate's :class:`~steerguard.manifest.PassageInfo` fields and tensors.

    ``probe``: the request probe's layer and threshold. Candidates are read as
    :func:`steerguard.passages.candidate_scores` reads them: a lone user turn.
    With ``oof``, the candidates' own cut too (:func:`candidate_cut`).
    """
    layer, threshold = probe
    rows = [(t, 1, f"prompt:{t}") for t in harmful] + [(t, 0, g) for t, g in prose_rows(texts)]
    x = _states(host, [t for t, _, _ in rows], layer, cfg)
    labels = np.array([y for _, y, _ in rows])
    folds = np.array([_fold(g) for _, _, g in rows])
    gate_oof = grouped_oof(x, labels, folds, cfg.passage_gate_c)
    cut = lowest_cut(gate_oof[labels == 0], cfg.passage_gate_flagged)
    head = fit_head(x, labels, cfg.passage_gate_c)
    tensors = head_tensors("passage_gate", head, cut, threshold)
    record: dict[str, Any] = {
        "harmful": int(labels.sum()),
        "prose_rows": int((labels == 0).sum()),
        "answers": len(texts),
        "recall": round(float((gate_oof[labels == 1] >= cut).mean()), 6),
        "prose_flagged": round(float((gate_oof[labels == 0] >= cut).mean()), 6),
        "auroc": round(auroc(labels, gate_oof), 6),
    }
    log.info("passage gate", cut=round(cut, 6), **record)
    fields: dict[str, Any] = {
        "gate_cut": round(cut, 6),
        "candidate_floor": cfg.passage_candidate_floor,
        "candidate_tokens": cfg.passage_candidate_tokens,
        "gate": record,
    }
    if oof is not None and len(oof.hard):
        gate = (on_threshold(gate_oof[labels == 1], cut, threshold), head, cut)
        fields["candidate_cut"], record["candidates"] = candidate_cut(host, gate, probe, oof, cfg)
    return fields, tensors


def candidate_cut(
    host: ModelHost,
    gate: tuple[np.ndarray, LinearProbe, float],
    probe: tuple[int, float],
    oof: ProbeOOF,
    cfg: CalibrationConfig,
) -> tuple[float, dict[str, Any]]:
    """The score a candidate needs, and its record: the lowest cut, not below the threshold, at
    which candidates' scores flag at most ``passage_candidate_flagged`` of the borderline and
    XSTest-safe calibration prompts, unless that catches fewer than ``min_recall`` of the
    harmful ones (then the highest cut that catches that many).

    Why: at its own cut the probe flags about a fifth of those prompts out of fold, and a
    document offers each of its windows' top segment and its last paragraph: read at the lone
    turn's cut, a closing borderline question flags the whole document as often as it flags
    the question alone, and a list of questions more often. ``gate``: the gate's out-of-fold
    scores of the harmful prompts (on the probe's scale), its head and its own cut; hard prompts
    never trained the gate, so its head scores them as it scores new text. The probe's scores
    are out of fold.
    """
    layer, threshold = probe
    harmful_gate, head, gate_cut = gate
    hard_gate = on_threshold(head.predict(_states(host, oof.hard, layer, cfg)), gate_cut, threshold)
    harmful = np.minimum(oof.harmful, harmful_gate)
    hard = np.minimum(oof.hard_scores, hard_gate)
    # Never stricter than keeping min_recall of the harmful prompts (the probe's own guard).
    kept = np.sort(harmful)[::-1][max(0, math.ceil(cfg.min_recall * len(harmful)) - 1)]
    chosen = max(threshold, min(lowest_cut(hard, cfg.passage_candidate_flagged), float(kept)))

    def at(c: float) -> dict[str, float]:
        return {
            "harmful_caught": round(float((harmful >= c).mean()), 6),
            "hard_flagged": round(float((hard >= c).mean()), 6),
        }

    record = {"harmful": len(harmful), "hard": len(hard), "at_threshold": at(threshold), "at_cut": at(chosen)}
    log.info("passage candidates", cut=round(chosen, 6), **record)
    return round(chosen, 6), record
