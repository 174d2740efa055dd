"""Calibration of the passage probe: segment-end states of documents built from calibration prompts.

The shared data sets hold single prompts, so documents are built here,
deterministically from the seed: ``passage_prompts`` (4-60) benign prompts
from the benign pool, in half of them one of calibration's borderline or XSTest-safe prompts
among them, joined by blank lines, line breaks or spaces, and, in
``passage_copies`` documents per harmful calibration prompt, that prompt
inserted at a random place. Every segment end that
:func:`steerguard.passages.split` reads is a row: the one that ends the
inserted request is harmful, those inside it are left out, every other is
benign. Held-out prompts are never used.

The layer is chosen among ``passage_depths`` (fractions of the model's
depth, none above the probe layer) by grouped out-of-fold AUROC (documents
never straddle folds), the lowest within ``layer_tolerance`` of the best: a
passage is read up to its layer, so a lower layer costs less, and long texts
are where the cost is.
With ``passage_feature_depths``, the head also reads the segment states of
those shallower layers beside the chosen one's (a passage's pass runs
through them anyway, so they cost nothing to read).
The cut is chosen on out-of-fold scores so that ordinary benign documents of
``reference_tokens`` (out-of-fold rows of whole documents without a hard
negative, pooled in order until they reach that length) are flagged at most
``max_document_flagged`` of the time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.heads import chosen_layer, fit_head, grouped_oof, head_tensors, lowest_cut
from steerguard.calibration.threshold import auroc
from steerguard.data.loaders import Example
from steerguard.logs import get_logger
from steerguard.manifest import PassageInfo
from steerguard.model.host import ModelHost
from steerguard.passages import Passage, ender_ids, position_states, split

log = get_logger(__name__)

JOINERS = ("\n\n", "\n\n", "\n", " ")
UNLABELLED = -1


@dataclass
class Document:
    text: str
    request: str | None  # the inserted harmful request, when there is one
    group: int
    ordinary: bool = True  # built from ordinary benign text only (the cut is chosen on these)
    fold: int | None = None  # its out-of-fold fold, when its text fixes it (else hashed from group)


@dataclass
class PassageRows:
    """Segment-end states per layer, their labels, their documents and each benign document's tokens."""

    states: dict[int, np.ndarray]
    labels: np.ndarray
    docs: np.ndarray
    tokens: dict[int, int]
    folds: np.ndarray  # each row's out-of-fold fold (its document's)


def documents(
    harmful: Sequence[Example],
    ordinary: Sequence[str],
    hard: Sequence[str],
    cfg: CalibrationConfig,
) -> list[Document]:
    """Documents of ordinary benign prompts, with hard negatives mixed into half of them.

    ``passage_copies`` documents per harmful prompt (inserted at random) and
    ``passage_benign_docs`` without one. The cut is chosen on the benign
    documents built from ``ordinary`` prompts only: one borderline prompt
    (``hard``) in nearly every pooled 3k-token document would set the cut by
    the hardest prompt and not by ordinary text.
    """
    rng = random.Random(cfg.seed + 41)
    texts: list[str | None] = [e.prompt.strip() for e in harmful]
    requests = texts * cfg.passage_copies + [None] * cfg.passage_benign_docs
    out: list[Document] = []
    for i, request in enumerate(requests):
        plain = i % 2 == 0
        count = min(rng.randint(*cfg.passage_prompts), len(ordinary))
        if plain or not hard:
            parts = rng.sample(list(ordinary), count)
        else:
            parts = rng.sample(list(ordinary), count - 1) + [rng.choice(list(hard))]
            rng.shuffle(parts)
        parts = [p.strip() for p in parts]
        if request is not None:
            parts.insert(rng.randint(0, len(parts)), request)
        out.append(Document(rng.choice(JOINERS).join(parts), request, i, plain or not hard))
    return out


def prose_documents(
    harmful: Sequence[Example],
    ordinary: Sequence[str],
    hard: Sequence[str],
    texts: Sequence[str],
    cfg: CalibrationConfig,
) -> list[Document]:
    """Documents of the model's prose (:mod:`steerguard.data.prose`), alone or around a request.

    ``passage_prose_copies`` per harmful prompt, placed at the end (half of
    them: a pasted text, then the request) or anywhere, and
    ``passage_prose_docs`` without one: prose alone, prose and then an
    ordinary prompt, or prose and then a hard negative (not ordinary). Each
    answer belongs to one fold and a document is built from one fold's
    answers, so an answer out of fold is never one the head was fitted on:
    the cut is set on prose the head has not read, as at serving.
    """
    rng = random.Random(cfg.seed + 43)
    by_fold = [list(texts[f :: FIT.folds]) for f in range(FIT.folds)]
    inserted: list[str | None] = [e.prompt.strip() for e in harmful]
    requests = inserted * cfg.passage_prose_copies + [None] * cfg.passage_prose_docs
    out: list[Document] = []
    for i, request in enumerate(requests):
        fold = i % FIT.folds
        pool = by_fold[fold]
        parts = rng.sample(pool, min(len(pool), rng.randint(*cfg.passage_prose_parts)))
        kind = i % 3
        if request is not None:
            parts.insert(len(parts) if rng.random() < 0.5 else rng.randint(0, len(parts)), request)
        elif kind == 1:
            parts.append(rng.choice(ordinary).strip())
        elif kind == 2 and hard:
            parts.append(rng.choice(hard).strip())
        ordinary_doc = request is None and (kind != 2 or not hard)
        out.append(Document(rng.choice(JOINERS).join(parts), request, -1 - i, ordinary_doc, fold))
    return out


def _labels(host: ModelHost, doc: Document, passages: Sequence[Passage]) -> list[int]:
    """Each read position's label: 1 ends the request, -1 inside it, 0 elsewhere."""
    positions = [p.start + q for p in passages for q in p.positions]
    if doc.request is None:
        return [0] * len(positions)
    spans = host.tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    start_char = doc.text.index(doc.request)
    end_char = start_char + len(doc.request)
    first = next(i for i, (_a, b) in enumerate(spans) if b > start_char)
    last = max(i for i, (a, _b) in enumerate(spans) if a < end_char)
    out: list[int] = []
    ended = False
    for e in positions:
        if first <= e < last:
            out.append(UNLABELLED)
        elif last <= e <= last + 2 and not ended:
            # The segment end at the request's last token, or the break right after it.
            out.append(1)
            ended = True
        else:
            out.append(0)
    return out


def read_rows(
    host: ModelHost, docs: Sequence[Document], layers: Sequence[int], cfg: CalibrationConfig
) -> PassageRows:
    """Segment-end states at ``layers`` of every document, as the classifier reads them."""
    from steerguard.passages import text_ids

    enders = ender_ids(host.tokenizer)
    window, overlap = cfg.passage_tokens, cfg.passage_overlap
    chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    labels: list[int] = []
    owners: list[int] = []
    folds: list[int] = []
    tokens: dict[int, int] = {}
    batch: list[Passage] = []
    for doc in docs:
        ids = text_ids(host, doc.text)
        passages = split(ids, enders, window, overlap)
        labels.extend(_labels(host, doc, passages))
        count = sum(len(p.positions) for p in passages)
        owners.extend([doc.group] * count)
        folds.extend([hash_fold(doc.group, FIT.folds, cfg.seed) if doc.fold is None else doc.fold] * count)
        if doc.request is None and doc.ordinary:
            tokens[doc.group] = len(ids)
        batch.extend(passages)
    for start in range(0, len(batch), cfg.batch_size):
        part = batch[start : start + cfg.batch_size]
        states = position_states(host, part, layers)
        for layer in layers:
            chunks[layer].append(states[layer].numpy())
    keep = np.array(labels) != UNLABELLED
    return PassageRows(
        {layer: np.concatenate(chunks[layer])[keep] for layer in layers},
        np.array(labels)[keep],
        np.array(owners)[keep],
        tokens,
        np.array(folds)[keep],
    )


def hash_fold(doc: int, folds: int, seed: int) -> int:
    return random.Random(f"{seed}:{doc}").randrange(folds)


def document_cut(scores: np.ndarray, rows: PassageRows, reference_tokens: int, max_flagged: float) -> float:
    """The lowest cut that flags at most ``max_flagged`` of benign pseudo-documents of ``reference_tokens``.

    Benign documents' out-of-fold position scores are pooled, in document
    order, into pseudo-documents of about ``reference_tokens`` tokens; one is
    flagged when any of its positions reaches the cut.
    """
    maxima: list[float] = []
    best, tokens = -math.inf, 0
    for doc, n in rows.tokens.items():
        mine = scores[(rows.docs == doc) & (rows.labels == 0)]
        best = max(best, float(mine.max()) if len(mine) else -math.inf)
        tokens += n
        if tokens >= reference_tokens:
            maxima.append(best)
            best, tokens = -math.inf, 0
    if not maxima:
        return float(np.max(scores[rows.labels == 0]))
    return lowest_cut(maxima, max_flagged)


def fit_passage_probe(
    rows: PassageRows, cfg: CalibrationConfig, probe_threshold: float, extra: Sequence[int] = ()
) -> tuple[PassageInfo, dict[str, torch.Tensor]]:
    """Layer, head and cut of the passage probe, its bias shifted to put the cut at ``probe_threshold``.

    The layer is chosen among ``rows``' layers not in ``extra``; the head then
    reads the chosen layer's features beside those of the ``extra`` layers below it.
    """
    selection = []
    oof: dict[int, np.ndarray] = {}
    for layer in sorted(set(rows.states) - set(extra)):
        oof[layer] = grouped_oof(rows.states[layer], rows.labels, rows.folds, cfg.passage_c)
        selection.append({"layer": layer, "auroc": round(auroc(rows.labels, oof[layer]), 6)})
    layer = chosen_layer(selection)
    layers = sorted({e for e in extra if e < layer}) + [layer]
    x = np.concatenate([rows.states[k] for k in layers], axis=1)
    scores = oof[layer] if len(layers) == 1 else grouped_oof(x, rows.labels, rows.folds, cfg.passage_c)
    cut = document_cut(scores, rows, cfg.passage_reference_tokens, cfg.passage_max_document_flagged)
    tensors = head_tensors("passage", fit_head(x, rows.labels, cfg.passage_c), cut, probe_threshold)
    info = PassageInfo(
        layer=layer,
        cut=round(cut, 6),
        window_tokens=cfg.passage_tokens,
        overlap_tokens=cfg.passage_overlap,
        reference_tokens=cfg.passage_reference_tokens,
        max_document_flagged=cfg.passage_max_document_flagged,
        recall=round(float((scores[rows.labels == 1] >= cut).mean()), 6),
        position_flagged=round(float((scores[rows.labels == 0] >= cut).mean()), 6),
        auroc=round(auroc(rows.labels, scores), 6),
        rows={
            "harmful": int((rows.labels == 1).sum()),
            "benign": int((rows.labels == 0).sum()),
            "documents": len(set(rows.docs.tolist())),
        },
        layer_selection=selection,
        feature_layers=layers if len(layers) > 1 else None,
    )
    log.info("passage probe", layers=layers, cut=info.cut, recall=info.recall, auroc=info.auroc)
    return info, tensors


def candidate_layers(depths: Sequence[float], num_layers: int, probe_layer: int) -> list[int]:
    """Layers at these fractions of the model's depth, none above the probe layer (served with it)."""
    return sorted({min(probe_layer, max(0, int(d * num_layers))) for d in depths})
