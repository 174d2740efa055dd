"""How the classifier fills a step: packed prompts or one a step, chosen at start-up (schedule.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from classifier_service import schedule
from classifier_service.core import ClassifierCore, CoreConfig
from steerguard.bundle import Bundle
from steerguard.model.chat import normalise_request
from steerguard.model.host import ModelHost


@pytest.fixture(scope="module")
def host(tiny_model_dir: Path, tiny_bundle: Bundle) -> ModelHost:
    return ModelHost.load(tiny_model_dir, max_layers=tiny_bundle.probe_layer + 1)


def test_auto_takes_single_only_where_the_lone_pass_is_cheap_enough() -> None:
    cheap, dear = schedule.Timing(0.025, 0.018), schedule.Timing(0.019, 0.0067)  # 1.4x and 2.8x
    assert schedule.choose("auto", cheap, 2.0) == "single"
    assert schedule.choose("auto", dear, 2.0) == "packed"
    assert schedule.choose("auto", None, 2.0) == "packed"  # nothing compiled: nothing to time
    assert schedule.choose("packed", cheap, 2.0) == "packed"
    assert schedule.choose("single", dear, 2.0) == "single"
    prompts = schedule.sample_prompts(16)
    assert len(set(prompts)) == 16 and prompts == schedule.sample_prompts(16)


def test_the_timing_divides_a_packed_step_by_its_prompts() -> None:
    def run(rows: list[list[int]]) -> None:
        time.sleep(0.010 if len(rows) == 1 else 0.004 * len(rows))

    timing = schedule.time_paths(run, [[i] for i in range(8)])
    assert timing.lone_s == pytest.approx(0.010, abs=0.004)
    assert timing.packed_s_per_prompt == pytest.approx(0.004, abs=0.0015)
    assert 1.5 < timing.ratio < 3.5


def in_use(schedule_name: str) -> float | None:
    return REGISTRY.get_sample_value("steerguard_classifier_schedule", {"schedule": schedule_name})


def classify_at_once(core: ClassifierCore, texts: list[str]) -> list[float]:
    """Every text as its own call, all sent together (a queue forms behind the first)."""
    scores: dict[int, float] = {}

    def one(i: int) -> None:
        (verdict,) = core.classify([normalise_request(texts[i])])
        scores[i] = verdict.score

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return [scores[i] for i in range(len(texts))]


def test_one_prompt_a_step_runs_every_call_in_the_compiled_trunk(
    host: ModelHost, tiny_bundle: Bundle
) -> None:
    texts = [f"How do I plan a garden path number {i}?" for i in range(6)]
    packed = ClassifierCore(host, tiny_bundle, None, CoreConfig(backend="torch"))
    # A ratio no timing can exceed: auto must take one prompt a step.
    single = ClassifierCore(host, tiny_bundle, None, CoreConfig(warm_lengths=0, single_max_ratio=1e9))
    try:
        assert single._trunk is not None and single.schedule == "packed"  # until timed
        single.warm_up()
        assert single.schedule == "single" and single.batcher.max_batch_size == 1
        limits = single.batcher.limits  # shed by one-prompt steps, not by 512-token ones
        assert limits.max_queue_delay_steps == 0
        assert limits.max_queue_delay_jobs == CoreConfig().single_queue_delay_steps
        assert in_use("single") == 1.0 and in_use("packed") == 0.0  # what auto chose, on /metrics
        calls, passes = single._trunk.calls, single.forward_passes
        got = classify_at_once(single, texts)
        assert single.forward_passes - passes == len(texts), "one step per call"
        assert single._trunk.calls - calls == len(texts), "each in the compiled trunk"
        want = [packed.classify([normalise_request(t)])[0].score for t in texts]
        assert got == pytest.approx(want, abs=0.05)
    finally:
        packed.close()
        single.close()


def test_auto_stays_packed_where_the_lone_pass_is_dear_or_nothing_is_compiled(
    host: ModelHost, tiny_bundle: Bundle
) -> None:
    dear = ClassifierCore(host, tiny_bundle, None, CoreConfig(warm_lengths=0, single_max_ratio=0.0))
    plain = ClassifierCore(host, tiny_bundle, None, CoreConfig(backend="torch"))
    asked = ClassifierCore(host, tiny_bundle, None, CoreConfig(backend="torch", schedule="single"))
    try:
        for core in (dear, plain):
            core.warm_up()
            assert core.schedule == "packed" and core.batcher.max_batch_size == CoreConfig().max_batch_size
            limits = core.batcher.limits
            assert limits.max_queue_delay_steps == CoreConfig().max_queue_delay_steps
            assert limits.max_queue_delay_jobs == 0
            assert in_use("packed") == 1.0 and in_use("single") == 0.0
        assert asked.schedule == "single" and asked.batcher.max_batch_size == 1  # before warm-up
    finally:
        for core in (dear, plain, asked):
            core.close()
    with pytest.raises(ValueError, match="unknown schedule 'fast'"):
        ClassifierCore(host, tiny_bundle, None, CoreConfig(schedule="fast"))
