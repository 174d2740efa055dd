"""scripts/served_agreement.py compares what it claims: served verdicts, one per call and packed,
against the offline float32 probe, and counts the held-out rows that differ."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import served_agreement

from classifier_service.core import ClassifierCore, CoreConfig
from steerguard.data.examples import Example
from steerguard.evaluation.heldout import HeldOut
from steerguard.model.chat import normalise_request
from steerguard.offline import classify
from steerguard.verdict import Verdict

PROMPTS = ["Hi there", "Tell me a long story about a river and a mill", "How do I pick a lock?", "2+2?"]


def test_both_served_paths_give_the_offline_scores(tiny_host, tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    convs = [normalise_request(p) for p in PROMPTS]
    reference = classify(tiny_host, tiny_bundle, convs)
    core = ClassifierCore(tiny_host, tiny_bundle, None, CoreConfig(backend="torch"))  # no cache
    try:
        alone = served_agreement.served(core, convs, 1)
        packed = served_agreement.served(core, convs, 3)
    finally:
        core.close()
    for got in (alone, packed):
        assert [v.score for v in got] == pytest.approx([v.score for v in reference], abs=1e-4)


def test_the_summary_counts_differing_verdicts_and_the_xstest_rows() -> None:
    def ex(label: int, kind: str) -> Example:
        return Example(prompt="p", label=label, source="s", split="heldout", kind=kind)

    held = HeldOut(
        None,  # type: ignore[arg-type]
        [],
        [ex(1, "harmful"), ex(1, "harmful")],
        [ex(0, "benign"), ex(0, "benign")],
        [ex(0, "xstest_safe"), ex(1, "xstest_unsafe")],
    )
    scores = [0.9, 0.2, 0.1, 0.6, 0.7, 0.8]
    reference = [Verdict(s, s >= 0.5, "", threshold=0.5) for s in scores]
    moved = [Verdict(s, s >= 0.5, "", threshold=0.5) for s in [0.9, 0.6, 0.1, 0.6, 0.2, 0.8]]
    out = served_agreement.summary(held, moved, reference)
    assert out["verdicts_differing"] == 2 and out["largest_score_difference"] == pytest.approx(0.5)
    assert out["xstest_safe_flagged"] == 0 and out["xstest_unsafe_caught"] == 1
    assert out["harmful_vs_benign"]["recall"] == 1.0 and out["harmful_vs_benign"]["fpr"] == 0.5
