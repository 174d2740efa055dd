"""The classifier's limits and batching knobs: the one home of their defaults (the CLI reads them here).

Imports nothing heavy, so ``steerguard serve classifier --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from steerguard.grpc_common.flags import MAX_PROMPT_TOKENS
from steerguard.views import MAX_TOTAL_TOKENS, OVERLAP_TOKENS

# gRPC threads of the classifier's server: blocked calls cost a thread each, not CPU (server.py).
RPC_THREADS = 256


# Where a single prompt view's miss may run (CoreConfig.backend, --backend).
BACKENDS = ("auto", "openvino", "onnxruntime", "onnxruntime-int8", "torch")

# How the batcher fills a step (CoreConfig.schedule, --schedule).
SCHEDULES = ("auto", "packed", "single")


@dataclass(frozen=True)
class CoreConfig:
    """Limits and batching knobs (the CLI fills this from flags)."""

    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    max_batch_size: int = 16
    # "packed": up to max_batch_size prompts a step, run in PyTorch (a lone prompt in the compiled
    # trunk); "single": one prompt a step, each in the compiled trunk; "auto": single where, timed
    # at start-up, the compiled trunk's lone prompt costs at most single_max_ratio times a packed
    # step's share of one (classifier_service.schedule), else packed. Measured on an AMX Xeon
    # (docs/benchmarks.md): ONNX Runtime int8 beside PyTorch float32 (as on a CPU without bf16),
    # 1.2-1.4x: single kept admitted p99 at 0.029 s at 0.8x the sustainable load and 0.42 s at
    # 2x, against 0.53 and 0.80 s packed, for 5-10% fewer calls a second; OpenVINO bf16 beside
    # PyTorch bf16, 2.3-2.9x: packed served 71-77 calls a second against 53-61.
    schedule: str = "auto"
    single_max_ratio: float = 2.0
    max_batch_wait_ms: float = 50.0
    batch_wait_fraction: float = 0.1  # see classifier_service.batcher
    max_queue: int = 1024
    # One step on the model holds at most this many tokens (a longer prompt runs alone, in chunks
    # this long, with other callers' short jobs between them): ~0.6 s on 2 cores for SmolLM2, and
    # 16 typical prompts fit (docs/benchmarks.md).
    max_step_tokens: int = 512
    # Shed a call (RESOURCE_EXHAUSTED) at once when its estimated wait is longer than this
    # (or than its own deadline); 0: no limit.
    max_queue_delay_ms: float = 1000.0
    # ... or than this many full steps (a max_step_tokens step, timed as steps run, so the limit
    # follows the machine's speed; 0: no such limit). A call that fits the next step beside the
    # calls queued before it is never shed for its wait (classifier_service.batcher). Three
    # quarters of a step brought admitted calls' p99 at twice the sustainable load from about 2x
    # its value at 0.8x (1000 ms alone) to 1.3x (still 1.5-2.1x against a true 0.8x;
    # bench/bench_overload.py, docs/benchmarks.md).
    max_queue_delay_steps: float = 0.75
    # Under one prompt a step (schedule "single") the wait limit counts one-prompt steps instead
    # (timed as they run; max_queue_delay_ms still caps it). Chosen from queueing theory (an M/D/1
    # queue, simulated): with calls arriving at random at 0.8x of what one prompt a step serves,
    # 12 refuses about 1 call in 1,000 (a queue with no limit makes its slowest 1% wait ~11 steps),
    # admits a burst of 13 at once, and keeps a call admitted at twice the load within ~13 steps.
    # 8, tried first, refused 0.4-1.1% at 0.8x and bursts of 10. On an AVX2-only CPU, 2x's admitted
    # p99 fell from 0.74-0.77 s (the 512-token step limit) to 0.57-0.63 s (docs/benchmarks.md).
    single_queue_delay_steps: float = 12.0
    # Once a call is shed by those limits (a queue longer than normal load lets through), hold
    # every call to this many times the p99 wait admitted at normal load until none has been shed
    # for four limits' time (classifier_service.normal_wait; 0: the fixed limits alone).
    overload_wait_margin: float = 1.25
    cache_prefix: str = "steerguard:verdict"  # Redis keys: prefix:bundle_id:hash (cache.keys)
    cache_key_secret: bytes | None = None  # keyed hashes (HMAC) in cache keys (cache.keys)
    log_prompts: bool = False
    share_prefix: bool = True  # reuse the template prefix's key/value cache
    # A single prompt view's pass after the template prefix, compiled (classifier_service.
    # accelerated; served miss 1.5x MiniLM + LR against 3.0x in PyTorch on a bf16 CPU,
    # docs/benchmarks.md). "auto": OpenVINO in bf16 where the CPU has native bf16, else ONNX
    # Runtime with int8 weights in three projections (classifier_service.quantized; 1.2% of
    # held-out verdicts changed), where installed, the prefix shared and the bundle has no early
    # exit, falling back to PyTorch if the export fails; "openvino"/"onnxruntime" (float32)/
    # "onnxruntime-int8": required (an error otherwise); "torch": never.
    backend: str = "auto"
    # Beside a compiled trunk (either engine), a long text's passages are read by OpenVINO in the
    # served precision (classifier_service.accelerated.CompiledPassages): a window 0.13 s against
    # 0.17 s in PyTorch bf16 (0.20 s against 0.25 s in float32), for ~0.45 GiB more resident
    # memory (~0.6 GiB in float32; bench/bench_memory.py, docs/benchmarks.md); off: PyTorch.
    compiled_passages: bool = True
    # Before SERVING, the compiled trunk runs once on every input length a suffix of up to this
    # many tokens takes (accelerated.trunk_width: its own up to 64, then 8 padded lengths per
    # doubling, 88 up to 512): OpenVINO prepares each input length on its first call (~14 ms
    # against ~9 ms after, on an Intel Xeon with AMX), so without it a cache miss of a length not
    # yet seen pays that (the miss-latency bench's prompts did), and keeps ~2.7 MiB for it. 512
    # covers every length a single view's step can take; 0: none.
    warm_lengths: int = 512
    # Use the bundle's early exit (manifest.cascade), where it has one: confident safe prompts
    # stop at a shallower layer (docs/benchmarks.md).
    cascade: bool = True
    # Longer conversations are judged in views that fit max_prompt_tokens (steerguard.views),
    # up to this many tokens in all; past it, TooLong (gRPC OUT_OF_RANGE).
    max_total_tokens: int = MAX_TOTAL_TOKENS
    window_overlap_tokens: int = OVERLAP_TOKENS
    # Read a long text's candidates again with the request probe, where the bundle has a passage
    # gate (steerguard.passages): they catch requests the passage head misses (29 against 22 of
    # 30 at a document's end, held out), at the price of judging a closing question as a lone
    # turn; off: the passage head alone.
    passage_candidates: bool = True
    # Open ClassifyStream calls (each holds a server thread, of 64, and up to
    # context + one answer window of keys and values: ~40 MB for SmolLM2 at layer 18;
    # twice that for an answer read two ways, steerguard.responses.answer_readings).
    max_streams: int = 32
    identify_language: bool = True  # name each request's language in its verdict (steerguard.language)
