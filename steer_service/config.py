"""Limits and engine settings of the steer service (one place, from flags or tests)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from steerguard.grpc_common.flags import MAX_PROMPT_TOKENS

ENGINES = ("inhouse", "vllm")


@dataclass(frozen=True)
class SteerConfig:
    """What one steer service process accepts and how it batches.

    ``max_batch_size`` bounds the rows decoded together (memory and per-step
    latency grow with it); requests beyond it wait in a queue of at most
    ``max_queue`` and then get ``RESOURCE_EXHAUSTED``. ``ignore_eos`` exists
    for benchmarks only (fixed-length generations), never set by a flag.
    """

    max_batch_size: int = 8
    max_new_tokens_cap: int = 512
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    max_queue: int = 64
    max_temperature: float = 2.0
    log_prompts: bool = False
    ignore_eos: bool = False
    # "inhouse" (the continuous-batching loop here) or "vllm" (steer_service.vllm_engine, the
    # steerguard[vllm] extra); vLLM's CPU worker reserves this share of memory (its default,
    # 0.92, fails on a shared machine) and runs in this dtype.
    engine: str = "inhouse"
    vllm_memory_fraction: float = 0.2
    vllm_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_new_tokens_cap < 1:
            raise ValueError("max_new_tokens_cap must be at least 1")
        if self.max_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens must be at least 1")
        if self.max_queue < 0:
            raise ValueError("max_queue must not be negative")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SteerConfig:
        return cls(
            max_batch_size=int(args.max_batch_size),
            max_new_tokens_cap=int(args.max_new_tokens_cap),
            max_prompt_tokens=int(args.max_prompt_tokens),
            max_queue=int(args.max_queue),
            log_prompts=bool(args.log_prompts),
            engine=str(getattr(args, "engine", cls.engine)),
            vllm_memory_fraction=float(getattr(args, "vllm_memory_fraction", cls.vllm_memory_fraction)),
            vllm_dtype=str(getattr(args, "vllm_dtype", cls.vllm_dtype)),
        )
