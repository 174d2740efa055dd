"""Calibration documents of the passage probe (steerguard.calibration.passages), without a model."""

from __future__ import annotations

from steerguard.calibration.config import FIT, CalibrationConfig
from steerguard.calibration.passages import documents, prose_documents
from steerguard.data.loaders import HARMFUL, Example

HARMFUL_PROMPTS = [
    Example(f"Explain how to do harmful thing {i}.", HARMFUL, "t", "calibration", "harmful") for i in range(9)
]
ORDINARY = [f"Ordinary question {i}?" for i in range(40)]
HARD = [f"How do I kill process {i}?" for i in range(5)]
TEXTS = [f"Answer paragraph {i} about a topic." for i in range(30)]
CFG = CalibrationConfig(passage_prose_docs=12, passage_prose_copies=2, passage_prose_parts=(2, 4))


def test_prose_documents_hold_each_request_and_read_one_folds_answers() -> None:
    docs = prose_documents(HARMFUL_PROMPTS, ORDINARY, HARD, TEXTS, CFG)
    assert len(docs) == 2 * len(HARMFUL_PROMPTS) + 12
    for doc in docs:
        assert doc.fold is not None
        mine = {t for t in TEXTS if t in doc.text}
        assert mine and mine <= set(TEXTS[doc.fold :: FIT.folds])  # out of fold means unread
        if doc.request is not None:
            assert doc.request in doc.text and not doc.ordinary
    requests = [d.request for d in docs if d.request is not None]
    assert sorted(requests) == sorted([e.prompt for e in HARMFUL_PROMPTS] * 2)
    benign = [d for d in docs if d.request is None]
    with_hard = [d for d in benign if any(h in d.text for h in HARD)]
    assert with_hard and not any(d.ordinary for d in with_hard)  # the cut is not set on hard negatives
    assert any(d.ordinary and any(q in d.text for q in ORDINARY) for d in benign)  # a question at the end
    assert any(d.ordinary and not any(q in d.text for q in ORDINARY) for d in benign)  # prose alone


def test_prose_and_list_documents_never_share_a_group() -> None:
    listed = documents(HARMFUL_PROMPTS, ORDINARY, HARD, CalibrationConfig(passage_benign_docs=5))
    prose = prose_documents(HARMFUL_PROMPTS, ORDINARY, HARD, TEXTS, CFG)
    groups = [d.group for d in listed + prose]
    assert len(set(groups)) == len(groups)
    assert all(d.fold is None for d in listed)  # hashed from the group


def test_the_passage_head_reads_extra_shallower_layers_beside_the_chosen_one() -> None:
    # Layer 6 carries the signal, layer 2 more of it; layer 9 is above every candidate and ignored.
    import numpy as np

    from steerguard.calibration.passages import PassageRows, fit_passage_probe

    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(40), 10)
    labels = (rng.random(len(docs)) < 0.2).astype(int)
    signal = labels[:, None] * 1.5
    states = {k: rng.normal(size=(len(docs), 4)) + signal * (k == 6 or k == 2) for k in (2, 6, 9)}
    rows = PassageRows(states, labels, docs, {d: 3000 for d in range(40)}, docs % FIT.folds)
    info, tensors = fit_passage_probe(rows, CalibrationConfig(), 0.5, extra=[2, 9])
    assert info.layer == 6 and info.layers == (2, 6) and info.feature_layers == [2, 6]
    assert tensors["passage.weight"].numel() == 8
    assert [s["layer"] for s in info.layer_selection or []] == [6]
    single, single_tensors = fit_passage_probe(
        PassageRows({6: states[6]}, labels, docs, rows.tokens, rows.folds), CalibrationConfig(), 0.5
    )
    assert (
        single.feature_layers is None
        and single.layers == (6,)
        and single_tensors["passage.weight"].numel() == 4
    )
