"""The steer service's engine on vLLM (``--engine vllm``): vLLM batches and decodes, we steer.

Same surface as :class:`steer_service.engine.Engine` (``submit`` a
:class:`~steer_service.jobs.Job`, iterate its handle's chunks; ``drain``,
``close``), so the gRPC API, plans and bundles do not change. vLLM runs in
this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), driven by one thread
that adds requests, calls ``LLMEngine.step()`` and turns each request's new
tokens into chunks; a cancelled or expired request is aborted in vLLM at the
next step. Steering hooks are installed once, through ``collective_rpc``, on
every layer a bundle vector or the probe touches; they read each request's
steering from a registry (:mod:`steer_service.vllm_steering`). No vLLM
source is changed. Greedy tokens equal the in-house engine's
(``scripts/vllm_steering_check.py``); sampled ones follow vLLM's sampler.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from steer_service import metrics
from steer_service.config import SteerConfig
from steer_service.detok import TextStream
from steer_service.engine import EngineStats
from steer_service.engine_base import EngineBase
from steer_service.jobs import Chunk, Job
from steer_service.vllm_steering import Registry, RowSteering, steer_rows
from steerguard.bundle import Bundle
from steerguard.errors import DeadlineExceeded, NotReady
from steerguard.logs import get_logger
from steerguard.model.host import ModelHost

log = get_logger("steer_service.vllm")


@dataclass
class _Running:
    job: Job
    steering: RowSteering
    stream: TextStream
    count: int = 0


def install_hooks(worker: Any, registry: Registry, layers: list[int]) -> int:
    """Run in vLLM's worker (``collective_rpc``): hook ``layers`` of its model."""
    from vllm.forward_context import get_forward_context

    runner = worker.model_runner
    decoder = runner.model.model.layers

    def hook_for(layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> Any:
            md = get_forward_context().attn_metadata
            md = next(iter(md.values())) if isinstance(md, dict) else md
            hidden, residual = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
            ids = list(runner.input_batch.req_ids)
            steer_rows(
                layer, hidden, residual, md.query_start_loc.tolist(), md.seq_lens.tolist(), ids, registry
            )
            return out

        return hook

    for layer in layers:
        decoder[layer].register_forward_hook(hook_for(layer))
    return len(layers)


class VllmEngine(EngineBase):
    """Steered generation on vLLM; :meth:`submit` is safe from any thread.

    The refusal head is not served here: vLLM computes logits outside the
    decoder layers these hooks reach, so a request that asks for it is refused
    (``INVALID_ARGUMENT``), and where the bundle's policy names it (the
    default), flagged prompts get the refusal vector instead, said at start-up
    and in each answer's applied steering.
    """

    supports_refusal_head = False

    def __init__(self, host: ModelHost, bundle: Bundle, config: SteerConfig, model_dir: str | Path) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # hooks need the model in this process
        from vllm import LLM

        if any(bundle.policy_names_head(c) for c in ["", *bundle.categories]):
            log.warning("the vllm engine answers the policy's refusal-head rules with the refusal vector")
            bundle = bundle.with_head_answered_by_vector()
        super().__init__(config, self._run, "steer-vllm")
        self.host, self.bundle = host, bundle
        self.stats = EngineStats()
        self._eos = sorted(host.eos_token_ids)
        self._llm = LLM(
            model=str(model_dir),
            dtype=config.vllm_dtype,
            enforce_eager=True,
            gpu_memory_utilization=config.vllm_memory_fraction,
            max_model_len=config.max_prompt_tokens + config.max_new_tokens_cap,
            max_num_seqs=config.max_batch_size,
        )
        self._engine = self._llm.llm_engine
        self._registry = Registry()
        layers = {bundle.probe_layer} | {
            layer for name in bundle.vector_names for layer in bundle.vector_layers(name)
        }
        self._llm.collective_rpc(partial(install_hooks, registry=self._registry, layers=sorted(layers)))
        self._running: dict[str, _Running] = {}

    # -- caller side ------------------------------------------------------------------

    def _in_flight(self) -> int:
        return len(self._running)  # handed to vLLM (it queues those beyond max_num_seqs itself)

    # -- engine thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._add_pending()
                self._drop_gone()
                if self._engine.has_unfinished_requests():
                    self._emit(self._engine.step())
                    self.stats.steps += 1
        except BaseException as exc:
            log.error("vllm engine loop crashed", exc_info=exc)
            raise
        finally:
            self._shutdown()

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not (self._pending or self._running):
                if self._closed or self._draining:
                    return False
                self._cond.wait()
            return not self._closed

    def _add_pending(self) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        with self._cond:
            jobs = [] if self._draining and not self._pending else list(self._pending)
            self._pending.clear()
        for job in jobs:
            s = job.sampling
            params = SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
                max_tokens=s.max_new_tokens,
                stop_token_ids=[] if self.config.ignore_eos else self._eos,
                ignore_eos=self.config.ignore_eos,
                output_kind=RequestOutputKind.DELTA,
                detokenize=False,
            )
            steering = RowSteering.build(
                self.bundle, job.steering, len(job.prompt_ids), self.host.identity.hidden_size
            )
            self._registry.put(job.handle.id, steering)
            self._running[job.handle.id] = _Running(job, steering, TextStream(self.host.decode))
            self._engine.add_request(job.handle.id, self._prompt(job), params)
            metrics.REQUESTS.labels(steering.applied.mode.value, steering.applied.vector).inc()

    @staticmethod
    def _prompt(job: Job) -> dict[str, Any]:
        """Token ids, and a prefix-cache salt per steering: a steered prompt's keys and values differ.

        vLLM shares cached blocks between requests whose prompts start alike;
        without the salt an unsteered request could reuse a steered one's
        keys and values (or the other way round). Requests steered alike
        share them still (an AUTO gate decides the same for the same prompt).
        """
        s = job.steering
        prompt: dict[str, Any] = {"prompt_token_ids": job.prompt_ids}
        if s.mode.value != "none":
            prompt["cache_salt"] = f"{s.mode.value}:{s.category}:{s.strength}"
        return prompt

    def _drop_gone(self) -> None:
        """Abort cancelled and expired requests in vLLM; end their handles."""
        now = time.monotonic()
        gone = [r for r in self._running.values() if r.job.handle.cancelled or r.job.expired(now)]
        if not gone:
            return
        self._engine.abort_request([r.job.handle.id for r in gone])
        for r in gone:
            if r.job.handle.cancelled:
                self._finish(r, Chunk("", "cancelled", len(r.job.prompt_ids), r.count, r.steering.applied))
            else:
                self._finish(r, DeadlineExceeded("deadline exceeded"))

    def _emit(self, outputs: list[Any]) -> None:
        for out in outputs:
            running = self._running.get(out.request_id)
            if running is None:
                continue
            done = out.outputs[0]
            text = ""
            for token in done.token_ids:
                if token in self._eos and not self.config.ignore_eos:
                    continue
                running.count += 1
                text += running.stream.push(token)
                metrics.TOKENS.inc()
            if out.finished:
                reason = "length" if done.finish_reason == "length" else "stop"
                tail = text + running.stream.flush()
                self._finish(
                    running,
                    Chunk(tail, reason, len(running.job.prompt_ids), running.count, running.steering.applied),
                )
            elif text:
                running.job.handle.put(Chunk(text))

    def _finish(self, running: _Running, last: Chunk | Exception) -> None:
        job_id = running.job.handle.id
        self._running.pop(job_id, None)
        self._registry.pop(job_id)
        running.job.handle.put(last)
        metrics.FINISHED.labels(last.finish_reason if isinstance(last, Chunk) else "deadline").inc()

    def _shutdown(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending), deque()
        for r in list(self._running.values()):
            self._finish(r, NotReady("the steer service is shutting down"))
        for job in pending:
            job.handle.put(NotReady("the steer service is shutting down"))
