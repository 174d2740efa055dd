"""The policy file: what the sidecar does with each verdict, per category and route.

Kept separate from the flags because it is owned by whoever runs the chatbot
(a ConfigMap in Kubernetes), while flags are owned by the deployment. The file
is YAML (JSON is valid YAML), validated strictly at start-up so a typo fails
loudly instead of silently allowing traffic. Example::

    mode: enforce                 # or shadow: forward everything, only record
    on_classifier_error: closed   # default for routes: closed (503) or open; or per kind:
                                  # {unavailable: closed, deadline: open, overloaded: open}
    on_oversize: block            # default for routes: input past the classifier's hard cap
                                  # (32k tokens): block (413) or flag (forwarded, marked)
    on_language: judge            # a language the bundle was not calibrated for: judge, flag, block
    on_unsure_category: default   # the classifier unsure of the category: the default rule, or
                                  # likeliest (that category's rule and cut all the same)
    on_unjudged: forward          # parts with nothing to read (images, locked files): forward marked, reject
    refusal_message: "Sorry, I can't help with that."
    threshold: 0.4                # the cut for every request (default: the bundle's)
    default: block                # unsafe category without a rule below
    categories:                   # a bundle category, or an MLCommons hazard code (S1-S14)
      cybercrime: {action: steer, vector: category}
      S9: {action: block}         # indiscriminate weapons (chemical_biological)
      harassment: {action: steer, vector: refusal, threshold: 0.25}  # more sensitive
      illegal: {action: steer, vector: refusal-head}  # the refusal head (in-house engine only)
      misinformation: {action: flag, threshold: 0.7, shadow: true}   # less; only recorded
    steer: {max_new_tokens: 200, temperature: 0.0}
    response_check: {enabled: false, window_chars: 256}
    routes:
      - {path: /v1/chat/completions, adapter: openai}
      - path: /api/ask
        adapter: json
        prompt_pointer: /question
        history_pointer: /history
        response_pointer: /answer
        reply_template: {answer: "{{reply}}", flagged: "{{unsafe}}"}
        on_classifier_error: open
        threshold: 0.3            # this route's cut (a category's own cut still wins)
        overlap: true             # send upstream while judging; hold the answer (sidecar.overlap)

The cut in force for a request is its likeliest category's ``threshold``,
else its route's, else the policy's, else the bundle's; the sidecar takes
the classifier's score at that cut (``sidecar.decisions``) and reports it in
``x-steerguard-threshold``. A rule with ``shadow: true`` records what it
would do and forwards the request, as ``mode: shadow`` does for all.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sidecar import jsonptr, template
from steerguard.errors import SteerguardError
from steerguard.taxonomy import hazard_of


class PolicyError(SteerguardError):
    """The policy file is malformed; the reason names the key."""


class Action(str, enum.Enum):
    """What happens to a request."""

    ALLOW = "allow"
    BLOCK = "block"
    STEER = "steer"
    FLAG = "flag"


UNKNOWN_PATHS = ("read_only", "forward", "reject")
# What a request in a language the bundle was not calibrated for gets: its verdict as it is
# (judge), forwarded marked even when safe (flag), or the refusal (block).
ON_LANGUAGE = ("judge", "flag", "block")
ADAPTERS = ("openai", "completions", "responses", "anthropic", "json")
# The routes a policy without `routes` guards: every OpenAI text route and Anthropic's Messages.
DEFAULT_ROUTES = (
    ("/v1/chat/completions", "openai"),
    ("/v1/completions", "completions"),
    ("/v1/responses", "responses"),
    ("/v1/messages", "anthropic"),
)


class Oversize(str, enum.Enum):
    """What a route does with input longer than the classifier's hard cap (it cannot be judged whole)."""

    BLOCK = "block"  # 413, never forwarded
    FLAG = "flag"  # forwarded, marked unjudged (x-steerguard-failure: oversize)


class FailureMode(str, enum.Enum):
    """What a route does when the classifier cannot judge a request."""

    CLOSED = "closed"
    OPEN = "open"


# Why the classifier gave no verdict: unreachable, too slow for the call's deadline, or
# shedding load (RESOURCE_EXHAUSTED). Each is reported apart and may fail open or closed.
FAILURE_KINDS = ("unavailable", "deadline", "overloaded")


@dataclass(frozen=True)
class OnClassifierError:
    """A route's failure mode per kind: ``on_classifier_error: closed`` or ``{deadline: open, ...}``."""

    unavailable: FailureMode = FailureMode.CLOSED
    deadline: FailureMode = FailureMode.CLOSED
    overloaded: FailureMode = FailureMode.CLOSED

    @classmethod
    def every(cls, mode: FailureMode) -> OnClassifierError:
        return cls(mode, mode, mode)

    def mode_for(self, kind: str) -> FailureMode:
        """The mode for a failure kind; any other failure (an internal error) as ``unavailable``."""
        return getattr(self, kind) if kind in FAILURE_KINDS else self.unavailable

    @property
    def closed_on_outage(self) -> bool:
        """An unreachable classifier refuses this route's requests (readiness follows it)."""
        return self.unavailable is FailureMode.CLOSED


DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."
# How a steer rule answers: the refusal vector, the verdict's category vector, or the
# bundle's refusal head (more refusals, more fluent on SmolLM2; the steer service's
# in-house engine only: vLLM answers INVALID_ARGUMENT, which the rule's failure path takes).
STEER_VECTORS = ("refusal", "category", "refusal-head")


@dataclass(frozen=True)
class CategoryRule:
    """The action for one harm category; for steer, ``vector`` is one of :data:`STEER_VECTORS`."""

    action: Action
    vector: str = "refusal"
    strength: float = 0.0
    message: str | None = None
    # Sensitivity for requests whose most likely category is this one (sidecar.decisions).
    threshold: float | None = None
    shadow: bool = False  # record what the rule would do, forward the request


@dataclass(frozen=True)
class SteerParams:
    """Generation settings for steered answers (the request may lower them)."""

    max_new_tokens: int = 200
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class ResponseCheck:
    """Classify the upstream's answer before the client sees it.

    With streaming, at most ``window_chars`` characters of answer (and
    ``max_window_bytes`` of events) are held back while being judged.
    """

    enabled: bool = False
    window_chars: int = 256
    max_window_bytes: int = 256 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    message: str | None = None


@dataclass(frozen=True)
class Route:
    """A path the sidecar understands; every other path is passed through."""

    path: str
    adapter: str = "openai"
    methods: tuple[str, ...] = ("POST",)
    on_classifier_error: OnClassifierError = field(default_factory=OnClassifierError)
    on_oversize: Oversize = Oversize.BLOCK
    response_check: ResponseCheck = field(default_factory=ResponseCheck)
    prompt_pointer: str | None = None
    history_pointer: str | None = None
    response_pointer: str | None = None
    reply_template: Any = None
    reply_content_type: str = "application/json"
    threshold: float | None = None  # this route's sensitivity (below a category's, above the policy's)
    overlap: bool = False  # send upstream while judging, hold the answer for the verdict (sidecar.overlap)


@dataclass(frozen=True)
class Policy:
    """The whole parsed policy."""

    shadow: bool = False
    default: CategoryRule = field(default_factory=lambda: CategoryRule(Action.BLOCK))
    categories: Mapping[str, CategoryRule] = field(default_factory=dict)
    refusal_message: str = DEFAULT_REFUSAL
    threshold: float | None = None
    # Hard caps on what is sent to the classifier, which judges any length up to its own
    # cap (32k tokens) in views; past either, the route's on_oversize applies.
    context_messages: int = 1024
    context_chars: int = 262144
    steer: SteerParams = field(default_factory=SteerParams)
    routes: tuple[Route, ...] = tuple(Route(path=p, adapter=a) for p, a in DEFAULT_ROUTES)
    # Paths no route names: read_only relays GET/HEAD/OPTIONS without a body and refuses any
    # other request (404 naming this key), since a write to an unknown path may carry text
    # no one judged; forward relays everything; reject refuses everything.
    unknown_paths: str = "read_only"
    on_language: str = "judge"
    # A verdict whose category the bundle's head is unsure of (``category_unsure``): "default"
    # applies the default rule and cut, "likeliest" the likeliest category's all the same.
    on_unsure_category: str = "default"
    # What a request carrying parts that cannot be judged (images, audio, unreadable files, a conversation
    # stored upstream) gets once its text is judged safe: forwarded marked, or refused (400).
    on_unjudged: str = "forward"

    def rule_for(self, category: str) -> CategoryRule:
        """The rule for an unsafe verdict of ``category``: its own, else its MLCommons hazard code's
        (``S9``, steerguard.taxonomy), else the default."""
        rule = self.categories.get(category)
        if rule is None:
            rule = self.categories.get(hazard_of(category) or "-", self.default)
        return rule

    def lowest_cut(self, route: Route) -> float | None:
        """The lowest cut this policy may apply on ``route`` (None: only the bundle's).

        Sent with each request so the classifier skips its early exit when a
        cut here is below the bundle's own (the exit was calibrated there).
        """
        cuts = [rule.threshold for rule in self.categories.values()] + [route.threshold, self.threshold]
        found = [c for c in cuts if c is not None]
        return min(found) if found else None

    def refusal_for(self, category: str) -> str:
        """The refusal text for a blocked request of ``category``."""
        return self.rule_for(category).message or self.refusal_message


def _expect(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{where}: expected a mapping")
    return value


def _number(value: Any, where: str, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where}: expected a number")
    if value < low or (high is not None and value > high):
        raise PolicyError(f"{where}: out of range")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: expected true or false")
    return value


def _int(value: Any, where: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PolicyError(f"{where}: expected an integer >= {low}")
    return value


def _enum(enum_cls: type[enum.Enum], value: Any, where: str) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        options = ", ".join(str(m.value) for m in enum_cls)
        raise PolicyError(f"{where}: expected one of {options}") from None


def _rule(value: Any, where: str) -> CategoryRule:
    if isinstance(value, str):
        value = {"action": value}
    data = _mapping(value, where)
    _expect(data, {"action", "vector", "strength", "message", "threshold", "shadow"}, where)
    action = _enum(Action, data.get("action", "block"), f"{where}.action")
    vector = data.get("vector", "refusal")
    if vector not in STEER_VECTORS:
        raise PolicyError(f"{where}.vector: expected one of {', '.join(STEER_VECTORS)}")
    strength = _number(data.get("strength", 0.0), f"{where}.strength", low=0.0)
    message = data.get("message")
    if message is not None and not isinstance(message, str):
        raise PolicyError(f"{where}.message: expected text")
    shadow = data.get("shadow", False)
    if not isinstance(shadow, bool):
        raise PolicyError(f"{where}.shadow: expected true or false")
    threshold = _threshold(data.get("threshold"), f"{where}.threshold")
    return CategoryRule(action, vector, strength, message, threshold, shadow)


def _threshold(value: Any, where: str) -> float | None:
    """A cut strictly between 0 and 1, or None when unset."""
    if value is None:
        return None
    cut = _number(value, where, low=0.0, high=1.0)
    if cut in (0.0, 1.0):
        raise PolicyError(f"{where}: must be strictly between 0 and 1")
    return cut


def _on_error(value: Any, where: str, base: OnClassifierError) -> OnClassifierError:
    """``closed``/``open`` for every kind, or a mapping of kinds (the rest keep ``base``)."""
    if value is None:
        return base
    if isinstance(value, str):
        return OnClassifierError.every(_enum(FailureMode, value, where))
    data = _mapping(value, where)
    _expect(data, set(FAILURE_KINDS), where)
    kinds = {k: _enum(FailureMode, data[k], f"{where}.{k}") for k in FAILURE_KINDS if k in data}
    return replace(base, **kinds)


def _response_check(value: Any, where: str, base: ResponseCheck) -> ResponseCheck:
    if isinstance(value, bool):
        return replace(base, enabled=value)
    data = _mapping(value, where)
    _expect(data, {"enabled", "window_chars", "max_window_bytes", "max_body_bytes", "message"}, where)
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError(f"{where}.enabled: expected true or false")
    message = data.get("message", base.message)
    if message is not None and not isinstance(message, str):
        raise PolicyError(f"{where}.message: expected text")
    return ResponseCheck(
        enabled=enabled,
        window_chars=_int(data.get("window_chars", base.window_chars), f"{where}.window_chars", low=1),
        max_window_bytes=_int(
            data.get("max_window_bytes", base.max_window_bytes), f"{where}.max_window_bytes", low=1024
        ),
        max_body_bytes=_int(
            data.get("max_body_bytes", base.max_body_bytes), f"{where}.max_body_bytes", low=1
        ),
        message=message,
    )


def _pointer(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PolicyError(f"{where}: expected a JSON pointer")
    try:
        jsonptr.parse(value)
    except jsonptr.PointerError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return value


_ROUTE_KEYS = {
    "path",
    "adapter",
    "methods",
    "on_classifier_error",
    "on_oversize",
    "response_check",
    "prompt_pointer",
    "history_pointer",
    "response_pointer",
    "reply_template",
    "reply_content_type",
    "threshold",
    "overlap",
}


@dataclass(frozen=True)
class _RouteDefaults:
    """Top-level settings every route takes unless it names its own."""

    failure: OnClassifierError
    oversize: Oversize
    check: ResponseCheck


def _route(value: Any, where: str, defaults: _RouteDefaults) -> Route:
    data = _mapping(value, where)
    _expect(data, _ROUTE_KEYS, where)
    path = data.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise PolicyError(f"{where}.path: expected a path starting with '/'")
    adapter = data.get("adapter", "openai")
    if adapter not in ADAPTERS:
        raise PolicyError(f"{where}.adapter: expected one of {', '.join(ADAPTERS)}")
    methods = data.get("methods", ["POST"])
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise PolicyError(f"{where}.methods: expected a list of HTTP methods")
    route = Route(
        path=path,
        adapter=adapter,
        methods=tuple(m.upper() for m in methods),
        on_classifier_error=_on_error(
            data.get("on_classifier_error"), f"{where}.on_classifier_error", defaults.failure
        ),
        on_oversize=_enum(Oversize, data.get("on_oversize", defaults.oversize.value), f"{where}.on_oversize"),
        response_check=_response_check(data["response_check"], f"{where}.response_check", defaults.check)
        if "response_check" in data
        else defaults.check,
        prompt_pointer=_pointer(data.get("prompt_pointer"), f"{where}.prompt_pointer"),
        history_pointer=_pointer(data.get("history_pointer"), f"{where}.history_pointer"),
        response_pointer=_pointer(data.get("response_pointer"), f"{where}.response_pointer"),
        reply_template=data.get("reply_template"),
        reply_content_type=str(data.get("reply_content_type", "application/json")),
        threshold=_threshold(data.get("threshold"), f"{where}.threshold"),
        overlap=_flag(data.get("overlap", Route.overlap), f"{where}.overlap"),
    )
    if adapter == "json":
        if route.prompt_pointer is None:
            raise PolicyError(f"{where}.prompt_pointer: required for the json adapter")
        if route.reply_template is None:
            raise PolicyError(f"{where}.reply_template: required for the json adapter")
        try:
            template.validate(route.reply_template)
        except (template.TemplateError, jsonptr.PointerError) as exc:
            raise PolicyError(f"{where}.reply_template: {exc}") from None
        if route.response_check.enabled and route.response_pointer is None:
            raise PolicyError(f"{where}.response_pointer: required when response_check is enabled")
    return route


_TOP_KEYS = {
    "mode",
    "on_classifier_error",
    "on_oversize",
    "refusal_message",
    "default",
    "categories",
    "threshold",
    "context_messages",
    "context_chars",
    "steer",
    "response_check",
    "routes",
    "unknown_paths",
    "on_language",
    "on_unsure_category",
    "on_unjudged",
}


def parse_policy(data: Any) -> Policy:
    """Validate a parsed policy document; raise :class:`PolicyError` naming the bad key."""
    if data is None:
        data = {}
    data = _mapping(data, "policy")
    _expect(data, _TOP_KEYS, "policy")
    mode = data.get("mode", "enforce")
    if mode not in {"enforce", "shadow"}:
        raise PolicyError("policy.mode: expected enforce or shadow")
    failure = _on_error(data.get("on_classifier_error"), "policy.on_classifier_error", OnClassifierError())
    check = _response_check(data.get("response_check", False), "policy.response_check", ResponseCheck())
    categories = {
        str(name): _rule(rule, f"policy.categories.{name}")
        for name, rule in _mapping(data.get("categories", {}) or {}, "policy.categories").items()
    }
    steer_data = _mapping(data.get("steer", {}) or {}, "policy.steer")
    _expect(steer_data, {"max_new_tokens", "temperature", "top_p"}, "policy.steer")
    steer = SteerParams(
        max_new_tokens=_int(steer_data.get("max_new_tokens", 200), "policy.steer.max_new_tokens", low=1),
        temperature=_number(steer_data.get("temperature", 0.0), "policy.steer.temperature", low=0.0),
        top_p=_number(steer_data.get("top_p", 1.0), "policy.steer.top_p", low=0.0, high=1.0),
    )
    threshold = _threshold(data.get("threshold"), "policy.threshold")
    raw_routes = data.get("routes")
    if raw_routes is None:
        raw_routes = [{"path": path, "adapter": adapter} for path, adapter in DEFAULT_ROUTES]
    if not isinstance(raw_routes, list):
        raise PolicyError("policy.routes: expected a list")
    oversize = _enum(Oversize, data.get("on_oversize", Route.on_oversize.value), "policy.on_oversize")
    defaults = _RouteDefaults(failure, oversize, check)
    routes = tuple(_route(r, f"policy.routes[{i}]", defaults) for i, r in enumerate(raw_routes))
    seen: set[tuple[str, str]] = set()
    for route in routes:
        for method in route.methods:
            if (method, route.path) in seen:
                raise PolicyError(f"policy.routes: {method} {route.path} is listed twice")
            seen.add((method, route.path))
    refusal = data.get("refusal_message", DEFAULT_REFUSAL)
    if not isinstance(refusal, str) or not refusal:
        raise PolicyError("policy.refusal_message: expected text")
    on_language = data.get("on_language", Policy.on_language)
    if on_language not in ON_LANGUAGE:
        raise PolicyError(f"policy.on_language: expected {', '.join(ON_LANGUAGE)}")
    on_unsure = data.get("on_unsure_category", Policy.on_unsure_category)
    if on_unsure not in ("default", "likeliest"):
        raise PolicyError("policy.on_unsure_category: expected default or likeliest")
    on_unjudged = data.get("on_unjudged", Policy.on_unjudged)
    if on_unjudged not in ("forward", "reject"):
        raise PolicyError("policy.on_unjudged: expected forward or reject")
    unknown_paths = data.get("unknown_paths", Policy.unknown_paths)
    if unknown_paths not in UNKNOWN_PATHS:
        raise PolicyError(f"policy.unknown_paths: expected {', '.join(UNKNOWN_PATHS)}")
    return Policy(
        shadow=mode == "shadow",
        default=_rule(data.get("default", "block"), "policy.default"),
        categories=categories,
        refusal_message=refusal,
        threshold=threshold,
        context_messages=_int(
            data.get("context_messages", Policy.context_messages), "policy.context_messages", low=1
        ),
        context_chars=_int(data.get("context_chars", Policy.context_chars), "policy.context_chars", low=1),
        steer=steer,
        routes=routes,
        unknown_paths=unknown_paths,
        on_language=on_language,
        on_unsure_category=on_unsure,
        on_unjudged=on_unjudged,
    )


def load_policy(path: str | Path | None) -> Policy:
    """Read and validate a policy file; ``None`` gives the default policy."""
    if path is None:
        return parse_policy({})
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {file}: {exc.strerror}") from None
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError or yaml.YAMLError
        raise PolicyError(f"policy file {file} is not valid YAML/JSON: {exc}") from None
    return parse_policy(data)
