"""Bots with their own JSON API, described in the policy file.

The route says where the user's text is (a JSON pointer), optionally where
earlier turns are, where the bot puts its answer, and a reply template for
answers the sidecar makes itself. Such bots are not streamed.
"""

from __future__ import annotations

from typing import Any

from sidecar import jsonptr, template
from sidecar.adapters.base import FINISHED, Ending, Reply, ReplyMeta, StreamFormatter, dumps, load_json_object
from sidecar.conversation import ROLES, ChatRequest, Message
from sidecar.policy import Route
from steerguard.errors import InvalidInput


class JsonAdapter:
    """One policy route with ``adapter: json``."""

    name = "json"
    streaming_content_type = "application/json"

    def __init__(self, route: Route) -> None:
        assert route.prompt_pointer is not None
        self._route = route
        self._prompt = jsonptr.parse(route.prompt_pointer)
        self._history = jsonptr.parse(route.history_pointer) if route.history_pointer is not None else None
        self._answer = jsonptr.parse(route.response_pointer) if route.response_pointer is not None else None

    def parse(self, body: bytes) -> ChatRequest:
        document = load_json_object(body)
        try:
            prompt = jsonptr.resolve(document, self._prompt)
        except jsonptr.PointerError:
            raise InvalidInput(f"missing prompt field {self._route.prompt_pointer}") from None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput(f"prompt field {self._route.prompt_pointer} must be non-empty text")
        messages: list[Message] = []
        if self._history is not None:
            try:
                history = jsonptr.resolve(document, self._history)
            except jsonptr.PointerError:
                history = []
            if not isinstance(history, list):
                raise InvalidInput(f"history field {self._route.history_pointer} must be a list")
            for turn in history:
                if not isinstance(turn, dict) or turn.get("role") not in ROLES:
                    raise InvalidInput("history turns must be objects with a role of system/user/assistant")
                content = turn.get("content", "")
                if not isinstance(content, str):
                    raise InvalidInput("history turn content must be text")
                messages.append(Message(turn["role"], content))
        messages.append(Message("user", prompt))
        return ChatRequest(messages=messages, document=document)

    def reply(
        self,
        request: ChatRequest,
        text: str,
        meta: ReplyMeta,
        ending: Ending = FINISHED,
    ) -> Reply:
        rendered = template.render(self._route.reply_template, meta.as_values(text), request.document)
        return Reply(body=dumps(rendered), content_type=self._route.reply_content_type)

    def stream_formatter(
        self, request: ChatRequest, completion_id: str | None = None, model: str | None = None
    ) -> StreamFormatter:
        raise InvalidInput("this route does not stream")

    def answer_text(self, document: Any) -> str | None:
        if self._answer is None:
            return None
        try:
            value = jsonptr.resolve(document, self._answer)
        except jsonptr.PointerError:
            return None
        return value if isinstance(value, str) else None

    def replace_answer(self, document: Any, text: str) -> bytes:
        assert self._answer is not None
        jsonptr.replace(document, self._answer, text)
        return dumps(document)

    def stream_answer_delta(self, event_data: bytes) -> dict[int, str]:
        return {}
