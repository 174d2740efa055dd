"""``steerguard serve steer``: flags only (imports nothing heavy; the server is loaded on run)."""

from __future__ import annotations

import argparse
from typing import Any

from steer_service.config import ENGINES, SteerConfig
from steerguard.grpc_common.flags import add_common_service_flags
from steerguard.settings import add_flag

DEFAULT_PORT = 50052


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "steer",
        help="gRPC streaming generation with per-request steering",
        description="Serve steerguard.v1.Steerer: generation with steering chosen per request.",
    )
    add_common_service_flags(parser, default_port=DEFAULT_PORT)
    limits = SteerConfig()
    add_flag(
        parser, "--max-batch-size", type=int, default=limits.max_batch_size, help="rows decoded together"
    )
    add_flag(
        parser,
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (auto: CUDA when a GPU is visible)",
    )
    add_flag(
        parser,
        "--max-new-tokens-cap",
        type=int,
        default=limits.max_new_tokens_cap,
        help="largest max_new_tokens accepted",
    )
    add_flag(
        parser,
        "--engine",
        choices=list(ENGINES),
        default=limits.engine,
        help="the decode loop: inhouse, or vllm (the steerguard[vllm] extra; docs/vllm.md)",
    )
    add_flag(
        parser,
        "--vllm-memory-fraction",
        type=float,
        default=limits.vllm_memory_fraction,
        help="share of memory vLLM reserves (model and KV cache; --engine vllm)",
    )
    add_flag(
        parser,
        "--vllm-dtype",
        choices=["float32", "bfloat16", "float16"],
        default=limits.vllm_dtype,
        help="vLLM's dtype (float32 gives the in-house engine's greedy tokens; --engine vllm)",
    )
    add_flag(
        parser,
        "--max-queue",
        type=int,
        default=limits.max_queue,
        help="requests waiting for a row before RESOURCE_EXHAUSTED",
    )
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from steer_service.server import run

    return run(args)
