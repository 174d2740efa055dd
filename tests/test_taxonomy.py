"""MLCommons hazard codes: named in every unsafe verdict, usable in policies, checked against the bundle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from classifier_service.core import ClassifierCore, CoreConfig
from sidecar.bundles import check_categories
from sidecar.decisions import at_threshold, decide
from sidecar.exchange import H_HAZARD, verdict_headers
from sidecar.policy import Action, PolicyError, parse_policy
from steerguard.bundle import Bundle
from steerguard.model.host import ModelHost
from steerguard.taxonomy import HAZARDS, hazard_of, hazards_of
from steerguard.v1 import classifier_pb2, common_pb2
from steerguard.verdict import Verdict
from tests.serving import serve_core

DEFAULT_CATEGORIES = [
    "chemical_biological",
    "cybercrime",
    "harassment",
    "illegal",
    "misinformation",
    "sexual",
    "violence",
]


def test_every_default_category_has_a_hazard_code() -> None:
    assert {hazard_of(c) for c in DEFAULT_CATEGORIES} <= set(HAZARDS)
    assert all(hazard_of(c) for c in DEFAULT_CATEGORIES)
    assert hazard_of("violence") == "S1" and hazard_of("chemical_biological") == "S9" and hazard_of("") == ""


def test_a_verdict_names_its_hazard_only_when_unsafe() -> None:
    unsafe = Verdict(0.9, True, "cybercrime", {"cybercrime": 0.8, "violence": 0.2})
    assert unsafe.hazard == "S2" and unsafe.to_proto().hazard == "S2"
    assert Verdict.from_proto(unsafe.to_proto()).hazard == "S2"
    safe = unsafe.at_threshold(0.95)
    assert safe.hazard == "" and safe.to_proto().hazard == ""


def test_the_sidecar_recomputes_the_hazard_at_its_own_threshold() -> None:
    proto = common_pb2.Verdict(score=0.4, unsafe=False, category_scores={"violence": 0.7, "cybercrime": 0.3})
    cut = at_threshold(proto, 0.3)
    assert cut.unsafe and cut.category == "violence" and cut.hazard == "S1"
    assert verdict_headers(cut, "block", "r1")[H_HAZARD] == "S1"
    assert H_HAZARD not in verdict_headers(at_threshold(proto, 0.5), "allow", "r2")


def test_a_policy_rule_may_name_a_hazard_code_and_a_category_rule_wins() -> None:
    policy = parse_policy({"categories": {"S9": {"action": "flag"}, "S2": "flag", "cybercrime": "steer"}})
    assert decide(policy, True, "chemical_biological").action is Action.FLAG
    assert decide(policy, True, "illegal").action is Action.FLAG
    assert decide(policy, True, "cybercrime").action is Action.STEER
    assert decide(policy, True, "violence").action is Action.BLOCK  # the default


def test_a_policy_category_the_bundle_cannot_produce_is_named_with_the_valid_ones() -> None:
    check_categories(parse_policy({"categories": {"S9": "flag", "violence": "flag"}}), DEFAULT_CATEGORIES)
    with pytest.raises(PolicyError) as info:
        check_categories(
            parse_policy({"categories": {"S11": "flag", "self_harm": "flag"}}), DEFAULT_CATEGORIES
        )
    reason = info.value.reason
    assert "S11" in reason and "self_harm" in reason and "violence" in reason and "S9" in reason
    assert hazards_of(DEFAULT_CATEGORIES) == {"S1", "S2", "S5", "S9", "S10", "S12"}


@pytest.fixture(scope="module")
def stub(tiny_model_dir, tiny_bundle: Bundle) -> Iterator[object]:  # type: ignore[no-untyped-def]
    host = ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.classifier_layers)
    yield from serve_core(ClassifierCore(host, tiny_bundle, None, CoreConfig()))


def test_the_classifier_sends_the_hazard_over_grpc(stub) -> None:  # type: ignore[no-untyped-def]
    reply = stub.Classify(classifier_pb2.ClassifyRequest(prompt="anything", threshold=1e-6), timeout=30)
    assert reply.unsafe and reply.category in ("cybercrime", "violence")
    assert reply.hazard == hazard_of(reply.category) != ""
