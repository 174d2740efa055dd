from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("score", "unsafe", "category", "category_scores", "cached", "bundle_id", "threshold", "language", "language_calibrated", "hazard", "cascade_exit", "category_unsure")
    class CategoryScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCORE_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_SCORES_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    HAZARD_FIELD_NUMBER: _ClassVar[int]
    CASCADE_EXIT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_UNSURE_FIELD_NUMBER: _ClassVar[int]
    score: float
    unsafe: bool
    category: str
    category_scores: _containers.ScalarMap[str, float]
    cached: bool
    bundle_id: str
    threshold: float
    language: str
    language_calibrated: bool
    hazard: str
    cascade_exit: bool
    category_unsure: bool
    def __init__(self, score: _Optional[float] = ..., unsafe: _Optional[bool] = ..., category: _Optional[str] = ..., category_scores: _Optional[_Mapping[str, float]] = ..., cached: _Optional[bool] = ..., bundle_id: _Optional[str] = ..., threshold: _Optional[float] = ..., language: _Optional[str] = ..., language_calibrated: _Optional[bool] = ..., hazard: _Optional[str] = ..., cascade_exit: _Optional[bool] = ..., category_unsure: _Optional[bool] = ...) -> None: ...

class DescribeBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BundleInfo(_message.Message):
    __slots__ = ("bundle_id", "model_id", "model_sha256", "categories", "probe_layer", "steer_layers", "threshold", "default_strength", "created_at")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PROBE_LAYER_FIELD_NUMBER: _ClassVar[int]
    STEER_LAYERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    model_id: str
    model_sha256: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    probe_layer: int
    steer_layers: _containers.RepeatedScalarFieldContainer[int]
    threshold: float
    default_strength: float
    created_at: str
    def __init__(self, bundle_id: _Optional[str] = ..., model_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., probe_layer: _Optional[int] = ..., steer_layers: _Optional[_Iterable[int]] = ..., threshold: _Optional[float] = ..., default_strength: _Optional[float] = ..., created_at: _Optional[str] = ...) -> None: ...
