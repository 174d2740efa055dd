from steerguard.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Steering(_message.Message):
    __slots__ = ("mode", "category", "strength", "auto_vector")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[Steering.Mode]
        REFUSAL: _ClassVar[Steering.Mode]
        CATEGORY: _ClassVar[Steering.Mode]
        AUTO: _ClassVar[Steering.Mode]
        SCANS: _ClassVar[Steering.Mode]
        REFUSAL_HEAD: _ClassVar[Steering.Mode]
    NONE: Steering.Mode
    REFUSAL: Steering.Mode
    CATEGORY: Steering.Mode
    AUTO: Steering.Mode
    SCANS: Steering.Mode
    REFUSAL_HEAD: Steering.Mode
    class AutoVector(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        AUTO_VECTOR_POLICY: _ClassVar[Steering.AutoVector]
        AUTO_VECTOR_REFUSAL: _ClassVar[Steering.AutoVector]
        AUTO_VECTOR_CATEGORY: _ClassVar[Steering.AutoVector]
        AUTO_VECTOR_REFUSAL_HEAD: _ClassVar[Steering.AutoVector]
    AUTO_VECTOR_POLICY: Steering.AutoVector
    AUTO_VECTOR_REFUSAL: Steering.AutoVector
    AUTO_VECTOR_CATEGORY: Steering.AutoVector
    AUTO_VECTOR_REFUSAL_HEAD: Steering.AutoVector
    MODE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    AUTO_VECTOR_FIELD_NUMBER: _ClassVar[int]
    mode: Steering.Mode
    category: str
    strength: float
    auto_vector: Steering.AutoVector
    def __init__(self, mode: _Optional[_Union[Steering.Mode, str]] = ..., category: _Optional[str] = ..., strength: _Optional[float] = ..., auto_vector: _Optional[_Union[Steering.AutoVector, str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "max_new_tokens", "temperature", "top_p", "seed", "steering")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEERING_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    steering: Steering
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., steering: _Optional[_Union[Steering, _Mapping]] = ...) -> None: ...

class AppliedSteering(_message.Message):
    __slots__ = ("mode", "vector", "layers", "strength")
    MODE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    mode: Steering.Mode
    vector: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    strength: float
    def __init__(self, mode: _Optional[_Union[Steering.Mode, str]] = ..., vector: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., strength: _Optional[float] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "verdict", "applied")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    verdict: _common_pb2.Verdict
    applied: AppliedSteering
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., verdict: _Optional[_Union[_common_pb2.Verdict, _Mapping]] = ..., applied: _Optional[_Union[AppliedSteering, _Mapping]] = ...) -> None: ...
