"""Calibration of the response probe: segment ends of answers the embedded model wrote.

Pairs come from :mod:`steerguard.data.answers` (calibration prompts and the
benign pool only), with every complied answer also transplanted after an
ordinary prompt, and again after that prompt's benign answer (only its own
part's positions are rows), and every complied and benign answer also
continued after a calibration follow-up turn (``response_follow_ups``),
read as the classifier serves them (the request view,
:func:`steerguard.responses.answer_view`) and scored, not fitted on; read
a second time with the follow-up as the request, they measure what a
follow-up the rule does not know gets (``short_turns``: both readings).
Every segment end of an answer (:mod:`steerguard.responses`) is a row with
its answer's label: complied, transplanted and continued complied answers'
positions are unsafe, every other answer's safe. The heads are fitted on
positions, but an answer is judged by its highest position, so every figure
here is per answer.

Two heads read the same rows: the *compliance* head is fitted on the
written pairs only (it may lean on the request: a harmful prompt answered
rather than refused), the *content* head on the transplanted answers too
(it must read the answer). Folds group pairs by prompt (a harmful prompt's
complied, refused and transplanted answers sit in one fold). At each layer
of ``response_depths`` the two cuts are chosen together on out-of-fold
scores: the pair, on a grid over how the budget is split, that catches the
most complied plus transplanted answers while the two heads together flag
at most ``response_max_benign_flagged`` of safe answers. The layer is the
one where that catches most (the lowest on a tie). The stored biases put
both cuts at the prompt probe's threshold, so an answer's score compares
with a prompt's (and a route's own threshold moves them alike).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.heads import fit_head, grouped_oof, head_tensors, lowest_cut, on_threshold
from steerguard.calibration.passages import candidate_layers
from steerguard.calibration.threshold import auroc
from steerguard.data import follow_ups
from steerguard.data.answers import (
    CONTINUED,
    CONTINUED_BENIGN,
    TRANSPLANTED,
    AnswerPair,
    PairPrompts,
    Writing,
    continued,
    transplanted,
    write_pairs,
)
from steerguard.data.loaders import HARMFUL, Dataset, Example
from steerguard.logs import get_logger
from steerguard.manifest import SHORT_TURNS_BOTH, VIEW_REQUEST, ResponseInfo
from steerguard.model.host import ModelHost

if TYPE_CHECKING:
    from steerguard.bundle import Bundle
    from steerguard.model.chat import Conversation
from steerguard.passages import ender_ids, text_ids
from steerguard.responses import FEATURES, AnswerRead, Turns, answer_features, answer_read, last_turn

log = get_logger(__name__)


@dataclass
class ResponseRows:
    """Position features per layer, and per position its answer (index into the pairs)."""

    states: dict[int, np.ndarray]
    owners: np.ndarray
    labels: np.ndarray  # per answer
    folds: np.ndarray  # per answer
    transplanted: np.ndarray  # per answer: a complied answer after an ordinary prompt (or its answer)
    continued: np.ndarray  # per answer: the rest of an answer after a follow-up turn (either label)
    # per answer: a continued answer read again with its follow-up as the request (also ``continued``),
    # each right after the continued answers, in their order; None: none such
    requested: np.ndarray | None = None

    @property
    def position_labels(self) -> np.ndarray:
        return self.labels[self.owners]

    @property
    def asked(self) -> np.ndarray:
        """Per answer: ``requested``, all False where there is none."""
        return self.requested if self.requested is not None else np.zeros_like(self.continued)

    @property
    def complied(self) -> np.ndarray:
        return (self.labels == 1) & ~self.transplanted

    def without(self, drop: np.ndarray) -> ResponseRows:
        """These rows less the answers ``drop`` marks (and their positions)."""
        keep = ~drop
        index = np.cumsum(keep) - 1
        at = keep[self.owners]
        return ResponseRows(
            {layer: x[at] for layer, x in self.states.items()},
            index[self.owners[at]],
            self.labels[keep],
            self.folds[keep],
            self.transplanted[keep],
            self.continued[keep],
            None if self.requested is None else self.requested[keep],
        )


def read_rows(
    host: ModelHost,
    pairs: Sequence[AnswerPair],
    layers: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    requested: int = 0,
) -> ResponseRows:
    """Every answer's segment-end features at ``layers``, as the classifier reads them.

    A continued answer is read as the rest of the reply to its request (its
    follow-up taken for one); the last ``requested`` pairs, copies of the
    continued ones, are read with the follow-up as the request instead
    (:func:`steerguard.responses.answer_readings`: a phrase the follow-up rule does not know).
    """
    enders = ender_ids(host.tokenizer)

    def way(i: int, p: AnswerPair, conv: Conversation) -> Turns:
        if i >= len(pairs) - requested:
            return last_turn(conv, False)
        return last_turn(conv, True) if p.kind in (CONTINUED, CONTINUED_BENIGN) else {}

    convs = [p.conversation() for p in pairs]
    reads = [
        _scored_part(host, p, answer_read(host, conv, p.answer, enders, VIEW_REQUEST, way(i, p, conv)))
        for i, (p, conv) in enumerate(zip(pairs, convs, strict=True))
    ]
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
    groups = sorted({p.group for p in pairs})
    fold_of = {g: random.Random(f"{seed}:{g}").randrange(FIT.folds) for g in groups}
    return ResponseRows(
        {layer: np.concatenate(chunks[layer]) for layer in layers},
        np.array(owners),
        np.array([int(p.unsafe) for p in pairs]),
        np.array([fold_of[p.group] for p in pairs]),
        np.array([p.kind == TRANSPLANTED for p in pairs]),
        np.array([p.kind in (CONTINUED, CONTINUED_BENIGN) for p in pairs]),
        np.arange(len(pairs)) >= len(pairs) - requested if requested else None,
    )


def _scored_part(host: ModelHost, pair: AnswerPair, read: AnswerRead) -> AnswerRead:
    """``read`` with only the positions after the pair's ``scored_from`` characters."""
    if not pair.scored_from:
        return read
    lead = len(text_ids(host, pair.answer[: pair.scored_from]))
    return replace(read, positions=tuple(p for p in read.positions if p >= lead))


def answer_maxima(scores: np.ndarray, rows: ResponseRows) -> np.ndarray:
    """Each answer's highest position score."""
    out = np.full(len(rows.labels), -np.inf)
    np.maximum.at(out, rows.owners, scores)
    return out


@dataclass(frozen=True)
class HeadCuts:
    """Both heads' out-of-fold answer maxima at one layer, their joint cuts and what those catch."""

    layer: int
    compliance: np.ndarray
    content: np.ndarray
    cut: float
    content_cut: float | None
    caught: float
    content_caught: float | None
    flagged: float

    @property
    def gain(self) -> float:
        return self.caught + (self.content_caught or 0.0)

    def served(self, threshold: float) -> np.ndarray:
        """Each answer's score as the classifier gives it: the higher head, on the probe's scale."""
        out = on_threshold(self.compliance, self.cut, threshold)
        if self.content_cut is None:
            return out
        return np.maximum(out, on_threshold(self.content, self.content_cut, threshold))


def joint_cuts(rows: ResponseRows, layer: int, c: float, budget: float) -> HeadCuts:
    """Out-of-fold maxima of both heads at ``layer`` and the cuts that catch most together."""
    x, y, folds = rows.states[layer], rows.position_labels, rows.folds[rows.owners]
    written = ~rows.transplanted[rows.owners]
    comp = answer_maxima(grouped_oof(x, y, folds, c, fit_on=written), rows)
    safe, complied, moved = rows.labels == 0, rows.complied, rows.transplanted
    if not moved.any():
        cut = lowest_cut(comp[safe], budget)
        caught = float((comp[complied] >= cut).mean()) if complied.any() else 0.0
        return HeadCuts(layer, comp, comp, cut, None, caught, None, float((comp[safe] >= cut).mean()))
    cont = answer_maxima(grouped_oof(x, y, folds, c), rows)
    best: HeadCuts | None = None
    for share_a in np.linspace(0.0, budget, FIT.cut_grid):
        cut_a = lowest_cut(comp[safe], float(share_a))
        for share_b in np.linspace(0.0, budget, FIT.cut_grid):
            cut_b = lowest_cut(cont[safe], float(share_b))
            hit = (comp >= cut_a) | (cont >= cut_b)
            if hit[safe].mean() > budget:
                continue
            rates = [float(hit[m].mean()) if m.any() else 0.0 for m in (complied, moved, safe)]
            found = HeadCuts(layer, comp, cont, cut_a, cut_b, *rates)
            if best is None or found.gain > best.gain:
                best = found
    assert best is not None  # the grid's (0, 0) flags at most ``budget``
    return best


def fit_response_probe(
    rows: ResponseRows, cfg: CalibrationConfig, probe_threshold: float
) -> tuple[ResponseInfo, dict[str, torch.Tensor]]:
    """Layer, heads and cuts of the response probe; biases shifted to put every cut at ``probe_threshold``.

    The heads are fitted and cut on the single-turn answers. Answers
    continued after a follow-up turn, read in the request view
    (:func:`steerguard.responses.answer_view`: the rest of one reply to the
    request), are not fitted on: they are scored out of fold by the same
    heads for the manifest's record (``follow_ups``). Why not a second pair
    for chats with earlier turns, as bundles before had: read in their chat,
    such a pair caught 52% of continued complied answers at 3% of benign ones
    flagged; read in the request view, the single-turn pair does better
    (docs/calibration.md, *Follow-up turns in answers*).
    """
    budget = cfg.response_max_benign_flagged
    single = rows.without(rows.continued)
    found = [joint_cuts(single, layer, cfg.response_c, budget) for layer in sorted(single.states)]
    best = max(found, key=lambda h: (round(h.gain, 9), -h.layer))
    tensors = _fitted_heads(single, best, "response", cfg.response_c, probe_threshold)
    info = ResponseInfo(
        layer=best.layer,
        cut=round(best.cut, 6),
        features=FEATURES,
        max_benign_flagged=budget,
        content_cut=_rounded(best.content_cut),
        content_recall=_rounded(best.content_caught),
        recall=round(best.caught, 6),
        auroc=_served_auroc(single, best, probe_threshold),
        c=cfg.response_c,
        rows={
            "unsafe_answers": int((rows.complied & ~rows.continued).sum()),
            "transplanted_answers": int(rows.transplanted.sum()),
            "continued_answers": int((rows.continued & ~rows.asked).sum()),
            "safe_answers": int(((rows.labels == 0) & ~rows.continued).sum()),
            "positions": len(rows.owners),
        },
        layer_selection=[
            {
                "layer": h.layer,
                "auroc": _served_auroc(single, h, probe_threshold),
                "caught": round(h.caught, 6),
                "content_caught": _rounded(h.content_caught),
                "flagged": round(h.flagged, 6),
            }
            for h in found
        ],
        view=VIEW_REQUEST,
        short_turns=SHORT_TURNS_BOTH,
        follow_ups=_follow_up_record(rows, best, cfg.response_c) if rows.continued.any() else None,
    )
    log.info("response probe", layer=info.layer, recall=info.recall, content_recall=info.content_recall)
    return info, tensors


def _follow_up_record(rows: ResponseRows, cuts: HeadCuts, c: float) -> dict[str, Any]:
    """What the single-turn heads catch and flag among the continued answers, out of fold.

    The heads of each fold are the ones :func:`joint_cuts` fitted (the same
    single-turn rows of the other folds); the continued rows only get scored.
    """
    x, y, folds = rows.states[cuts.layer], rows.position_labels, rows.folds[rows.owners]
    single = ~rows.continued[rows.owners]
    comp = answer_maxima(grouped_oof(x, y, folds, c, fit_on=single & ~rows.transplanted[rows.owners]), rows)
    hit = comp >= cuts.cut
    if cuts.content_cut is not None:
        hit |= answer_maxima(grouped_oof(x, y, folds, c, fit_on=single), rows) >= cuts.content_cut
    asked = rows.asked
    once = rows.continued & ~asked
    unsafe, safe = once & (rows.labels == 1), once & (rows.labels == 0)
    out = {
        "continued_caught": _share(hit[unsafe]),
        "continued_flagged": _share(hit[safe]),
        "continued_unsafe": int(unsafe.sum()),
        "continued_safe": int(safe.sum()),
    }
    if asked.any():  # the same answers after a follow-up the rule does not know: flagged where both flag
        both, alone = hit[once] & hit[asked], hit[asked]
        complied = rows.labels[once] == 1
        out |= {
            "unknown_turn_caught": _share(both[complied]),
            "unknown_turn_flagged": _share(both[~complied]),
            "as_request_caught": _share(alone[complied]),
            "as_request_flagged": _share(alone[~complied]),
        }
    return out


def _share(hits: np.ndarray) -> float | None:
    return round(float(hits.mean()), 6) if hits.size else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _served_auroc(rows: ResponseRows, h: HeadCuts, threshold: float) -> float:
    """AUROC of the served scores on the written answers (complied against safe)."""
    written = rows.complied | (rows.labels == 0)
    return round(auroc(rows.labels[written], h.served(threshold)[written]), 6)


def _fitted_heads(
    rows: ResponseRows, cuts: HeadCuts, name: str, c: float, threshold: float
) -> dict[str, torch.Tensor]:
    """The compliance head (written pairs) and, where cut, the content head (every answer) as tensors."""
    x, y, moved = rows.states[cuts.layer], rows.position_labels, rows.transplanted[rows.owners]
    tensors = head_tensors(name, fit_head(x[~moved], y[~moved], c), cuts.cut, threshold)
    if cuts.content_cut is not None:
        tensors |= head_tensors(f"{name}_content", fit_head(x, y, c), cuts.content_cut, threshold)
    return tensors


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
    more = continued(pairs, follow_ups.CALIBRATION, cfg.seed + 61) if cfg.response_follow_ups else []
    pairs += transplanted(pairs, cfg.seed + 59) + more + more
    layers = candidate_layers(cfg.response_depths, host.identity.num_layers, host.identity.num_layers - 1)
    rows = read_rows(host, pairs, layers, batch_size=cfg.batch_size, seed=cfg.seed, requested=len(more))
    return fit_response_probe(rows, cfg, bundle.threshold)
