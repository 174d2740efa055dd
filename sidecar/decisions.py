"""From a verdict to an action: the policy's table, kept pure so it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.policy import Action, CategoryRule, Policy


@dataclass(frozen=True)
class Decision:
    """What to do (``action``) and what the policy says (``intended``; differs in shadow mode)."""

    action: Action
    intended: Action
    rule: CategoryRule | None
    shadow: bool


def decide(policy: Policy, unsafe: bool, category: str) -> Decision:
    """Safe -> allow; unsafe -> the category's rule; shadow mode always allows."""
    if not unsafe:
        return Decision(Action.ALLOW, Action.ALLOW, None, policy.shadow)
    rule = policy.rule_for(category)
    if policy.shadow:
        return Decision(Action.ALLOW, rule.action, rule, True)
    return Decision(rule.action, rule.action, rule, False)
