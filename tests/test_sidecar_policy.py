"""Policy file parsing: defaults, shorthand, strict validation with reasons naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.decisions import decide
from sidecar.policy import Action, FailureMode, OnClassifierError, PolicyError, load_policy, parse_policy

EXAMPLE = """
mode: enforce
on_classifier_error: open
refusal_message: "Not here."
default: flag
categories:
  cybercrime: {action: steer, vector: category, strength: 1.5}
  self_harm: steer
  weapons: {action: block, message: "No weapons."}
  fraud: {action: steer, vector: refusal-head}
steer: {max_new_tokens: 64, temperature: 0.3}
response_check: {enabled: true, window_chars: 64}
routes:
  - {path: /v1/chat/completions, adapter: openai, on_classifier_error: closed}
  - path: /api/ask
    adapter: json
    prompt_pointer: /question
    history_pointer: /history
    response_pointer: /answer
    reply_template: {answer: "{{reply}}", flagged: "{{unsafe}}"}
"""


def test_default_policy_blocks_unsafe_on_every_text_route() -> None:
    policy = load_policy(None)
    assert not policy.shadow
    assert [(r.path, r.adapter) for r in policy.routes] == [
        ("/v1/chat/completions", "openai"),
        ("/v1/completions", "completions"),
        ("/v1/responses", "responses"),
        ("/v1/messages", "anthropic"),
    ]
    assert policy.routes == parse_policy({}).routes  # the dataclass and the parser agree
    assert all(r.on_classifier_error == OnClassifierError.every(FailureMode.CLOSED) for r in policy.routes)
    assert policy.unknown_paths == "read_only"
    assert not policy.routes[0].response_check.enabled
    assert decide(policy, True, "anything").action is Action.BLOCK
    assert decide(policy, False, "").action is Action.ALLOW


def test_example_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE)
    policy = load_policy(path)
    assert policy.refusal_message == "Not here."
    assert policy.rule_for("cybercrime").vector == "category"
    assert policy.rule_for("cybercrime").strength == 1.5
    assert policy.rule_for("self_harm").action is Action.STEER
    assert policy.rule_for("self_harm").vector == "refusal"
    assert policy.rule_for("fraud").vector == "refusal-head"
    assert policy.refusal_for("weapons") == "No weapons."
    assert policy.rule_for("unlisted").action is Action.FLAG
    chat, ask = policy.routes
    assert chat.on_classifier_error.unavailable is FailureMode.CLOSED  # route overrides the default
    assert ask.on_classifier_error == OnClassifierError.every(FailureMode.OPEN)
    assert ask.response_check.enabled and ask.response_check.window_chars == 64
    assert policy.steer.max_new_tokens == 64


def test_json_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"mode": "shadow"}))
    policy = load_policy(path)
    assert policy.shadow
    decision = decide(policy, True, "violence")
    assert decision.action is Action.ALLOW and decision.intended is Action.BLOCK and decision.shadow


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({"mdoe": "shadow"}, "mdoe"),
        ({"mode": "loud"}, "policy.mode"),
        ({"default": "explode"}, "policy.default.action"),
        ({"categories": {"x": {"action": "steer", "vector": "other"}}}, "policy.categories.x.vector"),
        ({"categories": {"x": {"acton": "block"}}}, "acton"),
        ({"threshold": 1.0}, "policy.threshold"),
        ({"threshold": "high"}, "policy.threshold"),
        ({"steer": {"max_new_tokens": 0}}, "policy.steer.max_new_tokens"),
        ({"routes": [{"path": "no-slash"}]}, "policy.routes[0].path"),
        ({"routes": [{"path": "/a", "adapter": "soap"}]}, "policy.routes[0].adapter"),
        ({"routes": [{"path": "/a", "adapter": "json", "reply_template": "{{reply}}"}]}, "prompt_pointer"),
        ({"routes": [{"path": "/a", "adapter": "json", "prompt_pointer": "/q"}]}, "reply_template"),
        (
            {
                "routes": [
                    {"path": "/a", "adapter": "json", "prompt_pointer": "q", "reply_template": "{{reply}}"}
                ]
            },
            "prompt_pointer",
        ),
        (
            {
                "routes": [
                    {"path": "/a", "adapter": "json", "prompt_pointer": "/q", "reply_template": "{{x}}"}
                ]
            },
            "reply_template",
        ),
        (
            {
                "routes": [
                    {"path": "/a", "adapter": "json", "prompt_pointer": "/q", "reply_template": {"a": 1}}
                ]
            },
            "reply_template",
        ),
        (
            {
                "response_check": True,
                "routes": [
                    {"path": "/a", "adapter": "json", "prompt_pointer": "/q", "reply_template": "{{reply}}"}
                ],
            },
            "response_pointer",
        ),
        ({"routes": [{"path": "/a"}, {"path": "/a"}]}, "listed twice"),
        ({"unknown_paths": "drop"}, "unknown_paths"),
        ({"on_classifier_error": {"slow": "open"}}, "policy.on_classifier_error: unknown key(s) slow"),
        ({"on_classifier_error": {"deadline": "maybe"}}, "policy.on_classifier_error.deadline"),
        ({"categories": {"violence": {"threshold": 1.0}}}, "policy.categories.violence.threshold"),
        ({"categories": {"violence": {"shadow": "yes"}}}, "policy.categories.violence.shadow"),
        ({"routes": [{"path": "/a", "threshold": 0}]}, "policy.routes[0].threshold"),
        ([1, 2], "policy"),
    ],
)
def test_bad_policies_name_the_key(document: object, names: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(document)
    assert names in info.value.reason


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [unclosed")
    with pytest.raises(PolicyError, match="not valid"):
        load_policy(bad)


def test_the_k8s_policy_file_is_valid() -> None:
    path = Path(__file__).resolve().parent.parent / "k8s" / "base" / "config" / "policy.yaml"
    if not path.is_file():
        pytest.skip("no k8s policy in this tree")
    policy = load_policy(path)
    assert policy.routes


def test_sensitivity_per_category_and_route() -> None:
    """The likeliest category's cut, else the route's, else the policy's, else the bundle's."""
    from sidecar.decisions import at_threshold, rule_category, threshold_for
    from steerguard.v1 import common_pb2

    policy_doc: dict[str, Any] = {
        "threshold": 0.4,
        "categories": {"misinformation": {"action": "flag", "threshold": 0.8, "shadow": True}},
        "routes": [{"path": "/strict", "threshold": 0.2}, {"path": "/plain"}],
    }
    policy = parse_policy(policy_doc)
    strict, plain = policy.routes

    def verdict(score: float, likeliest: str) -> common_pb2.Verdict:
        others = {"violence": 0.1} if likeliest != "violence" else {"cybercrime": 0.1}
        return common_pb2.Verdict(score=score, threshold=0.5, category_scores={likeliest: 0.9, **others})

    rumour = verdict(0.7, "misinformation")
    assert threshold_for(policy, strict, rumour) == 0.8  # the category's cut wins over the route's
    assert not at_threshold(rumour, 0.8).unsafe
    loud = at_threshold(verdict(0.85, "misinformation"), 0.8)
    assert loud.unsafe and loud.category == "misinformation" and loud.threshold == pytest.approx(0.8)
    assert decide(policy, True, "misinformation").shadow  # shadowed category: recorded, forwarded
    assert not decide(policy, True, "violence").shadow
    assert threshold_for(policy, strict, verdict(0.3, "violence")) == 0.2
    assert threshold_for(policy, plain, verdict(0.3, "violence")) == 0.4
    assert threshold_for(parse_policy({}), plain, verdict(0.3, "violence")) == 0.5  # the bundle's
    unsure = verdict(0.7, "misinformation")
    unsure.category_unsure = True  # the head abstained: the category's cut is not applied
    assert threshold_for(policy, strict, unsure) == 0.2
    taken = at_threshold(unsure, 0.2)
    assert rule_category(policy, taken) == "" and taken.category_unsure
    likeliest = parse_policy({**policy_doc, "on_unsure_category": "likeliest"})
    assert threshold_for(likeliest, likeliest.routes[0], unsure) == 0.8  # acts on it all the same
    assert rule_category(likeliest, taken) == "misinformation"
    with pytest.raises(PolicyError, match="on_unsure_category"):
        parse_policy({"on_unsure_category": "maybe"})
    safe = at_threshold(verdict(0.3, "violence"), 0.4)
    assert not safe.unsafe and safe.category == "" and safe.score == pytest.approx(0.3)


def test_failure_modes_per_kind() -> None:
    """Unreachable, too slow and overloaded may each fail open or closed; routes inherit and override."""
    policy = parse_policy(
        {
            "on_classifier_error": {"deadline": "open", "overloaded": "open"},
            "routes": [{"path": "/a"}, {"path": "/b", "on_classifier_error": {"overloaded": "closed"}}],
        }
    )
    a, b = (r.on_classifier_error for r in policy.routes)
    assert (a.unavailable, a.deadline, a.overloaded) == (
        FailureMode.CLOSED,
        FailureMode.OPEN,
        FailureMode.OPEN,
    )
    assert (b.unavailable, b.deadline, b.overloaded) == (
        FailureMode.CLOSED,
        FailureMode.OPEN,
        FailureMode.CLOSED,
    )
    assert a.mode_for("error") is FailureMode.CLOSED and a.closed_on_outage  # anything else: as unavailable


def test_lowest_cut_is_the_lowest_any_rule_may_apply_on_a_route() -> None:
    """Sent as lowest_threshold: below the bundle's cut, the classifier skips its early exit."""
    policy = parse_policy(
        {
            "threshold": 0.6,
            "categories": {"violence": {"action": "block", "threshold": 0.4}, "cybercrime": "block"},
            "routes": [{"path": "/v1/chat/completions", "threshold": 0.2}, {"path": "/v1/messages"}],
        }
    )
    chat, messages = policy.routes[0], policy.routes[1]
    assert policy.lowest_cut(chat) == 0.2
    assert policy.lowest_cut(messages) == 0.4
    assert parse_policy({}).lowest_cut(parse_policy({}).routes[0]) is None
