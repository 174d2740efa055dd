"""The content category head: categories read from the mean state over the last user turn's words.

Tiny random Llama (SmolLM2's tokenizer), a bundle given a random content
head. The served category scores must equal the head applied to the mean
state computed offline, in each of the classifier's paths: the shared-prefix
pass, the plain pass (a conversation with its own system prompt) and the
chunked pass of a view longer than one step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from classifier_service.core import ClassifierCore, CoreConfig
from steerguard.bundle import Bundle
from steerguard.calibration.categories import UnsureRule, content_category_head, unsure_cut
from steerguard.errors import BundleError
from steerguard.model.activations import content_means
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.model.spans import TurnMarkers, last_turn_content

WORDS = "Explain how tides work on the coast"


RULE = UnsureRule(accuracy=0.85, max_share=0.3)


def with_content_head(bundle: Bundle, folder: Path, unsure_below: float | None = None) -> Bundle:
    g = torch.Generator().manual_seed(3)
    h, c = bundle.tensors["probe.mean"].numel(), len(bundle.categories)
    tensors = {
        **bundle.tensors,
        "category_content.mean": torch.zeros(h),
        "category_content.std": torch.ones(h),
        "category_content.weight": torch.randn((c, h), generator=g),
        "category_content.bias": torch.zeros(c),
    }
    record = (
        {"features": "test"} if unsure_below is None else {"features": "test", "unsure_below": unsure_below}
    )
    manifest = replace(bundle.manifest, category_content=record, bundle_id="")
    Bundle(manifest, tensors).save(folder)
    return Bundle.load(folder)


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)


def test_the_span_is_the_last_user_turns_words(host: ModelHost) -> None:
    markers = TurnMarkers.for_tokenizer(host.tokenizer)
    assert markers is not None
    single = host.token_ids(normalise_request(WORDS))
    s, e = last_turn_content(single, markers)
    assert host.tokenizer.decode(single[s:e]) == WORDS
    chat = normalise_request(
        None,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": WORDS},
        ],
    )
    ids = host.token_ids(chat)
    s, e = last_turn_content(ids, markers)
    assert host.tokenizer.decode(ids[s:e]) == WORDS
    assert last_turn_content([5, 6, 7], None) == (1, 3)  # no markers: all but the first token


@pytest.mark.parametrize("path", ["prefix", "plain", "chunked"])
def test_served_categories_are_the_content_heads(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path, path: str
) -> None:
    bundle = with_content_head(tiny_bundle.with_threshold(0.0001), tmp_path)  # every prompt unsafe
    text = WORDS if path != "chunked" else " ".join([WORDS] * 12)
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    conv = normalise_request(None, own_system) if path == "plain" else normalise_request(text)
    step = 32 if path == "chunked" else CoreConfig().max_step_tokens
    core = ClassifierCore(host, bundle, None, CoreConfig(max_batch_wait_ms=0, max_step_tokens=step))
    try:
        (verdict,) = core.classify([conv])
        if path == "prefix":
            assert core.prefix is not None and core.prefix.fits(host.token_ids(conv))
        if path == "chunked":
            assert len(host.token_ids(conv)) - len(core.prefix or []) > step
    finally:
        core.close()
    expected = bundle.content_categories(content_means(host, [conv], bundle.probe_layer))[0]
    got = torch.tensor([verdict.category_scores[c] for c in bundle.categories])
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)
    assert verdict.unsafe and verdict.category == bundle.categories[int(expected.argmax())]


def test_a_bundle_naming_a_content_head_must_carry_it(tiny_bundle: Bundle, tmp_path: Path) -> None:
    bundle = with_content_head(tiny_bundle, tmp_path)
    tensors = {k: v for k, v in bundle.tensors.items() if k != "category_content.weight"}
    with pytest.raises(BundleError, match="category_content.weight"):
        Bundle(bundle.manifest, tensors)


def test_calibration_fits_the_head_and_records_its_cross_validated_accuracy(
    host: ModelHost, tiny_bundle: Bundle
) -> None:
    topics = ["bread and ovens", "rivers and tides", "stars and planets"]
    convs: list[Any] = []
    for topic in topics:
        convs += [normalise_request(f"Tell me about {topic}, part {i}") for i in range(6)]
    classes = np.repeat(np.arange(3), 6)
    record, tensors = content_category_head(
        host, convs, classes, 3, tiny_bundle.probe_layer, seed=0, unsure=RULE
    )
    assert record["rows"] == 18 and 0.0 <= record["cv_top1"] <= 1.0 and record["train_top1"] > 0.9
    assert record["oof_rows"] == 18 and 0.0 <= record["unsure_below"] <= 1.0
    assert tensors["category_content.weight"].shape == (3, host.identity.hidden_size)
    assert set(tensors) == {f"category_content.{t}" for t in ("mean", "std", "weight", "bias")}


def test_offline_classify_gives_the_served_categories(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    from steerguard.offline import classify

    bundle = with_content_head(tiny_bundle.with_threshold(0.0001), tmp_path)
    convs = [normalise_request(WORDS), normalise_request("What is the capital of France?")]
    core = ClassifierCore(host, bundle, None, CoreConfig(max_batch_wait_ms=0))
    try:
        served = core.classify(convs)
    finally:
        core.close()
    offline = classify(host, bundle, convs)
    for a, b in zip(served, offline, strict=True):
        assert a.category == b.category
        assert a.category_scores == pytest.approx(b.category_scores, abs=2e-4)


def test_built_in_requests_cover_every_category_the_default_bundle_serves() -> None:
    from steerguard.data import category_requests
    from steerguard.data.examples import CATEGORY_MAP

    served = sorted(set(CATEGORY_MAP.values()) - {"copyright"})
    assert sorted(category_requests.CATEGORY_REQUESTS) == served
    assert all(len(texts) >= 20 for texts in category_requests.CATEGORY_REQUESTS.values())
    picked = category_requests.examples(["sexual", "no_such_category"])
    assert picked and {e.category for e in picked} == {"sexual"}
    assert all(e.label == 1 and e.split == "calibration" for e in picked)
    texts = [t for ts in category_requests.CATEGORY_REQUESTS.values() for t in ts]
    assert len(set(texts)) == len(texts), "a request filed under two categories"


def test_built_in_rows_join_every_training_fold_and_are_never_tested_on() -> None:
    from steerguard.calibration.categories import Rows, cross_validated_top1

    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 4.0
    data_classes = np.repeat(np.arange(3), 10)
    data = Rows(centres[data_classes] + rng.normal(0, 3.0, (30, 8)), data_classes)
    clean_classes = np.repeat(np.arange(3), 40)
    clean = Rows(centres[clean_classes] + rng.normal(0, 0.5, (120, 8)), clean_classes)
    wrong = Rows(clean.x, (clean.classes + 1) % 3)
    alone = cross_validated_top1(data, 3, 1.0, seed=0)
    helped = cross_validated_top1(data, 3, 1.0, seed=0, always=clean)
    misled = cross_validated_top1(data, 3, 1.0, seed=0, always=wrong)
    assert misled < alone <= helped
    for score in (alone, helped, misled):  # a share of the 30 data rows only
        assert abs(score * 30 - round(score * 30)) < 1e-9


def test_calibration_records_the_extra_rows_it_fitted_on(host: ModelHost, tiny_bundle: Bundle) -> None:
    from steerguard.calibration.categories import extra_rows
    from steerguard.data import category_labels, category_requests
    from steerguard.data.examples import Example

    categories = ["cybercrime", "misinformation", "sexual"]
    calib = [Example("stand-in prompt", 1, "test", "calibration", "harmful")]
    extra = extra_rows(categories, calib)
    assert extra.record["labelled_rows"] == 0  # no prompt of the data set here: nothing to label
    convs = [
        normalise_request(f"Tell me about {topic}") for topic in ("ports", "news", "dates") for _ in range(5)
    ]
    classes = np.repeat(np.arange(3), 5)
    record, _ = content_category_head(
        host, convs, classes, 3, tiny_bundle.probe_layer, seed=0, unsure=RULE, extra=extra
    )
    assert record["rows"] == 15 and record["built_in_rows"] == len(extra.classes) > 40
    assert record["built_in_hash"] == category_requests.content_hash()
    assert record["labels_hash"] == category_labels.content_hash()
    assert sorted(set(extra.classes.tolist())) == [0, 1, 2]


def test_labels_apply_only_to_harmful_prompts_without_a_category(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from steerguard.data import category_labels
    from steerguard.data.examples import Example, text_hash

    prompt = "Write a worm for the office network"
    monkeypatch.setitem(category_labels.LABELS, text_hash(prompt), "cybercrime")
    rows = [
        Example(prompt, 1, "t", "calibration", "harmful"),
        Example(prompt, 1, "t", "calibration", "harmful", "illegal"),  # the source's own label wins
        Example(prompt, 0, "t", "calibration", "benign"),
        Example("Another prompt", 1, "t", "calibration", "harmful"),
    ]
    found = category_labels.labelled(rows, ["cybercrime", "illegal"])
    assert [(e.prompt, e.category) for e in found] == [(prompt, "cybercrime")]
    assert category_labels.labelled(rows, ["illegal"]) == []


def test_the_labels_name_only_served_categories() -> None:
    from steerguard.data import category_labels
    from steerguard.data.examples import CATEGORY_MAP

    assert set(category_labels.LABELS.values()) <= set(CATEGORY_MAP.values()) - {"copyright"}
    assert len(category_labels.LABELS) >= 200


def test_the_abstain_cut_is_the_lowest_that_reaches_the_accuracy_on_the_rows_kept() -> None:
    """Out-of-fold rows: the wrong ones are the least confident, so abstaining on them lifts top-1."""
    conf = np.linspace(0.55, 0.95, 20)
    classes = np.zeros(20, dtype=np.int64)
    probs = np.stack([conf, 1 - conf], axis=1)
    probs[:5] = probs[:5, ::-1]  # the five least confident rows are wrong (top class 1)
    assert np.allclose(probs.max(1), conf)
    found = unsure_cut(probs, classes, UnsureRule(accuracy=0.9, max_share=0.3))
    kept = probs.max(1) >= found["unsure_below"]
    assert (probs[kept].argmax(1) == 0).mean() >= 0.9 and found["oof_top1_kept"] >= 0.9
    assert found["oof_top1"] == 0.75 and found["oof_kept"] == kept.mean() == 0.8  # 4 abstained
    assert unsure_cut(probs, classes, UnsureRule(accuracy=0.7, max_share=0.3))["unsure_below"] == 0.0
    capped = unsure_cut(probs, classes, UnsureRule(accuracy=1.0, max_share=0.1))
    assert capped["oof_kept"] == 0.9  # never abstains on more than max_share


def test_a_verdict_under_the_cut_names_its_category_as_unsure(
    host: ModelHost, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    def unsure_count() -> float:
        samples = [
            s.value
            for metric in REGISTRY.collect()
            if metric.name == "steerguard_classifier_category_unsure"
            for s in metric.samples
            if s.name.endswith("_total")
        ]
        return sum(samples)

    before = unsure_count()
    convs = [normalise_request(WORDS)]
    verdicts = {}
    for cut in (0.0, 1.01):
        bundle = with_content_head(tiny_bundle.with_threshold(0.0001), tmp_path / str(cut), unsure_below=cut)
        core = ClassifierCore(host, bundle, None, CoreConfig(max_batch_wait_ms=0))
        try:
            (verdicts[cut],) = core.classify(convs)
        finally:
            core.close()
    assert not verdicts[0.0].category_unsure and verdicts[1.01].category_unsure
    assert verdicts[1.01].category == verdicts[0.0].category != ""  # still named
    assert verdicts[1.01].to_proto().category_unsure
    assert unsure_count() == before + 1  # counted once, by the unsure verdict


def test_eval_counts_top1_on_the_rows_the_head_commits_to() -> None:
    from steerguard.data.examples import Example
    from steerguard.evaluation.scoring import category_section

    cats = ["cybercrime", "illegal"]
    items = [Example(f"p{i}", 1, "t", "test", "harmful", cats[i % 2]) for i in range(4)]
    items.append(Example("benign", 0, "t", "test", "benign"))
    # rows 0, 1 right and sure; row 2 wrong and unsure; row 3 wrong and sure; the benign row ignored
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.5, 0.5]])
    section = category_section(items, cats, probs, unsure_below=0.65)
    assert section["rows"] == 4 and section["kept"] == 3
    assert section["top1"] == pytest.approx(2 / 3, abs=1e-4) and section["top1_all"] == 0.5
    assert section["unsure"] == {"cybercrime": 1, "illegal": 0}
    assert section["per_category"]["cybercrime"] == {"n": 2, "kept": 1, "top1": 1.0}
    assert section["per_category"]["illegal"]["top1"] == 0.5 == section["top1_lowest"]
    assert category_section(items, cats, probs)["top1"] == 0.5  # no cut: every row counts
