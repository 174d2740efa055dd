"""Build the classifier from parsed flags and run it until SIGTERM (heavy imports live here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from classifier_service import accelerated
from classifier_service.cache import VerdictCache, make_cache
from classifier_service.core import ClassifierCore, CoreConfig
from classifier_service.metrics import CACHE_ERRORS
from classifier_service.server import create_server
from classifier_service.servicer import ClassifierServicer
from steerguard.bundle import DEFAULT_BUNDLE_DIR, Bundle
from steerguard.errors import InvalidInput, SteerguardError
from steerguard.grpc_common.addresses import host_port
from steerguard.grpc_common.heap import freeze_startup_objects
from steerguard.grpc_common.metrics import start_metrics_server
from steerguard.grpc_common.reload import BundleReload
from steerguard.grpc_common.server import ServerOptions
from steerguard.grpc_common.shutdown import serve_until_signal
from steerguard.logs import get_logger
from steerguard.model.host import ModelHost
from steerguard.model.paths import cache_dir

log = get_logger("steerguard.classifier")


def read_secret(path: str | None) -> bytes | None:
    """A secret file's bytes (surrounding whitespace dropped); None without a file."""
    if not path:
        return None
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read secret file {path}: {exc.strerror}") from None
    if not secret:
        raise InvalidInput(f"secret file {path} is empty")
    return secret


def build_cache(args: argparse.Namespace) -> VerdictCache:
    backend = "redis" if args.redis_url else "memory"
    return make_cache(
        args.redis_url,
        ttl_seconds=args.cache_ttl,
        max_entries=args.cache_size,
        redis_timeout_seconds=args.redis_timeout_ms / 1000.0,
        redis_retry_seconds=args.redis_retry_seconds,
        on_error=lambda op: CACHE_ERRORS.labels(backend=backend, op=op).inc(),
    )


def load_core(args: argparse.Namespace) -> ClassifierCore:
    """Bundle first (it says how many layers to load), then the truncated model."""
    bundle = Bundle.load(args.bundle)
    host = ModelHost.load(
        args.model, max_layers=bundle.classifier_layers, threads=args.threads, dtype=args.dtype
    )
    bundle.verify_model(host.identity)
    config = CoreConfig(
        max_prompt_tokens=args.max_prompt_tokens,
        max_batch_size=args.max_batch_size,
        schedule=args.schedule,
        max_batch_wait_ms=args.max_batch_wait_ms,
        batch_wait_fraction=args.batch_wait_fraction,
        max_queue=args.max_queue,
        max_step_tokens=args.max_step_tokens,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_delay_steps=args.max_queue_delay_steps,
        single_queue_delay_steps=args.single_queue_delay_steps,
        overload_wait_margin=args.overload_wait_margin,
        cache_prefix=args.cache_prefix,
        cache_key_secret=read_secret(args.cache_key_secret_file),
        log_prompts=args.log_prompts,
        max_streams=args.max_streams,
        cascade=not args.no_cascade,
        passage_candidates=not args.no_passage_candidates,
        backend=args.backend,
        compiled_passages=not args.no_compiled_passages,
        warm_lengths=args.warm_lengths,
    )
    core = ClassifierCore(host, bundle, build_cache(args), config)
    log.info(
        "classifier loaded",
        bundle_id=bundle.bundle_id,
        model=host.identity.name,
        probe_layer=bundle.probe_layer,
        cascade_layer=bundle.cascade.layer if bundle.cascade and config.cascade else None,
        loaded_layers=host.loaded_layers,
        dtype=str(host.model.dtype).removeprefix("torch."),
        backend=core.backend,
        passages=core.passage_engine,
        model_layers=host.identity.num_layers,
        cache="redis" if args.redis_url else "memory",
    )
    return core


def prepare(args: argparse.Namespace) -> int:
    """``--prepare-only``: what a start makes once (the converted model, the exported graphs),
    made into the cache now; nothing is served or warmed."""
    try:
        core = load_core(args)
    except SteerguardError as exc:
        log.error("cannot prepare the classifier", reason=exc.reason)
        return 1
    core.close()
    graphs = accelerated.prepare_auto(core.host, core.bundle.probe_layer) if args.backend == "auto" else []
    where = str(cache_dir())
    log.info(
        "classifier prepared", cache=where, backend=core.backend, passages=core.passage_engine, graphs=graphs
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    if args.prepare_only:
        return prepare(args)
    try:
        options = ServerOptions.from_args(args)
        servicer = ClassifierServicer(max_batch_requests=args.max_batch_requests)
        server = create_server(host_port(args.host, args.port), servicer, options).start()
    except SteerguardError as exc:
        log.error("cannot start the classifier", reason=exc.reason)
        return 2
    start_metrics_server(args.metrics_port)
    log.info("classifier listening (not serving until loaded)", port=server.port, tls=bool(options.tls_cert))
    try:
        core = load_core(args)
        core.warm_up()
    except SteerguardError as exc:
        log.error("cannot load the classifier", reason=exc.reason)
        server.stop(0)
        return 1
    servicer.attach(core)
    frozen = freeze_startup_objects()
    server.set_serving()
    log.info("classifier serving", port=server.port, frozen_objects=frozen)
    folder = core.bundle.path or DEFAULT_BUNDLE_DIR

    def make(bundle: Bundle) -> ClassifierCore:
        new = ClassifierCore(core.host, bundle, core.cache, core.config)
        new.warm_up()
        return new

    def swap(new: ClassifierCore) -> str | None:
        old = servicer.attach(new)  # closes once the calls still on it end
        return old.bundle_id if old else None

    reload = BundleReload(folder, core.host, make, swap)

    def stop() -> None:
        if servicer.core is not None:
            servicer.core.close()

    serve_until_signal(
        server, options.grace_seconds, on_stop=stop, on_reload=reload.check, reload_every_s=args.bundle_poll_s
    )
    return 0
