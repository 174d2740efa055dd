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
from typing import Any

import numpy as np
import torch

from steerguard.calibration.config import FIT
from steerguard.calibration.probe import fit_categories, standardiser
from steerguard.model.activations import content_means
from steerguard.model.chat import Conversation
from steerguard.model.host import ModelHost

FEATURES = "mean probe-layer state over the last user turn's words (steerguard.model.spans)"


def cross_validated_top1(x: np.ndarray, classes: np.ndarray, n_classes: int, c: float, seed: int) -> float:
    """5-fold top-1 accuracy of the head (stratified by class)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(FIT.folds, int(np.bincount(classes).min()))
    if folds < 2:
        return float("nan")
    right = 0
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, classes):
        head = fit_categories(x[train], classes[train], n_classes, standardiser(x[train]), c=c)
        right += int((head.predict_classes(x[test]).argmax(1) == classes[test]).sum())
    return right / len(classes)


def content_category_head(
    host: ModelHost,
    convs: Sequence[Conversation],
    classes: np.ndarray,
    n_classes: int,
    layer: int,
    *,
    seed: int,
    batch_size: int = 16,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The head on the harmful calibration prompts with a category, its record and its tensors."""
    x = content_means(host, convs, layer, batch_size=batch_size).numpy()
    c = FIT.category_content_c
    standard = standardiser(x)
    head = fit_categories(x, classes, n_classes, standard, c=c)
    record = {
        "features": FEATURES,
        "c": c,
        "rows": len(classes),
        "cv_top1": round(cross_validated_top1(x, classes, n_classes, c, seed), 4),
        "train_top1": round(float((head.predict_classes(x).argmax(1) == classes).mean()), 4),
    }
    tensors = {
        "category_content.mean": torch.from_numpy(standard[0]),
        "category_content.std": torch.from_numpy(standard[1]),
        **head.tensors("category_content"),
    }
    return record, tensors
