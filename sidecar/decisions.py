"""From a verdict to an action: the policy's table, kept pure so it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.policy import Action, CategoryRule, Policy, Route
from steerguard.taxonomy import hazard_of
from steerguard.v1 import common_pb2


@dataclass(frozen=True)
class Decision:
    """What to do (``action``) and what the policy says (``intended``; differs in shadow mode)."""

    action: Action
    intended: Action
    rule: CategoryRule | None
    shadow: bool


def decide(policy: Policy, unsafe: bool, category: str) -> Decision:
    """Safe -> allow; unsafe -> the category's rule (or its hazard code's); shadow mode allows."""
    if not unsafe:
        return Decision(Action.ALLOW, Action.ALLOW, None, policy.shadow)
    rule = policy.rule_for(category)
    if policy.shadow or rule.shadow:
        return Decision(Action.ALLOW, rule.action, rule, True)
    return Decision(rule.action, rule.action, rule, False)


def rule_category(policy: Policy, verdict: common_pb2.Verdict) -> str:
    """The category a policy rule is chosen by: "" when the classifier is unsure of it.

    Why: the verdict still names its likeliest category (headers, audit), but
    a per-category rule or cut is only as good as the category; where the
    bundle's head abstains (``category_unsure``) the policy's default applies,
    unless the policy says ``on_unsure_category: likeliest``.
    """
    return "" if _unsure(policy, verdict) else verdict.category


def _unsure(policy: Policy, verdict: common_pb2.Verdict) -> bool:
    return verdict.category_unsure and policy.on_unsure_category == "default"


def likeliest_category(verdict: common_pb2.Verdict) -> str:
    """The category the classifier finds most likely, judged unsafe or not ("" without categories)."""
    scores = dict(verdict.category_scores)
    return max(scores, key=scores.__getitem__) if scores else ""


def threshold_for(policy: Policy, route: Route, verdict: common_pb2.Verdict) -> float:
    """The cut in force: the likeliest category's, else the route's, else the policy's, else the bundle's.

    Why per category: false flags fall far more on some topics than others,
    so a team loosens one category (or tightens one) without moving the rest.
    """
    rule = None if _unsure(policy, verdict) else policy.categories.get(likeliest_category(verdict))
    for cut in (rule.threshold if rule else None, route.threshold, policy.threshold):
        if cut is not None:
            return cut
    return float(verdict.threshold)


def at_threshold(verdict: common_pb2.Verdict, cut: float) -> common_pb2.Verdict:
    """The verdict taken at ``cut`` (the score and category scores are the classifier's own)."""
    out = common_pb2.Verdict()
    out.CopyFrom(verdict)
    out.unsafe = verdict.score >= cut
    out.category = likeliest_category(verdict) if out.unsafe else ""
    out.hazard = hazard_of(out.category) if out.unsafe else ""
    out.threshold = cut
    return out
