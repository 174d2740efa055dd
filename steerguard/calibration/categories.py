"""The classifier's category head: harm categories read from the words of the request.

Why not the last token: the probe reads the last prompt token because there
the model has settled *whether* it is being asked for harm; *which* harm is
spread over the request's words. On the default calibration split (226
harmful prompts with a category, 5 folds), a softmax on the last token's
state at the probe layer gets 56% top-1 (sexual content 14%), one on the
mean state over the last user turn's words 69% (no category under 59%).
The last-token head stays in the bundle for the steer service, whose gate
reads the last token only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.probe import fit_categories, standardiser
from steerguard.data import category_labels, category_requests
from steerguard.data.examples import Example
from steerguard.model.activations import content_means
from steerguard.model.chat import Conversation, normalise_request
from steerguard.model.host import ModelHost

FEATURES = "mean probe-layer state over the last user turn's words (steerguard.model.spans)"


@dataclass(frozen=True)
class Rows:
    """Feature rows ``x`` ``[N, H]`` and their category indices ``classes`` ``[N]``."""

    x: np.ndarray
    classes: np.ndarray

    def __add__(self, other: Rows) -> Rows:
        return Rows(np.concatenate([self.x, other.x]), np.concatenate([self.classes, other.classes]))


def out_of_fold(rows: Rows, n_classes: int, c: float, seed: int, always: Rows | None = None) -> np.ndarray:
    """5-fold out-of-fold category probabilities ``[N, C]`` of ``rows`` (stratified by class).

    ``always`` (the built-in requests) joins every training fold and is never
    tested on, so the numbers stay ones about the data set's own prompts.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = min(FIT.folds, int(np.bincount(rows.classes).min()))
    probs = np.full((len(rows.classes), n_classes), np.nan)
    if folds < 2:
        return probs
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows.x, rows.classes):
        fit_on = Rows(rows.x[train], rows.classes[train])
        fit_on = fit_on if always is None else fit_on + always
        head = fit_categories(fit_on.x, fit_on.classes, n_classes, standardiser(fit_on.x), c=c)
        probs[test] = head.predict_classes(rows.x[test])
    return probs


def cross_validated_top1(
    rows: Rows, n_classes: int, c: float, seed: int, always: Rows | None = None
) -> float:
    """5-fold top-1 accuracy of the head on ``rows`` (:func:`out_of_fold`)."""
    probs = out_of_fold(rows, n_classes, c, seed, always)
    if np.isnan(probs).any():
        return float("nan")
    return float((probs.argmax(1) == rows.classes).mean())


@dataclass(frozen=True)
class UnsureRule:
    """When the head abstains: below the lowest cut on its top probability at which the
    out-of-fold top-1 of the rows it keeps reaches ``accuracy``, abstaining on at most
    ``max_share`` of them (calibration's ``category_content_unsure_*``)."""

    accuracy: float
    max_share: float

    @classmethod
    def of(cls, cfg: CalibrationConfig) -> UnsureRule:
        return cls(cfg.category_content_unsure_accuracy, cfg.category_content_unsure_max)


def unsure_cut(probs: np.ndarray, classes: np.ndarray, rule: UnsureRule) -> dict[str, Any]:
    """The cut on the top category probability under which a category is served as unsure.

    Why: per-category policy means something only where the category is
    right; a head that says when it is unsure lets the policy's default rule
    take those requests instead of a wrong category's rule (issue 26). Rows
    abstained on are the least confident out of fold; ties at the cut are kept.
    """
    conf, right = probs.max(1), probs.argmax(1) == classes
    order = np.argsort(conf, kind="stable")
    most = int(np.floor(rule.max_share * len(conf)))
    k = next((k for k in range(most + 1) if right[order[k:]].mean() >= rule.accuracy), most)
    cut = float(conf[order[k]]) if k else 0.0
    kept = conf >= cut
    return {
        "unsure_below": cut,  # not rounded: a rounded-up cut would abstain on the row at it
        "unsure_rule": f"lowest cut with out-of-fold top-1 >= {rule.accuracy} on the rows kept, "
        f"abstaining on at most {rule.max_share:.0%}",
        "oof_rows": len(conf),
        "oof_top1": _share(right),
        "oof_top1_kept": _share(right[kept]),
        "oof_kept": _share(kept),
    }


def _share(flags: np.ndarray) -> float | None:
    """The share of true flags, rounded; None without any (a manifest holds no NaN)."""
    return round(float(flags.mean()), 4) if flags.size else None


@dataclass(frozen=True)
class ExtraRows:
    """Rows the head is fitted on beyond the data set's own labelled prompts, and their record."""

    convs: list[Conversation]
    classes: np.ndarray
    record: dict[str, Any]
    built_in: int = 0  # the leading rows that are built-in requests; the rest are labelled prompts


def extra_rows(categories: Sequence[str], calib: Sequence[Example]) -> ExtraRows:
    """The built-in requests (:mod:`steerguard.data.category_requests`) and the harmful
    calibration prompts the project labelled (:mod:`steerguard.data.category_labels`)."""
    names = list(categories)
    requests = category_requests.examples(names)
    labelled = category_labels.labelled(list(calib), names)
    rows = requests + labelled
    return ExtraRows(
        [normalise_request(e.prompt) for e in rows],
        np.array([names.index(str(e.category)) for e in rows], dtype=np.int64),
        {
            "built_in_rows": len(requests),
            "built_in_hash": category_requests.content_hash(),
            "labelled_rows": len(labelled),
            "labels_hash": category_labels.content_hash(),
        },
        len(requests),
    )


def content_category_head(
    host: ModelHost,
    convs: Sequence[Conversation],
    classes: np.ndarray,
    n_classes: int,
    layer: int,
    *,
    seed: int,
    unsure: UnsureRule,
    batch_size: int = 16,
    extra: ExtraRows | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The head on the harmful calibration prompts with a category, its record and its tensors.

    ``extra``: more rows fitted on (:func:`extra_rows`); its built-in requests
    are never tested on, its labelled calibration prompts join the rows the
    abstain cut (:func:`unsure_cut`) is chosen on.
    """
    data = Rows(content_means(host, convs, layer, batch_size=batch_size).numpy(), classes)
    more = built_in = labelled = None
    if extra is not None and len(extra.classes):
        more = Rows(content_means(host, extra.convs, layer, batch_size=batch_size).numpy(), extra.classes)
        built_in = Rows(more.x[: extra.built_in], more.classes[: extra.built_in])
        labelled = Rows(more.x[extra.built_in :], more.classes[extra.built_in :])
    every = data if more is None else data + more
    c = FIT.category_content_c
    standard = standardiser(every.x)
    head = fit_categories(every.x, every.classes, n_classes, standard, c=c)
    judged = data if labelled is None else data + labelled
    record = {
        "features": FEATURES,
        "c": c,
        "rows": len(classes),
        **(extra.record if extra is not None else {}),
        "cv_top1": round(cross_validated_top1(data, n_classes, c, seed, more), 4),
        "train_top1": round(float((head.predict_classes(data.x).argmax(1) == classes).mean()), 4),
        **unsure_cut(out_of_fold(judged, n_classes, c, seed, built_in), judged.classes, unsure),
    }
    tensors = {
        "category_content.mean": torch.from_numpy(standard[0]),
        "category_content.std": torch.from_numpy(standard[1]),
        **head.tensors("category_content"),
    }
    return record, tensors
