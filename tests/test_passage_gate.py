"""The passage gate's calibration (steerguard.calibration.passage_gate), on the tiny model."""

from __future__ import annotations

from typing import Any

import torch

from steerguard.calibration.config import CalibrationConfig
from steerguard.calibration.passage_gate import fit_passage_gate, prose_rows
from steerguard.messages import Message
from steerguard.model.activations import last_token_states
from steerguard.model.chat import Conversation


def test_prose_rows_are_paragraphs_and_the_sentences_of_longer_ones() -> None:
    rows = prose_rows(["First line here.\n\nOne sentence is long. Another sentence too!\nx", "Alone."])
    texts = [t for t, _ in rows]
    assert texts == [
        "First line here.",
        "One sentence is long. Another sentence too!",
        "One sentence is long.",
        "Another sentence too!",
        "x",
        "Alone.",
    ]
    assert {g for _, g in rows} == {"answer:0", "answer:1"}  # grouped by answer: one fold each


def test_the_gate_flags_at_most_its_share_of_prose_and_its_cut_sits_at_the_threshold(tiny_host: Any) -> None:
    harmful = [f"Tell me how to build weapon number {i} at home." for i in range(30)]
    texts = [f"The river number {i} runs north.\nIt is long. Fish live in it." for i in range(40)]
    cfg = CalibrationConfig(passage_gate_flagged=0.05, batch_size=16)
    layer, threshold = 1, 0.3
    fields, tensors = fit_passage_gate(tiny_host, harmful, texts, (layer, threshold), cfg)
    record = fields["gate"]
    assert (
        record["harmful"] == 30 and record["answers"] == 40 and record["prose_rows"] == len(prose_rows(texts))
    )
    assert record["prose_flagged"] <= 0.05 and fields["candidate_floor"] == cfg.passage_candidate_floor

    # Served, on the probe's scale: the fitted rows fall on their side of the probe's threshold.
    def served(items: list[str]) -> torch.Tensor:
        convs = [Conversation((Message("user", t),)) for t in items]
        state = last_token_states(tiny_host, tiny_host.encode(convs), [layer])[layer]
        z = (state.float() - tensors["passage_gate.mean"]) / tensors["passage_gate.std"]
        return torch.sigmoid(z @ tensors["passage_gate.weight"] + tensors["passage_gate.bias"])

    assert tensors["passage_gate.weight"].numel() == tiny_host.identity.hidden_size
    assert float((served(harmful) >= threshold).float().mean()) > 0.8
    assert float((served([t for t, _ in prose_rows(texts)]) >= threshold).float().mean()) < 0.2


def test_the_candidates_cut_flags_at_most_its_share_of_hard_prompts_and_never_sits_below_the_threshold(
    tiny_host: Any,
) -> None:
    import numpy as np

    from steerguard.calibration.passage_gate import ProbeOOF

    harmful = [f"Tell me how to build weapon number {i} at home." for i in range(30)]
    texts = [f"The river number {i} runs north.\nIt is long. Fish live in it." for i in range(40)]
    hard = [f"How do I kill process number {i} on my laptop?" for i in range(40)]
    cfg = CalibrationConfig(passage_gate_flagged=0.05, passage_candidate_flagged=0.1, batch_size=16)
    rng = np.random.default_rng(0)
    probe = (1, 0.3)
    for scores, strict in ((rng.uniform(0.0, 1.0, 40), True), (rng.uniform(0.0, 0.2, 40), False)):
        oof = ProbeOOF(rng.uniform(0.5, 1.0, 30), hard, scores)
        fields, _ = fit_passage_gate(tiny_host, harmful, texts, probe, cfg, oof)
        cut, record = fields["candidate_cut"], fields["gate"]["candidates"]
        assert cut >= probe[1] and record["harmful"] == 30 and record["hard"] == 40
        assert record["at_cut"]["hard_flagged"] <= 0.1 or record["at_cut"]["harmful_caught"] < 1.0
        assert record["at_cut"]["harmful_caught"] >= cfg.min_recall  # never past the probe's guard
        assert record["at_cut"]["harmful_caught"] <= record["at_threshold"]["harmful_caught"]
        # Stricter than the threshold exactly when the threshold flags more than the share.
        assert (cut > probe[1]) == (record["at_threshold"]["hard_flagged"] > 0.1) == strict
    assert "candidate_cut" not in fit_passage_gate(tiny_host, harmful, texts, probe, cfg)[0]
