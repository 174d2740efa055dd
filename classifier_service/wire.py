"""Request decoding that turns malformed bytes into ``INVALID_ARGUMENT``, not ``INTERNAL``.

gRPC answers a request its deserializer cannot parse with ``INTERNAL``, and
protobuf refuses a ``string`` field holding invalid UTF-8: so a client sending
bad bytes would see a server error. Our deserializers catch that and return a
:class:`BadRequest` whose reason names the offending field (found by parsing
again with a mirror of the messages in which every string is ``bytes``: the
wire format of the two is the same). The servicer raises ``InvalidInput``
with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from steerguard.v1 import classifier_pb2


@dataclass(frozen=True)
class BadRequest:
    """A request that could not be decoded, and why (safe to return to the client)."""

    reason: str


def _mirror_classes() -> tuple[type[Message], type[Message]]:
    """``ClassifyRequest`` and ``ClassifyBatchRequest`` with bytes in place of strings."""
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="steerguard_wire_mirror.proto", package="steerguard.wire", syntax="proto3"
    )
    chat = fdp.message_type.add(name="ChatMessage")
    chat.field.add(name="role", number=1, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    chat.field.add(name="content", number=2, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    req = fdp.message_type.add(name="ClassifyRequest")
    req.field.add(name="prompt", number=1, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    req.field.add(
        name="messages",
        number=2,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=".steerguard.wire.ChatMessage",
    )
    req.field.add(name="answer", number=4, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    batch = fdp.message_type.add(name="ClassifyBatchRequest")
    batch.field.add(
        name="requests",
        number=1,
        type=f.TYPE_MESSAGE,
        label=f.LABEL_REPEATED,
        type_name=".steerguard.wire.ClassifyRequest",
    )
    pool = descriptor_pool.DescriptorPool()  # private: never seen by reflection
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("steerguard.wire.ClassifyRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("steerguard.wire.ClassifyBatchRequest")),
    )


_MirrorRequest, _MirrorBatch = _mirror_classes()


def _not_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _bad_field(req: Any, where: str, answer: str = "answer") -> str | None:
    """The first string field of ``req`` that is not UTF-8 (field 4 is called ``answer``)."""
    for field, name in (("prompt", "prompt"), ("answer", answer)):
        if _not_utf8(getattr(req, field)):
            return f"{where}{name} is not valid UTF-8"
    for i, m in enumerate(req.messages):
        for name in ("role", "content"):
            if _not_utf8(getattr(m, name)):
                return f"{where}messages[{i}].{name} is not valid UTF-8"
    return None


def _explain_request(data: bytes) -> str:
    try:
        mirror = _MirrorRequest.FromString(data)
    except DecodeError:
        return "request is not a valid steerguard.v1.ClassifyRequest message"
    return _bad_field(mirror, "") or "request is not a valid steerguard.v1.ClassifyRequest message"


def _explain_chunk(data: bytes) -> str:
    """``AnswerChunk`` shares ``ClassifyRequest``'s wire format, its field 4 named ``text``."""
    generic = "request is not a valid steerguard.v1.AnswerChunk message"
    try:
        mirror = _MirrorRequest.FromString(data)
    except DecodeError:
        return generic
    return _bad_field(mirror, "", answer="text") or generic


def _explain_batch(data: bytes) -> str:
    try:
        mirror = _MirrorBatch.FromString(data)
    except DecodeError:
        return "request is not a valid steerguard.v1.ClassifyBatchRequest message"
    for i, req in enumerate(mirror.requests):  # type: ignore[attr-defined]
        reason = _bad_field(req, f"requests[{i}].")
        if reason:
            return reason
    return "request is not a valid steerguard.v1.ClassifyBatchRequest message"


def _lenient(parse: Callable[[bytes], Any], explain: Callable[[bytes], str]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return BadRequest(explain(data))

    return deserialize


decode_classify_request = _lenient(classifier_pb2.ClassifyRequest.FromString, _explain_request)
decode_classify_batch_request = _lenient(classifier_pb2.ClassifyBatchRequest.FromString, _explain_batch)
decode_answer_chunk = _lenient(classifier_pb2.AnswerChunk.FromString, _explain_chunk)
