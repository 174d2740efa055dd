"""Calibration of the response probe: segment ends of answers the embedded model wrote.

Pairs come from :mod:`steerguard.data.answers` (calibration prompts and the
benign pool only). Every segment end of an answer
(:mod:`steerguard.responses`) is a row with its answer's label: a complied
answer's positions are unsafe, every other answer's safe. The head is fitted
on positions, but an answer is judged by its highest position, so every
figure here is per answer.

Folds group pairs by prompt (a harmful prompt's complied and refused answers
sit in one fold). The layer is chosen among ``response_depths`` by
out-of-fold AUROC over answers, the lowest within ``layer_tolerance`` of the
best (a stream is read up to it). The cut is the lowest that flags at most
``response_max_benign_flagged`` of safe answers out of fold; the stored bias
puts it at the prompt probe's threshold, so an answer's score compares with
a prompt's (and a route's own threshold moves both alike).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.heads import chosen_layer, fit_head, grouped_oof, head_tensors, lowest_cut
from steerguard.calibration.passages import candidate_layers
from steerguard.calibration.threshold import auroc
from steerguard.data.answers import AnswerPair, PairPrompts, Writing, write_pairs
from steerguard.data.loaders import HARMFUL, Dataset, Example
from steerguard.logs import get_logger
from steerguard.manifest import ResponseInfo
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost

if TYPE_CHECKING:
    from steerguard.bundle import Bundle
from steerguard.passages import ender_ids
from steerguard.responses import FEATURES, answer_features, answer_read

log = get_logger(__name__)


@dataclass
class ResponseRows:
    """Position features per layer, and per position its answer (index into the pairs)."""

    states: dict[int, np.ndarray]
    owners: np.ndarray
    labels: np.ndarray  # per answer
    folds: np.ndarray  # per answer

    @property
    def position_labels(self) -> np.ndarray:
        return self.labels[self.owners]


def read_rows(
    host: ModelHost, pairs: Sequence[AnswerPair], layers: Sequence[int], *, batch_size: int, seed: int
) -> ResponseRows:
    """Every answer's segment-end features at ``layers``, as the classifier reads them."""
    enders = ender_ids(host.tokenizer)
    reads = [answer_read(host, normalise_request(p.prompt), p.answer, enders) for p in pairs]
    order = sorted(range(len(reads)), key=lambda i: len(reads[i].prefix) + len(reads[i].answer))
    chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    owners: list[int] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        states = answer_features(host, [reads[i] for i in idx], layers)
        for layer in layers:
            chunks[layer].append(states[layer].numpy())
        for i in idx:
            owners.extend([i] * len(reads[i].positions))
    prompts = sorted({p.prompt for p in pairs})
    fold_of = {p: random.Random(f"{seed}:{p}").randrange(FIT.folds) for p in prompts}
    return ResponseRows(
        {layer: np.concatenate(chunks[layer]) for layer in layers},
        np.array(owners),
        np.array([int(p.unsafe) for p in pairs]),
        np.array([fold_of[p.prompt] for p in pairs]),
    )


def answer_maxima(scores: np.ndarray, rows: ResponseRows) -> np.ndarray:
    """Each answer's highest position score."""
    out = np.full(len(rows.labels), -np.inf)
    np.maximum.at(out, rows.owners, scores)
    return out


def fit_response_probe(
    rows: ResponseRows, cfg: CalibrationConfig, probe_threshold: float
) -> tuple[ResponseInfo, dict[str, torch.Tensor]]:
    """Layer, head and cut of the response probe, its bias shifted to put the cut at ``probe_threshold``."""
    selection = []
    maxima: dict[int, np.ndarray] = {}
    y, folds = rows.position_labels, rows.folds[rows.owners]
    for layer in sorted(rows.states):
        maxima[layer] = answer_maxima(grouped_oof(rows.states[layer], y, folds, cfg.response_c), rows)
        selection.append({"layer": layer, "auroc": round(auroc(rows.labels, maxima[layer]), 6)})
    layer = chosen_layer(selection)
    cut = lowest_cut(maxima[layer][rows.labels == 0], cfg.response_max_benign_flagged)
    probe = fit_head(rows.states[layer], y, cfg.response_c)
    tensors = head_tensors("response", probe, cut, probe_threshold)
    unsafe = maxima[layer][rows.labels == 1]
    info = ResponseInfo(
        layer=layer,
        cut=round(cut, 6),
        features=FEATURES,
        max_benign_flagged=cfg.response_max_benign_flagged,
        recall=round(float((unsafe >= cut).mean()), 6) if len(unsafe) else None,
        auroc=round(auroc(rows.labels, maxima[layer]), 6),
        c=cfg.response_c,
        rows={
            "unsafe_answers": int(rows.labels.sum()),
            "safe_answers": int((rows.labels == 0).sum()),
            "positions": len(rows.owners),
        },
        layer_selection=selection,
    )
    log.info("response probe", layer=layer, cut=info.cut, recall=info.recall, auroc=info.auroc)
    return info, tensors


def pair_prompts(data: Dataset, calib: Sequence[Example], cfg: CalibrationConfig) -> PairPrompts:
    """The calibration prompts the model answers (a seeded sample of each kind)."""
    rng = random.Random(cfg.seed + 53)

    def sample(items: list[str], n: int) -> list[str]:
        return rng.sample(items, min(n, len(items)))

    ordinary = [e.prompt for e in data.pool] or [e.prompt for e in calib if e.kind == "benign"]
    return PairPrompts(
        sample([e.prompt for e in calib if e.label == HARMFUL], cfg.response_harmful),
        sample(ordinary, cfg.response_ordinary),
        sample(
            [e.prompt for e in calib if e.label != HARMFUL and e.kind != "benign"], cfg.response_borderline
        ),
    )


def response_probe(
    host: ModelHost, bundle: Bundle, data: Dataset, calib: Sequence[Example], cfg: CalibrationConfig
) -> tuple[ResponseInfo, dict[str, torch.Tensor]]:
    """The response probe beside ``bundle`` (whose refusal vector writes the refused answers)."""
    prompts = pair_prompts(data, calib, cfg)
    how = Writing(cfg.seed, cfg.response_tokens, cfg.batch_size, cfg.progress)
    pairs = write_pairs(host, bundle, prompts, how)
    layers = candidate_layers(cfg.response_depths, host.identity.num_layers, host.identity.num_layers - 1)
    rows = read_rows(host, pairs, layers, batch_size=cfg.batch_size, seed=cfg.seed)
    return fit_response_probe(rows, cfg, bundle.threshold)
