"""The follow-up phrases: calibration's and evaluation's sets never share a phrase."""

from __future__ import annotations

import re

from steerguard.data import follow_ups


def _norm(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


def test_sets_are_disjoint_ignoring_case_and_punctuation() -> None:
    calibration = {_norm(p) for p in follow_ups.CALIBRATION}
    heldout = {_norm(p) for p in follow_ups.HELDOUT}
    assert not calibration & heldout
    assert len(calibration) == len(follow_ups.CALIBRATION)
    assert len(heldout) == len(follow_ups.HELDOUT)


def test_the_evaluation_uses_the_heldout_set() -> None:
    from steerguard.evaluation import shapes

    assert shapes.FOLLOW_UPS == follow_ups.HELDOUT
