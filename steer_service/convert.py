"""Protobuf <-> core conversions for the Steerer API (no logic beyond mapping)."""

from __future__ import annotations

from steer_service.jobs import Chunk
from steer_service.service import GenerateInput
from steerguard.errors import InvalidInput
from steerguard.plan import Applied, AutoVector, Mode, SteeringRequest
from steerguard.v1 import common_pb2, steer_pb2
from steerguard.verdict import Verdict

_PROTO_MODES: dict[Mode, steer_pb2.Steering.Mode] = {
    Mode.NONE: steer_pb2.Steering.NONE,
    Mode.REFUSAL: steer_pb2.Steering.REFUSAL,
    Mode.CATEGORY: steer_pb2.Steering.CATEGORY,
    Mode.AUTO: steer_pb2.Steering.AUTO,
    Mode.SCANS: steer_pb2.Steering.SCANS,
    Mode.REFUSAL_HEAD: steer_pb2.Steering.REFUSAL_HEAD,
}
_MODES: dict[int, Mode] = {int(number): mode for mode, number in _PROTO_MODES.items()}
_AUTO_VECTORS: dict[int, AutoVector] = {
    int(steer_pb2.Steering.AUTO_VECTOR_POLICY): AutoVector.POLICY,
    int(steer_pb2.Steering.AUTO_VECTOR_REFUSAL): AutoVector.REFUSAL,
    int(steer_pb2.Steering.AUTO_VECTOR_CATEGORY): AutoVector.CATEGORY,
    int(steer_pb2.Steering.AUTO_VECTOR_REFUSAL_HEAD): AutoVector.REFUSAL_HEAD,
}


def mode_from_proto(number: int) -> Mode:
    """Proto3 enums are open: an unknown number arrives as an int and is refused here."""
    try:
        return _MODES[int(number)]
    except KeyError:
        raise InvalidInput(f"unknown steering mode {int(number)}") from None


def auto_vector_from_proto(number: int) -> AutoVector:
    try:
        return _AUTO_VECTORS[int(number)]
    except KeyError:
        raise InvalidInput(f"unknown auto_vector {int(number)}") from None


def generate_input(request: steer_pb2.GenerateRequest) -> GenerateInput:
    steering = SteeringRequest(
        mode=mode_from_proto(request.steering.mode),
        category=request.steering.category,
        strength=float(request.steering.strength),
        auto_vector=auto_vector_from_proto(request.steering.auto_vector),
    )
    return GenerateInput(
        prompt=request.prompt,
        messages=tuple({"role": m.role, "content": m.content} for m in request.messages),
        max_new_tokens=int(request.max_new_tokens),
        temperature=float(request.temperature),
        top_p=float(request.top_p),
        seed=int(request.seed),
        steering=steering,
    )


def verdict_to_proto(v: Verdict) -> common_pb2.Verdict:
    return v.to_proto()


def applied_to_proto(a: Applied) -> steer_pb2.AppliedSteering:
    return steer_pb2.AppliedSteering(
        mode=_PROTO_MODES[a.mode], vector=a.vector, layers=list(a.layers), strength=a.strength
    )


def chunk_to_proto(chunk: Chunk) -> steer_pb2.GenerateChunk:
    out = steer_pb2.GenerateChunk(text=chunk.text)
    if not chunk.final:
        return out
    out.finish_reason = chunk.finish_reason
    out.prompt_tokens = chunk.prompt_tokens
    out.completion_tokens = chunk.completion_tokens
    if chunk.applied is not None:
        out.applied.CopyFrom(applied_to_proto(chunk.applied))
        if chunk.applied.verdict is not None:
            out.verdict.CopyFrom(verdict_to_proto(chunk.applied.verdict))
    return out
