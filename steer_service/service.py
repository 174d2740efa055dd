"""The steer service's core, independent of gRPC: validate, tokenise, hand to the engine.

Every check runs here, in the caller's thread, before the engine sees the
request: a bad request is refused with :class:`InvalidInput` and never
touches the running batch or the model ("never a half-steered model").
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from steer_service import metrics
from steer_service.config import SteerConfig
from steer_service.engine import Engine
from steer_service.jobs import Job, JobHandle
from steerguard.bundle import Bundle
from steerguard.errors import InvalidInput
from steerguard.generation import SamplingParams
from steerguard.logs import get_logger
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost
from steerguard.plan import AutoVector, Mode, SteeringRequest, validate

log = get_logger("steer_service")

# A deadline further away than this is no deadline (gRPC reports "none" as a huge number).
NO_DEADLINE_SECONDS = 1e6


@dataclass(frozen=True)
class GenerateInput:
    """A generation request as received, before validation."""

    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0  # 0: no nucleus cut (proto default)
    seed: int = 0  # 0: unseeded
    steering: SteeringRequest = field(default_factory=SteeringRequest)


def make_engine(host: ModelHost, bundle: Bundle, config: SteerConfig) -> Engine:
    """The configured decode loop; both take the same jobs and give the same chunks."""
    if config.engine == "vllm":
        from steer_service.vllm_engine import VllmEngine

        return VllmEngine(host, bundle, config, host.source)  # type: ignore[return-value]
    return Engine(host, bundle, config)


class SteerService:
    """Host + bundle + engine, shared by every RPC of the process."""

    def __init__(self, host: ModelHost, bundle: Bundle, config: SteerConfig) -> None:
        self.host = host
        self.bundle = bundle
        self.config = config
        self.engine = make_engine(host, bundle, config)
        self._max_positions = int(getattr(host.model.config, "max_position_embeddings", 0) or 0)

    def start(self) -> SteerService:
        unproven = self.bundle.unproven_category_answers()
        if unproven:
            log.warning(
                "category answers not safer than unsteered ones",
                categories=unproven,
                reason="the bundle's policy answers these with category vectors, and calibration's strength "
                "search found no strength whose judged answers beat unsteered answers (category_search)",
            )
        self.engine.start()
        return self

    def close(self) -> None:
        self.engine.close()

    def retire(self) -> None:
        """Serve the calls already here to the end, then stop (replaced by a new bundle's service)."""
        self.engine.drain()

    def sampling(self, inp: GenerateInput) -> SamplingParams:
        """Check the decoding parameters against the configured caps."""
        cap = self.config.max_new_tokens_cap
        if inp.max_new_tokens <= 0:
            raise InvalidInput("max_new_tokens must be at least 1")
        if inp.max_new_tokens > cap:
            raise InvalidInput(f"max_new_tokens {inp.max_new_tokens} is over the cap of {cap}")
        t, top_p = float(inp.temperature), float(inp.top_p)
        if not math.isfinite(t) or t < 0 or t > self.config.max_temperature:
            raise InvalidInput(f"temperature must be in [0, {self.config.max_temperature}] (0 = greedy)")
        if not math.isfinite(top_p) or top_p < 0 or top_p > 1:
            raise InvalidInput("top_p must be in [0, 1] (0 = no nucleus cut)")
        return SamplingParams(
            max_new_tokens=int(inp.max_new_tokens),
            temperature=t,
            top_p=1.0 if top_p == 0 else top_p,
            seed=int(inp.seed) if inp.seed else None,
        )

    def prepare(self, inp: GenerateInput, timeout: float | None = None) -> Job:
        """Validate and tokenise; raises :class:`InvalidInput` with a client-safe reason."""
        try:
            has_messages = bool(inp.messages)
            prompt = inp.prompt if (inp.prompt or not has_messages) else None
            conv = normalise_request(prompt, list(inp.messages) if has_messages else None)
            sampling = self.sampling(inp)
            validate(inp.steering, self.bundle)
            steering = inp.steering
            head = steering.mode is Mode.REFUSAL_HEAD or steering.auto_vector is AutoVector.REFUSAL_HEAD
            if head and not self.engine.supports_refusal_head:
                raise InvalidInput(f"the {self.config.engine} engine does not decode with the refusal head")
            ids = self.host.token_ids(conv)
            limit = self.config.max_prompt_tokens
            if len(ids) > limit:
                raise InvalidInput(f"prompt is {len(ids)} tokens, over the limit of {limit}")
            if self._max_positions and len(ids) + sampling.max_new_tokens > self._max_positions:
                raise InvalidInput(
                    f"prompt ({len(ids)} tokens) plus max_new_tokens exceeds the model's "
                    f"{self._max_positions} positions"
                )
        except InvalidInput as exc:
            metrics.REJECTED.labels("invalid").inc()
            log.info("request refused", reason=exc.reason)
            raise
        deadline = None
        if timeout is not None and timeout < NO_DEADLINE_SECONDS:
            deadline = time.monotonic() + max(0.0, timeout)
        handle = JobHandle(uuid.uuid4().hex[:16], self.engine.wake)
        job = Job(ids, sampling, inp.steering, handle, digest=conv.digest(), deadline=deadline)
        if self.config.log_prompts:
            log.info("request", request_id=handle.id, messages=conv.as_dicts())
        return job

    def submit(self, inp: GenerateInput, timeout: float | None = None) -> JobHandle:
        """Validate and queue a generation; iterate the returned handle for its chunks."""
        job = self.prepare(inp, timeout)
        self.engine.submit(job)
        return job.handle
