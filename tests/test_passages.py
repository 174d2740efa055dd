"""Passages (steerguard.passages): long texts read at every segment end, on the tiny model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from classifier_service.cache import MemoryCache
from classifier_service.config import CoreConfig
from classifier_service.core import ClassifierCore
from steerguard.messages import Message
from steerguard.model.chat import Conversation, normalise_request
from steerguard.passages import (
    MAX_GAP,
    ender_ids,
    length_groups,
    position_states,
    segment_ends,
    split,
    text_ids,
)

WINDOW = 64


def test_every_segment_end_is_read_once_with_context_before_it() -> None:
    ids = list(range(1000))
    enders = frozenset(range(0, 1000, 7))
    passages = split(ids, enders, WINDOW, 16)
    read = [p.start + q for p in passages for q in p.positions]
    assert read == segment_ends(ids, enders)  # each once, in order
    assert all(len(p.ids) <= WINDOW for p in passages)
    assert all(min(p.positions) >= 16 for p in passages[1:])  # the overlap's worth of text before
    assert all(p.ids == tuple(ids[p.start : p.start + len(p.ids)]) for p in passages)


def test_each_segment_starts_after_the_previous_end_or_at_its_window() -> None:
    ids = list(range(1000))
    enders = frozenset(range(0, 1000, 7))
    ends = segment_ends(ids, enders)
    previous = {e: (ends[i - 1] + 1 if i else 0) for i, e in enumerate(ends)}
    for p in split(ids, enders, WINDOW, 16):
        for b, q in zip(p.starts, p.positions, strict=True):
            assert b == max(0, previous[p.start + q] - p.start) and b <= q


def test_text_without_punctuation_is_still_read_every_max_gap_tokens() -> None:
    ends = segment_ends(list(range(500)), frozenset())
    assert ends[-1] == 499 and max(b - a for a, b in zip(ends, ends[1:], strict=False)) <= MAX_GAP


def test_passages_share_a_padded_batch_only_when_padding_is_under_a_quarter() -> None:
    assert length_groups([512, 512, 66, 480, 300, 290]) == [[0, 1, 3], [4, 5], [2]]
    assert length_groups([]) == []


def test_position_states_are_the_end_state_and_segment_mean_of_the_forward_pass(tiny_host: Any) -> None:
    # Passages of unequal length: some share a left-padded batch (padding must not reach any
    # mean), a short one runs in a batch of its own; rows come back in passage order either way.
    enders = ender_ids(tiny_host.tokenizer)
    ids = text_ids(tiny_host, "One. Two? Three!\nfour five six seven. " * 20)
    full = split(ids, enders, WINDOW, 16)
    cut = [
        replace(p, ids=p.ids[:k], positions=(k - 1,), starts=(0,))
        for p, k in zip(full, (56, 20), strict=False)
    ]
    passages = [cut[0], *full, cut[1]]
    assert len(length_groups([len(p.ids) for p in passages])) == 2
    assert len({len(p.ids) for p in passages[:-1]}) > 1
    layer = 1
    got = position_states(tiny_host, passages, [layer])[layer]
    want = []
    with torch.inference_mode():
        for p in passages:
            out = tiny_host.model.model(input_ids=torch.tensor([list(p.ids)]), output_hidden_states=True)
            hidden = out.hidden_states[layer + 1][0].float()
            want.extend(
                torch.cat([hidden[q], hidden[b : q + 1].mean(0)])
                for b, q in zip(p.starts, p.positions, strict=True)
            )
    torch.testing.assert_close(got, torch.stack(want), atol=1e-4, rtol=1e-4)


def test_typed_template_tokens_are_plain_text_in_a_passage(tiny_host: Any) -> None:
    special = tiny_host.special_tokens[0]
    ids = text_ids(tiny_host, f"hello {special} world")
    assert tiny_host.tokenizer.convert_tokens_to_ids(special) not in ids


@pytest.fixture(scope="module")
def passage_core(tiny_host: Any, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from devstack.models import make_random_bundle

    bundle = make_random_bundle(tiny_host, tmp_path_factory.mktemp("pb"), passage_tokens=WINDOW)
    cache = MemoryCache(max_entries=1000, ttl_seconds=60)
    core = ClassifierCore(tiny_host, bundle, cache, CoreConfig(max_prompt_tokens=96))
    yield core
    core.close()


def test_a_long_text_is_read_as_passages_only(passage_core: ClassifierCore) -> None:
    # Its end included: the request probe would read a closing paragraph of prose as a request.
    text = "\n\n".join(f"Paragraph {i} says something plain." for i in range(80))
    plan = passage_core.windows.plan(normalise_request(text))
    assert plan.read == [] and len(plan.passages) > 3
    short = passage_core.windows.plan(normalise_request("A short question?"))
    assert short.passages == [] and len(short.read) == 1


def test_the_core_judges_a_long_text_by_its_highest_view_or_passage(
    passage_core: ClassifierCore, tiny_host: Any
) -> None:
    # A chat: its short question is a view, its long pasted turn is passages.
    text = " ".join(f"Sentence number {i} is here." for i in range(150))
    conv = Conversation((Message("user", text), Message("assistant", "Noted."), Message("user", "Now what?")))
    plan = passage_core.windows.plan(conv)
    assert plan.read and plan.passages
    bundle = passage_core.bundle
    info = bundle.passage
    assert info is not None
    states = position_states(tiny_host, plan.passages, [info.layer])[info.layer]
    best_passage = float(bundle.passage_score(states).max())
    view_states = torch.stack([passage_core._probe_states([tiny_host.token_ids(v)])[0] for v in plan.read])
    best_view = float(bundle.score(view_states).unsafe.max())
    verdict = passage_core.classify([conv])[0]
    assert verdict.score == pytest.approx(max(best_passage, best_view), abs=1e-4)
    assert not verdict.cached
    again = passage_core.classify([conv])[0]
    assert again.cached and again.score == pytest.approx(verdict.score, abs=1e-6)


def test_a_passage_verdict_survives_the_cache_round_trip(
    passage_core: ClassifierCore, tmp_path: Path
) -> None:
    # Every passage of a text that only passages can judge lands in the cache under its own key.
    text = " ".join(f"Word{i}." for i in range(400))
    passage_core.classify([normalise_request(text)])
    plan = passage_core.windows.plan(normalise_request(text))
    keys = [job.key for job in passage_core._passage_jobs(plan.passages)]
    assert passage_core.cache is not None
    assert all(v is not None for v in passage_core.cache.get_many(keys))


def _with_passage_layers(bundle: Any, layers: list[int], width: int) -> Any:
    """``bundle``'s manifest and tensors with a random passage head of ``width`` features on ``layers``."""
    from dataclasses import replace

    from steerguard.bundle import Bundle

    g = torch.Generator().manual_seed(3)
    tensors = {
        **bundle.tensors,
        "passage.mean": torch.zeros(width),
        "passage.std": torch.ones(width),
        "passage.weight": torch.randn(width, generator=g) * 0.1,
    }
    manifest = replace(bundle.manifest, passage=replace(bundle.passage, feature_layers=layers), bundle_id="")
    return Bundle(manifest, tensors)


def test_a_passage_head_may_read_shallower_layers_beside_its_own(
    passage_core: ClassifierCore, tiny_host: Any, tmp_path: Path
) -> None:
    # The pass runs through the shallower layers anyway; their segment states sit before the deepest's.
    from steerguard.bundle import Bundle

    base = passage_core.bundle
    layer, width = base.passage.layer, base.tensors["passage.mean"].numel()
    saved = _with_passage_layers(base, [0, layer], 2 * width)
    saved.save(tmp_path / "b")
    bundle = Bundle.load(tmp_path / "b")
    assert bundle.passage is not None and bundle.passage.layers == (0, layer)
    cache = MemoryCache(max_entries=100, ttl_seconds=60)
    core = ClassifierCore(tiny_host, bundle, cache, CoreConfig(max_prompt_tokens=96))
    try:
        text = " ".join(f"Line {i} of the report is here." for i in range(120))
        plan = core.windows.plan(normalise_request(text))
        assert plan.read == [] and plan.passages
        states = position_states(tiny_host, plan.passages, [0, layer])
        want = float(bundle.passage_score(torch.cat([states[0], states[layer]], dim=1)).max())
        assert core.classify([normalise_request(text)])[0].score == pytest.approx(want, abs=1e-4)
    finally:
        core.close()


def test_a_passage_head_that_does_not_fit_its_layers_is_refused(passage_core: ClassifierCore) -> None:
    from steerguard.errors import BundleError

    base = passage_core.bundle
    layer, width = base.passage.layer, base.tensors["passage.mean"].numel()
    with pytest.raises(BundleError, match="passage probe reads"):
        _with_passage_layers(base, [0, layer], width)  # one layer's width for two layers
    with pytest.raises(BundleError, match="last feature layer"):
        _with_passage_layers(base, [layer, 0], 2 * width)


# -- candidates: a window's top segment end and the text's last paragraph, read again ----------

NEWLINE = 0


def test_a_candidate_is_the_paragraph_that_ends_at_its_position_at_most_limit_tokens() -> None:
    from steerguard.passages import paragraph

    newlines = frozenset({NEWLINE})
    ids = [5, 6, NEWLINE, 7, 8, 9, NEWLINE, NEWLINE, 10]
    assert paragraph(ids, 5, newlines, 10) == (3, 5)
    assert paragraph(ids, 7, newlines, 10) == (3, 5)  # line breaks at its end are dropped
    assert paragraph(ids, 5, newlines, 2) == (4, 5)  # the limit keeps its end
    assert paragraph(ids, 8, newlines, 10) == (8, 8)
    assert paragraph([NEWLINE, NEWLINE], 1, newlines, 10) is None


def test_split_notes_each_positions_paragraph_and_marks_only_the_final_window() -> None:
    ids = [NEWLINE if i % 10 == 9 else 100 + i for i in range(400)]
    enders = frozenset({NEWLINE})
    plain = split(ids, enders, WINDOW, 16)
    noted = split(ids, enders, WINDOW, 16, (frozenset({NEWLINE}), 8))
    assert [p.positions for p in noted] == [p.positions for p in plain]
    assert all(not p.paragraphs and not p.last for p in plain)
    assert [p.last for p in noted] == [False] * (len(noted) - 1) + [True]
    for p in noted:
        for q, span in zip(p.positions, p.paragraphs, strict=True):
            assert span is not None and span[1] <= q and span[1] - span[0] < 8
            assert NEWLINE not in p.ids[span[0] : span[1] + 1]
    assert {p.key() for p in noted}.isdisjoint(p.key() for p in plain)


def test_candidates_are_the_top_position_over_the_floor_and_the_texts_last_paragraph() -> None:
    from steerguard.passages import Passage

    p = Passage((1, 2, 3, 4), (1, 3), (0, 2), paragraphs=((0, 1), (2, 3)))
    assert p.candidates([0.5, 0.1], floor=0.2) == [(0, 1)]
    assert p.candidates([0.1, 0.05], floor=0.2) == []
    last = Passage((1, 2, 3, 4), (1, 3), (0, 2), paragraphs=((0, 1), (2, 3)), last=True)
    assert last.candidates([0.5, 0.1], floor=0.2) == [(0, 1), (2, 3)]
    assert last.candidates([0.1, 0.5], floor=0.2) == [(2, 3)]  # each once
    assert Passage((1, 2), (1,), (0,)).candidates([0.9], floor=0.0) == []  # candidates off


def _with_gate(bundle: Any, floor: float, tokens: int, width: int | None = None) -> Any:
    """``bundle`` with a random passage gate on the probe layer's state (``width`` to break it)."""
    from dataclasses import replace

    from steerguard.bundle import Bundle

    size = bundle.tensors["probe.mean"].numel()
    g = torch.Generator().manual_seed(5)
    tensors = {
        **bundle.tensors,
        "passage_gate.mean": torch.zeros(width or size),
        "passage_gate.std": torch.ones(width or size),
        "passage_gate.weight": torch.randn(width or size, generator=g),
        "passage_gate.bias": torch.tensor([0.5]),
        "passage.bias": torch.tensor([-20.0]),  # the passage head says ~0: candidates decide
    }
    info = replace(bundle.passage, gate_cut=0.5, candidate_floor=floor, candidate_tokens=tokens)
    return Bundle(replace(bundle.manifest, passage=info, bundle_id=""), tensors)


def test_the_core_reads_candidates_again_under_the_probe_and_the_gate(
    passage_core: ClassifierCore, tiny_host: Any, tmp_path: Path
) -> None:
    from dataclasses import replace

    from steerguard.bundle import Bundle

    _with_gate(passage_core.bundle, floor=0.0, tokens=12).save(tmp_path / "g")
    bundle = Bundle.load(tmp_path / "g")
    core = ClassifierCore(
        tiny_host, bundle, MemoryCache(max_entries=100, ttl_seconds=60), CoreConfig(max_prompt_tokens=96)
    )
    try:
        text = "\n\n".join(f"Part {i} of the notes is here. It goes on." for i in range(40))
        plan = core.windows.plan(normalise_request(text))
        assert plan.read == [] and plan.passages and plan.passages[-1].last
        info = bundle.passage
        assert info is not None
        want = 0.0
        for p in plan.passages:
            scores = bundle.passage_score(position_states(tiny_host, [p], [info.layer])[info.layer]).tolist()
            want = max(want, *scores)
            for a, b in p.candidates(scores, 0.0):
                conv = Conversation((Message("user", tiny_host.decode(list(p.ids[a : b + 1])).strip()),))
                state = core._probe_states([tiny_host.token_ids(conv)])
                want = max(
                    want,
                    min(float(bundle.score(state).unsafe[0]), float(bundle.passage_gate_score(state)[0])),
                )
        assert core.classify([normalise_request(text)])[0].score == pytest.approx(want, abs=1e-4)
        assert want > 0.01  # a candidate decided
        # Without the gate the same text is read by the passage head alone.
        gateless = replace(bundle.manifest, passage=replace(info, gate_cut=None), bundle_id="")
        Bundle(gateless, bundle.tensors).save(tmp_path / "a")
        plain = ClassifierCore(tiny_host, Bundle.load(tmp_path / "a"), None, CoreConfig(max_prompt_tokens=96))
        try:
            assert plain.classify([normalise_request(text)])[0].score < 1e-6
        finally:
            plain.close()
        # An operator may turn candidates off: the passage head alone again.
        off = ClassifierCore(
            tiny_host, bundle, None, CoreConfig(max_prompt_tokens=96, passage_candidates=False)
        )
        try:
            assert off.classify([normalise_request(text)])[0].score < 1e-6
        finally:
            off.close()
    finally:
        core.close()


def test_a_candidates_cut_moves_their_scores_so_it_sits_at_the_threshold(
    passage_core: ClassifierCore,
) -> None:
    from dataclasses import replace

    from steerguard.bundle import Bundle
    from steerguard.errors import BundleError

    bundle = _with_gate(passage_core.bundle, 0.0, 12)
    info = bundle.passage
    assert info is not None
    states = torch.randn(
        200, bundle.tensors["probe.mean"].numel(), generator=torch.Generator().manual_seed(3)
    )
    raw = torch.minimum(bundle.score(states).unsafe, bundle.passage_gate_score(states))
    assert torch.equal(bundle.candidate_score(states), raw)  # no cut of their own: the threshold's
    cut = float(raw.quantile(0.8))
    assert cut > bundle.threshold + 1e-3
    strict = Bundle(replace(bundle.manifest, passage=replace(info, candidate_cut=cut)), bundle.tensors)
    moved = strict.candidate_score(states)
    far = (raw - cut).abs() > 1e-4
    assert torch.equal((moved >= bundle.threshold)[far], (raw >= cut)[far]) and int((raw >= cut).sum()) == 40
    assert torch.equal(torch.argsort(moved), torch.argsort(raw))  # the order is kept
    for bad in (0.0, 1.0):
        with pytest.raises(BundleError, match="candidates' cut"):
            Bundle(replace(bundle.manifest, passage=replace(info, candidate_cut=bad)), bundle.tensors)


def test_a_gate_that_does_not_read_the_probe_layers_state_is_refused(passage_core: ClassifierCore) -> None:
    from steerguard.errors import BundleError

    width = passage_core.bundle.tensors["probe.mean"].numel()
    with pytest.raises(BundleError, match="passage gate"):
        _with_gate(passage_core.bundle, 0.0, 12, width=2 * width)
