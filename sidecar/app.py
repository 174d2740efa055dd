"""The aiohttp application: routes, health, metrics, and the process lifecycle.

gRPC channels and the upstream pool are opened on start-up (they need the
running event loop) and closed on clean-up, after in-flight requests drained.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sidecar.audit import AuditTrail
from sidecar.bundles import BundleCheck, check_categories
from sidecar.grpc_clients import ChannelSettings, ClassifierClient, SteerClient
from sidecar.metrics import Metrics
from sidecar.policy import Policy, PolicyError
from sidecar.proxy import Proxy
from sidecar.reload import LivePolicy
from sidecar.settings import SidecarSettings
from sidecar.upstream import Upstream, UpstreamSettings
from steerguard.grpc_common.heap import freeze_startup_objects
from steerguard.logs import configure_logging, get_logger

PROXY_KEY = web.AppKey("proxy", Proxy)
LIVE_KEY = web.AppKey("policy", LivePolicy)
METRICS_KEY = web.AppKey("metrics", Metrics)
READY_TTL_S = 1.0


class _Readiness:
    """``/readyz``: the classifier's health, cached briefly so probes do not hammer it.

    Readiness follows policy: a classifier outage makes the pod unready only when
    some route fails closed (its requests would all get 503). Fail-open routes keep
    serving, so the pod stays in its Service and reports itself degraded instead
    (header, body, metric): one classifier outage must not take every guarded app
    out of rotation.
    """

    def __init__(self, live: LivePolicy, metrics: Metrics) -> None:
        self.live = live
        self.metrics = metrics
        self.state = "unreachable"
        self.checked_at = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if now - self.checked_at > READY_TTL_S:
            self.state = await request.app[PROXY_KEY].classifier.ready(timeout=0.5)
            self.checked_at = now
        reachable = self.state == "reachable"
        # A refused token is a misconfiguration, not an outage: never ready, whatever the policy.
        ready = reachable or (self.state == "unreachable" and not self.live.current.fails_closed)
        bundles = request.app[PROXY_KEY].bundles
        ready = ready and not bundles.refusing  # --bundle-mismatch refuse: out of the Service
        self.metrics.degraded.set(0 if reachable else 1)
        body = {"ready": ready, "classifier": self.state, "degraded": not reachable, "bundles": bundles.state}
        headers = {} if reachable else {"x-steerguard-degraded": f"classifier-{self.state}"}
        return web.json_response(body, status=200 if ready else 503, headers=headers)


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR with a traceback that quotes the request's
    bytes. A malformed request is the client's error, answered 400: counted, and logged as one
    line naming the error's type, never its text."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.log = get_logger("steerguard.sidecar")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.metrics.bad_requests.labels("400").inc()
        self.log.info("malformed_http_request", status=400, error=type(exc).__name__)
        return False


def _channel(settings: SidecarSettings, address: str) -> ChannelSettings:
    return ChannelSettings(
        address=address,
        token=settings.auth_token,
        tls_ca=settings.tls_ca,
        tls_server_name=settings.tls_server_name,
        keepalive_s=settings.grpc_keepalive_s,
        retry_attempts=settings.grpc_retries,
    )


WATCH_KEY = web.AppKey("policy-watch", asyncio.Task[None])
BUNDLES_WATCH_KEY = web.AppKey("bundle-watch", asyncio.Task[None])


def _lifecycle(app: web.Application, settings: SidecarSettings, metrics: Metrics) -> None:
    """Open the clients and the upstream pool on start-up (they need the loop), and watch the
    policy file; close them on clean-up."""
    quiet = _MalformedRequests(metrics)

    async def start(app: web.Application) -> None:
        logging.getLogger("aiohttp.server").addFilter(quiet)
        upstream = Upstream(
            UpstreamSettings(
                base_url=settings.upstream,
                connect_timeout_s=settings.upstream_connect_timeout_s,
                headers_timeout_s=settings.upstream_timeout_s,
                read_timeout_s=settings.upstream_read_timeout_s,
                pool_size=settings.upstream_pool_size,
            )
        )
        classifier = ClassifierClient(_channel(settings, settings.classifier))
        steer = SteerClient(_channel(settings, settings.steer))
        audit = AuditTrail(settings.audit, metrics)
        audit.start()
        bundles = BundleCheck(classifier, steer, settings.bundle_mismatch, metrics, settings.bundle_check_s)
        app[PROXY_KEY] = Proxy(settings, classifier, steer, upstream, metrics, audit, bundles)
        live = app[LIVE_KEY]
        live.validate = lambda policy: check_categories(policy, bundles.categories, bundles.ids[0])
        await bundles.check(
            timeout=1.0
        )  # a policy rule the bundle cannot fire stops start-up, when it can be told
        live.validate(live.current.policy)
        app[WATCH_KEY] = asyncio.create_task(app[LIVE_KEY].watch(settings.policy_poll_s))
        app[BUNDLES_WATCH_KEY] = asyncio.create_task(bundles.watch())

    async def stop(app: web.Application) -> None:
        logging.getLogger("aiohttp.server").removeFilter(quiet)
        for key in (WATCH_KEY, BUNDLES_WATCH_KEY):
            task = app.get(key)
            if task is not None:
                task.cancel()
        proxy = app.get(PROXY_KEY)
        if proxy is not None:
            await proxy.upstream.close()
            await proxy.classifier.close()
            await proxy.steer.close()
            await proxy.outcomes.audit.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def create_app(settings: SidecarSettings, policy: Policy) -> web.Application:
    """Build the application; clients are connected when it starts."""
    metrics = Metrics()
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[METRICS_KEY] = metrics
    live = app[LIVE_KEY] = LivePolicy(policy, settings.policy_file, metrics)
    _lifecycle(app, settings, metrics)
    site = app[METRICS_SITE_KEY] = MetricsSite(metrics, settings.host, settings.metrics_port)
    app.on_startup.append(site.start)
    app.on_cleanup.append(site.stop)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", _Readiness(live, metrics).handle, allow_head=True)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        """Every spelling of a chat path reaches its route (sidecar.routing); the rest is pass-through.

        The policy version is read once here: the request finishes on it whatever reloads meanwhile.
        """
        proxy, version = request.app[PROXY_KEY], live.current
        found = version.router.match(request.raw_path)
        if found is None:
            return await proxy.passthrough(request, version)
        if request.method not in found.route.methods:
            return proxy.wrong_method(request, found.route)
        return await proxy.chat(request, found.route, found.adapter, version)

    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


class MetricsSite:
    """``/metrics`` on a listener of its own (``--metrics-port``), never on the public port: the
    series name routes, failures and categories, which a chatbot's users need not see."""

    def __init__(self, metrics: Metrics, host: str, port: int | None) -> None:
        self.metrics, self.host, self.wanted = metrics, host, port
        self.port = 0  # bound port once started (0: off)
        self._runner: web.AppRunner | None = None

    async def start(self, _app: web.Application) -> None:
        if self.wanted is None:
            return

        async def handler(request: web.Request) -> web.Response:
            return web.Response(
                body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
            )

        side = web.Application()
        side.router.add_get("/metrics", handler)
        self._runner = web.AppRunner(side, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.wanted, reuse_address=True).start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.wanted

    async def stop(self, _app: web.Application) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


METRICS_SITE_KEY = web.AppKey("metrics-site", MetricsSite)


async def start_site(settings: SidecarSettings, policy: Policy) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the bound port (useful with port 0).

    The metrics listener's bound port is ``runner.app[METRICS_SITE_KEY].port`` (0 when off).
    """
    # keepalive_timeout also bounds a new connection that never completes its headers
    # (aiohttp arms it at connection start): a slow-header client cannot hold a socket forever.
    runner = web.AppRunner(
        create_app(settings, policy),
        access_log=None,
        shutdown_timeout=settings.grace_s,
        handle_signals=False,
        keepalive_timeout=settings.idle_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048, reuse_address=True)
    await site.start()
    addresses = runner.addresses
    port = int(addresses[0][1]) if addresses else settings.port
    return runner, port


async def _serve(settings: SidecarSettings, policy: Policy) -> int:
    log = get_logger("steerguard.sidecar")
    try:
        runner, port = await start_site(settings, policy)
    except PolicyError as exc:
        log.error("cannot start the sidecar", reason=exc.reason)
        print(f"steerguard serve sidecar: {exc.reason}", file=sys.stderr)
        return 2
    frozen = freeze_startup_objects()  # its ~50,000 start-up objects: 10 ms per full collection
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, runner.app[LIVE_KEY].reload_now)
    log.info(
        "listening",
        host=settings.host,
        port=port,
        upstream=settings.upstream,
        classifier=settings.classifier,
        steer=settings.steer,
        shadow=policy.shadow,
        routes=[r.path for r in policy.routes],
        frozen_objects=frozen,
    )
    ready = {
        "event": "ready",
        "service": "sidecar",
        "port": port,
        "metrics_port": runner.app[METRICS_SITE_KEY].port,
    }
    print(json.dumps(ready), flush=True)
    await stop.wait()
    log.info("stopping", grace_s=settings.grace_s)
    await runner.cleanup()
    log.info("stopped")
    return 0


def serve(settings: SidecarSettings, policy: Policy) -> int:
    """Run until SIGTERM/SIGINT, then drain for up to ``grace_s``."""
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(_serve(settings, policy))
