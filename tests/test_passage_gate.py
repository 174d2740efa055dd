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
