"""Text is read wherever an upstream may read it: unknown keys, schemas, vLLM's and Anthropic's extras.

A guard that reads only the fields it knows lets a request hide in one it does
not (vLLM's RAG ``documents``, a template's kwargs, a reasoning field, a tool
parameter's name). These tests hide a marker in each such place, for each API,
and check that it is in the text the classifier reads; and that what is not
text (ids, media data, credentials) is not sent to it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.adapters import AnthropicAdapter, CompletionsAdapter, OpenAIAdapter, ResponsesAdapter
from sidecar.conversation import ChatRequest
from steerguard.errors import InvalidInput

H = "hidden-request-7f3a"
USER = {"role": "user", "content": "What is the capital of France?"}
BLOCK_USER = {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}


def _schema_with(name: str = "q", description: str = "the query") -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}}}


OPENAI = {
    "vLLM RAG documents": {"messages": [USER], "documents": [{"title": "notes", "text": H}]},
    "chat template kwargs": {"messages": [USER], "chat_template_kwargs": {"custom_instructions": H}},
    "assistant reasoning_content": {
        "messages": [USER, {"role": "assistant", "content": "Paris.", "reasoning_content": H}, USER]
    },
    "assistant refusal field": {"messages": [USER, {"role": "assistant", "refusal": H}, USER]},
    "a tool parameter's name": {
        "messages": [USER],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": _schema_with(name=H)}}],
    },
    "response schema": {
        "messages": [USER],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": _schema_with(H)}},
    },
    "guided_json schema": {"messages": [USER], "guided_json": _schema_with(description=H)},
    "guided_choice": {"messages": [USER], "guided_choice": [H, "no"]},
    "guided_regex": {"messages": [USER], "guided_regex": f"({H}|no)"},
    "structured_outputs": {"messages": [USER], "structured_outputs": {"choice": [H, "no"]}},
    "an unknown key in a part": {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "x": H}]}]
    },
    "an unknown key in a message": {"messages": [{"role": "user", "content": "hi", "x": H}]},
    "an unknown top-level field": {"messages": [USER], "system": H},
    "a file's name": {
        "messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f", "filename": H}}]}]
    },
}
ANTHROPIC = {
    "a document's context": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "data": "minutes"}, "context": H},
                    {"type": "text", "text": "Summarise."},
                ],
            }
        ]
    },
    "a thinking block": {
        "messages": [
            BLOCK_USER,
            {"role": "assistant", "content": [{"type": "thinking", "thinking": H, "signature": "s"}]},
            BLOCK_USER,
        ]
    },
    "a search result's title": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "search_result",
                        "source": "https://a",
                        "title": H,
                        "content": [{"type": "text", "text": "b"}],
                    }
                ],
            }
        ]
    },
    "a tool parameter's name": {
        "messages": [BLOCK_USER],
        "tools": [{"name": "f", "input_schema": _schema_with(H)}],
    },
    "a tool call's argument name": {
        "messages": [
            BLOCK_USER,
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {H: 1}}]},
            BLOCK_USER,
        ]
    },
    "a structured-output schema": {
        "messages": [BLOCK_USER],
        "output_format": {"type": "json_schema", "schema": _schema_with(description=H)},
    },
}
RESPONSES = {
    "a response schema": {
        "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": _schema_with(description=H)}},
    },
    "an unknown key in a message item": {"input": [{"role": "user", "content": "hi", "x": H}]},
    "a reusable prompt's variables": {"input": "hi", "prompt": {"id": "pmpt_1", "variables": {"topic": H}}},
}
COMPLETIONS = {"a schema beside the prompt": {"prompt": "hi", "response_format": {"schema": _schema_with(H)}}}

CASES = [
    (adapter, name, body)
    for adapter, shapes in (
        (OpenAIAdapter(), OPENAI),
        (AnthropicAdapter(), ANTHROPIC),
        (ResponsesAdapter(), RESPONSES),
        (CompletionsAdapter(), COMPLETIONS),
    )
    for name, body in shapes.items()
]


def _parse(adapter: Any, body: dict[str, Any]) -> ChatRequest:
    return adapter.parse(json.dumps({"model": "m", "max_tokens": 8, **body}).encode())  # type: ignore[no-any-return]


def _judged(chat: ChatRequest) -> str:
    return "\n".join(m.content for m in chat.messages)


@pytest.mark.parametrize(("adapter", "name", "body"), CASES, ids=[f"{a.name}: {n}" for a, n, _ in CASES])
def test_text_hidden_in_a_field_is_judged(adapter: Any, name: str, body: dict[str, Any]) -> None:
    assert H in _judged(_parse(adapter, body)), name


def test_ids_media_and_credentials_are_not_sent_to_the_classifier() -> None:
    secret = "Bearer sk-do-not-forward"
    body = {
        "session_id": "s-123",
        "metadata": {"team": "billing"},
        "user": "u-42",
        "stop": ["STOP-SEQ"],
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "ok"},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://img", "detail": "high"}}],
            },
            USER,
        ],
    }
    judged = _judged(_parse(OpenAIAdapter(), body))
    for opaque in ("s-123", "billing", "u-42", "STOP-SEQ", "call_9", "https://img", "high", "function"):
        assert opaque not in judged, opaque
    tools = [
        {
            "type": "mcp",
            "server_label": "docs",
            "server_url": "https://mcp",
            "headers": {"Authorization": secret},
        }
    ]
    responses = _parse(ResponsesAdapter(), {"input": "hi", "tools": tools, "previous_response_id": "resp_1"})
    assert secret not in _judged(responses) and "docs" in _judged(responses)
    assert responses.unjudged == ("stored_conversation",)
    servers = [{"type": "url", "url": "https://mcp", "name": "n", "authorization_token": secret}]
    assert secret not in _judged(
        _parse(AnthropicAdapter(), {"messages": [BLOCK_USER], "mcp_servers": servers})
    )


def test_a_part_with_only_media_is_still_reported_unjudged() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    chat = _parse(
        OpenAIAdapter(), {"messages": [{"role": "user", "content": [audio, {"type": "text", "text": "hi"}]}]}
    )
    assert chat.unjudged == ("input_audio",) and _judged(chat) == "hi"


def test_a_template_sent_with_the_request_is_judged_and_reported_unjudged() -> None:
    """Its literal text is read; how it renders the messages (it may rewrite them) cannot be."""
    chat = _parse(OpenAIAdapter(), {"messages": [USER], "chat_template": "{{ '" + H + "' }}"})
    assert H in _judged(chat) and chat.unjudged == ("chat_template",)
    within = {"messages": [USER], "chat_template_kwargs": {"chat_template": "{{ '" + H + "' }}"}}
    chat = _parse(OpenAIAdapter(), within)
    assert H in _judged(chat) and chat.unjudged == ("chat_template",)


def test_prompt_embeddings_are_refused() -> None:
    with pytest.raises(InvalidInput, match="prompt_embeds"):
        _parse(CompletionsAdapter(), {"prompt": "hi", "prompt_embeds": "AAAA"})


# -- answers: what the upstream says back is read as wholly as what it was asked


def test_answers_are_read_whole_in_every_api() -> None:
    tool_use = {"type": "tool_use", "id": "t", "name": "run", "input": {"cmd": H}}
    anthropic = {
        "content": [{"type": "thinking", "thinking": H, "signature": "s"}, tool_use],
        "stop_reason": "x",
    }
    reasoning = {"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": H}]}
    call = {"type": "function_call", "id": "f", "call_id": "c", "name": "run", "arguments": H}
    for adapter, document in (
        (OpenAIAdapter(), {"choices": [{"message": {"role": "assistant", "content": None, "reasoning": H}}]}),
        (AnthropicAdapter(), anthropic),
        (ResponsesAdapter(), {"output": [reasoning]}),
        (ResponsesAdapter(), {"output": [call]}),
    ):
        answer = adapter.answer_text(document)
        assert answer is not None and H in answer and "signature" not in answer, adapter.name
    assert AnthropicAdapter().answer_text(anthropic).count(H) == 2  # type: ignore[union-attr]
    replaced = json.loads(AnthropicAdapter().replace_answer(anthropic, "No."))
    assert replaced["content"] == [{"type": "text", "text": "No."}]


def test_streamed_reasoning_and_tool_input_are_read() -> None:
    openai = {
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": H}}]}}]
    }
    assert OpenAIAdapter().stream_answer_delta(json.dumps(openai).encode()) == {0: H}
    for delta in ({"type": "thinking_delta", "thinking": H}, {"type": "input_json_delta", "partial_json": H}):
        event = {"type": "content_block_delta", "index": 0, "delta": delta}
        assert AnthropicAdapter().stream_answer_delta(json.dumps(event).encode()) == {0: H}
    stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    assert AnthropicAdapter().stream_answer_delta(json.dumps(stop).encode()) == {}
    for kind in ("reasoning_summary_text", "function_call_arguments", "output_text"):
        event = {"type": f"response.{kind}.delta", "item_id": "i", "delta": H}
        assert ResponsesAdapter().stream_answer_delta(json.dumps(event).encode()) == {0: H}
    audio = {"type": "response.audio.delta", "delta": "UklGRg=="}
    assert ResponsesAdapter().stream_answer_delta(json.dumps(audio).encode()) == {}


def test_choices_streamed_together_are_read_apart() -> None:
    """``n`` > 1: each choice's deltas under its index, so interleaved answers are judged apart."""
    event = {"choices": [{"index": 1, "delta": {"content": "b"}}, {"index": 0, "delta": {"content": "a"}}]}
    assert OpenAIAdapter().stream_answer_delta(json.dumps(event).encode()) == {0: "a", 1: "b"}
    text = {"choices": [{"index": 2, "text": "c"}, {"text": "d"}, {"index": True, "text": "e"}]}
    assert CompletionsAdapter().stream_answer_delta(json.dumps(text).encode()) == {2: "c", 0: "de"}


def test_answers_of_an_unexpected_shape_have_no_text_rather_than_an_error() -> None:
    for adapter, document in (
        (OpenAIAdapter(), {"choices": [{"message": "text"}, 3, {"message": {"content": 5}}]}),
        (AnthropicAdapter(), {"content": ["text", 3, {"type": "text", "text": None}]}),
        (ResponsesAdapter(), {"output": "text"}),
    ):
        assert adapter.answer_text(document) is None, adapter.name


def test_a_tool_output_in_parts_is_read_and_its_image_reported() -> None:
    output = [{"type": "input_text", "text": H}, {"type": "input_image", "image_url": "https://img"}]
    item = {"type": "function_call_output", "call_id": "c", "output": output}
    chat = _parse(ResponsesAdapter(), {"input": [item, {"role": "user", "content": "Go on."}]})
    assert H in _judged(chat) and chat.unjudged == ("input_image",)
