"""The two-stage study reads the states it claims to: after the prompt, and after n greedy pilot tokens.

Rows of different lengths share a left-padded batch; each row's states must
equal the ones read on the row alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import two_stage_study

from steerguard.model.activations import last_token_states
from steerguard.model.chat import normalise_request

PROMPTS = ["Hi", "Tell me a long story about a river and a mill by the sea", "What is two plus two?"]


def test_pilot_states_match_each_row_read_alone(tiny_host) -> None:  # type: ignore[no-untyped-def]
    layer = 1
    found = two_stage_study.pilot_states(tiny_host, PROMPTS, layer, pilot=3, at=[1, 3])
    assert found.shape == (3, 3, tiny_host.identity.hidden_size)
    pad = tiny_host.tokenizer.pad_token_id or 0
    for i, prompt in enumerate(PROMPTS):
        ids = tiny_host.token_ids(normalise_request(prompt))
        alone = last_token_states(tiny_host, tiny_host.pad([ids]), [layer])[layer][0]
        np.testing.assert_allclose(found[i, 0], alone.numpy(), atol=1e-4)
        with torch.inference_mode():
            made = tiny_host.model.generate(
                input_ids=torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=pad
            )[0, len(ids) :].tolist()
        after = last_token_states(tiny_host, tiny_host.pad([ids + made[:3]]), [layer])[layer][0]
        np.testing.assert_allclose(found[i, 2], after.numpy(), atol=1e-4)
        assert not np.allclose(found[i, 0], found[i, 2])


def test_the_both_rule_flags_only_what_each_stage_flags() -> None:
    s1 = np.array([0.9, 0.9, 0.1, 0.1])
    s2 = np.array([0.9, 0.1, 0.9, 0.1])
    assert two_stage_study.combined("both", s1, s2, 0.5, 0.5).tolist() == [True, False, False, False]
    assert two_stage_study.combined("stage2", s1, s2, 0.5, 0.5).tolist() == [True, False, True, False]
