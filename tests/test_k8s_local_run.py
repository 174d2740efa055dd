"""Run the rendered dev overlay's containers on this machine, the way the kubelet would.

Each container's command line is what Kubernetes would run: the manifest's
``command``/``args``, or else the Dockerfile's ENTRYPOINT/CMD, with ``$(VAR)``
expanded; its environment is the image's ENV plus the manifest's ``env`` and
``envFrom`` (ConfigMaps and Secrets resolved from the rendered objects). Then
the container's own probes are run against it. Only what a single machine
cannot have is translated:

- in-cluster addresses (``classifier:50051``, ``redis:6379``) and the
  containers' own ports become ``127.0.0.1`` and free ports, and ``0.0.0.0``
  becomes ``127.0.0.1``;
- mounted volumes become directories (Secret and ConfigMap files written out);
  the model cache emptyDir is the developer's steerguard cache, so the model is
  dequantised once, not per run;
- the read-only root filesystem is imitated: image paths that no volume covers,
  and HOME, are placed under a regular *file*, so any write there fails (even
  as root) as it would in the pod.

So a flag the service does not read, a port that disagrees with a probe, a
missing mount, a token the services and the sidecar do not share, or a write
outside the mounted paths fails here rather than in a cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import k8s_manifests as km

from devstack import console_script
from devstack.net import free_port

Obj = dict[str, Any]
MODEL_SERVICES = ("classifier", "steer")
# The longest a model service may take to become ready here (2 shared cores, cold cache).
MAX_STARTUP_S = 900.0
ADDRESS = re.compile(
    r"(?<![\w.-])([a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*):(\d+)"
)


def _need(services: tuple[str, ...]) -> None:
    """Skip (locally) while a command or tool the manifests use is not there yet."""
    if km.kubectl() is None:
        reason = "kubectl (with built-in kustomize) not found: apt-get install -y kubectl"
        if os.environ.get("CI"):
            pytest.fail(reason + " - required in CI")
        pytest.skip(reason)
    missing = [s for s in services if s not in serve_commands()]
    if missing:
        pytest.skip(
            f"'steerguard serve {missing[0]}' is not registered yet "
            f"(missing: {', '.join(missing)}; services are being built in parallel)"
        )
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/setup.sh installs redis-server)")


def serve_commands() -> set[str]:
    """The ``steerguard serve X`` commands registered so far."""
    import argparse

    from steerguard.cli import build_parser

    def sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return set(sub(sub(build_parser())["serve"]))


@dataclass
class Local:
    """One container, translated to run here."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # the container's port names and numbers -> local ports
    container: Obj
    grace_s: float
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    output: Any = field(default=None, repr=False)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class LocalCluster:
    """The rendered objects of one overlay, their containers run as local processes."""

    def __init__(self, objects: list[Obj], tmp: Path, cache_dir: Path) -> None:
        self.objects = objects
        self.tmp = tmp
        self.cache_dir = cache_dir
        self.dockerfile = km.load_dockerfile()
        self.image_env = self.dockerfile.final.env()
        self.local_ports: dict[tuple[str, int], int] = {}
        # A regular file: no directory can be created under it, so writes to
        # paths below it fail for any user, like a read-only root filesystem.
        self.read_only_root = tmp / "read-only-root"
        self.read_only_root.write_text("stands for the container's read-only root filesystem\n")
        self.running: list[Local] = []

    # --- translation -----------------------------------------------------------------

    def port(self, workload: Obj, container_port: int) -> int:
        key = (workload["metadata"]["name"], container_port)
        if key not in self.local_ports:
            self.local_ports[key] = free_port()
        return self.local_ports[key]

    def _addresses(self, text: str, workload: Obj) -> str:
        ns = workload["metadata"].get("namespace", "default")

        def sub(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            if host in {"127.0.0.1", "localhost"}:
                return f"127.0.0.1:{self.port(workload, port)}"
            found = km.resolve_address(self.objects, match.group(0), ns)
            if found is None:
                return match.group(0)
            _, target, container_port = found
            return f"127.0.0.1:{self.port(target, container_port)}"

        return ADDRESS.sub(sub, text)

    def _paths(self, text: str, mounts: dict[str, Path], image_path: bool) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if text == mount_path or text.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + text[len(mount_path) :]
        if image_path and text.startswith("/") and not text.startswith(("/usr", "/opt", "/bin")):
            return str(self.read_only_root) + text
        return text

    def _own_ports(self, text: str, own: dict[int, int]) -> str:
        for container_port, local in own.items():
            text = re.sub(rf"(?<![\w.:]){container_port}(?![\w.])", str(local), text)
        return text

    def _mounts(self, workload: Obj, container: Obj) -> dict[str, Path]:
        volumes = {v["name"]: v for v in km.pod_spec(workload).get("volumes", [])}
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            path = self.tmp / "volumes" / workload["metadata"]["name"] / mount["name"]
            if mount["mountPath"] == self.image_env.get("STEERGUARD_CACHE_DIR"):
                path = self.cache_dir
            path.mkdir(parents=True, exist_ok=True)
            for kind, key, name_key in (
                ("Secret", "secret", "secretName"),
                ("ConfigMap", "configMap", "name"),
            ):
                if key not in volume:
                    continue
                source = volume[key]
                obj = km.find(self.objects, kind, source[name_key])
                name = obj["metadata"]["name"]
                data = {**obj.get("data", {}), **obj.get("stringData", {})}
                items = {i["key"]: i["path"] for i in source.get("items", [])} or {k: k for k in data}
                for data_key, file_name in items.items():
                    (path / file_name).write_text(km.lookup(self.objects, kind, name, data_key))
            out[mount["mountPath"]] = path
        return out

    def plan(self, workload: Obj, container: Obj) -> Local:
        """The local command line and environment of one container."""
        steerguard_image = "steerguard" in container["image"].rsplit(":", 1)[0]
        env = km.container_env(self.objects, container)
        command = container.get("command") or (self.dockerfile.entrypoint() if steerguard_image else [])
        args = container.get("args")
        if args is None:
            args = [] if container.get("command") or not steerguard_image else self.dockerfile.cmd()
        argv = [km.expand(a, env) for a in [*command, *args]]

        mounts = self._mounts(workload, container)
        own = {
            p["containerPort"]: self.port(workload, p["containerPort"]) for p in container.get("ports", [])
        }

        def local(text: str, *, image_path: bool = False) -> str:
            text = self._paths(self._addresses(text, workload), mounts, image_path)
            return "127.0.0.1" if text == "0.0.0.0" else text

        # PYTHONPATH: this checkout's code, as `pip install .` puts it in the image (an
        # older editable install may not know packages added since).
        local_env: dict[str, str] = {
            "PATH": os.environ["PATH"],
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(km.ROOT),
        }
        if steerguard_image:
            for key, value in self.image_env.items():
                if key != "PATH":
                    local_env[key] = local(value, image_path=True)
            local_env["HOME"] = str(self.read_only_root / "home" / "steerguard")
        for key, value in env.items():
            value = local(value)
            if key.endswith("PORT"):
                value = self._own_ports(value, own)
            local_env[key] = value
        argv = [self._own_ports(local(a), own) for a in argv]
        argv[0] = self.executable(argv[0])

        ports = dict(own)
        names = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        local_ports = {str(k): v for k, v in ports.items()} | {n: own[c] for n, c in names.items()}
        grace = float(km.pod_spec(workload).get("terminationGracePeriodSeconds", 30))
        name = f"{workload['metadata']['name']}-{container['name']}"
        return Local(name, argv, local_env, local_ports, container, grace, self.tmp / "logs" / f"{name}.log")

    @staticmethod
    def executable(name: str) -> str:
        if name in {"python", "python3"}:
            return sys.executable  # the image's venv python; here, the test's interpreter
        found = console_script(name)
        assert found, f"{name} is not installed here"
        return found

    # --- running ---------------------------------------------------------------------

    def start(self, c: Local) -> Local:
        c.log.parent.mkdir(parents=True, exist_ok=True)
        c.output = c.log.open("wb")
        c.proc = subprocess.Popen(
            c.argv, env=c.env, stdout=c.output, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True
        )
        self.running.append(c)
        return c

    def probe(self, c: Local, probe: Obj) -> bool:
        """One attempt of a Kubernetes probe against the local process."""
        timeout = float(probe.get("timeoutSeconds", 1))
        if "grpc" in probe:
            import grpc
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            port = c.ports[str(probe["grpc"]["port"])]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                        timeout=timeout,
                    )
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://127.0.0.1:{c.ports[str(get['port'])]}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=max(timeout, 2)) as reply:
                    return 200 <= reply.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            try:
                socket.create_connection(
                    ("127.0.0.1", c.ports[str(probe["tcpSocket"]["port"])]), timeout
                ).close()
                return True
            except OSError:
                return False
        if "exec" in probe:
            owner = next(w for w in self.workloads() if c.container in self.all_containers(w))
            own = {
                p["containerPort"]: self.port(owner, p["containerPort"]) for p in c.container.get("ports", [])
            }
            argv = [self._own_ports(self._addresses(a, owner), own) for a in probe["exec"]["command"]]
            argv[0] = self.executable(argv[0])
            try:
                done = subprocess.run(
                    argv, env=c.env, capture_output=True, timeout=max(timeout, 5), check=False
                )
            except subprocess.TimeoutExpired:
                return False
            return done.returncode == 0
        raise AssertionError(f"unknown probe {probe}")

    def wait_for(self, c: Local, kind: str, budget_s: float | None = None) -> None:
        """Retry probe ``kind`` until it passes, within its Kubernetes budget (or ``budget_s``)."""
        probe = c.container.get(kind)
        if probe is None:
            return
        if budget_s is None:
            budget_s = float(probe.get("initialDelaySeconds", 0)) + float(
                probe.get("periodSeconds", 10)
            ) * float(probe.get("failureThreshold", 3))
        deadline = time.monotonic() + min(budget_s, MAX_STARTUP_S)
        while True:
            assert c.proc is not None
            if c.proc.poll() is not None:
                pytest.fail(
                    f"{c.name} exited with {c.proc.returncode} before its {kind} passed:\n{c.log_tail()}"
                )
            if self.probe(c, probe):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{c.name}: {kind} still failing after {budget_s:.0f}s:\n{c.log_tail()}")
            time.sleep(0.5)

    def stop(self, c: Local) -> int:
        """SIGTERM, as the kubelet sends it; the process must be gone within the grace period."""
        assert c.proc is not None
        c.proc.send_signal(signal.SIGTERM)
        try:
            code = c.proc.wait(timeout=c.grace_s)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()
            pytest.fail(
                f"{c.name} ignored SIGTERM for terminationGracePeriodSeconds={c.grace_s}:\n{c.log_tail()}"
            )
        return code

    def cleanup(self) -> None:
        for c in self.running:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
            if c.output is not None:
                c.output.close()

    # --- lookups --------------------------------------------------------------------------

    def workloads(self) -> list[Obj]:
        return [o for o in self.objects if o.get("kind") in km.WORKLOAD_KINDS]

    @staticmethod
    def all_containers(workload: Obj) -> list[Obj]:
        spec = km.pod_spec(workload)
        return [*spec.get("initContainers", []), *spec.get("containers", [])]

    def container(self, workload_name: str, container_name: str) -> tuple[Obj, Obj]:
        for w in self.workloads():
            if w["metadata"]["name"] == workload_name:
                for c in self.all_containers(w):
                    if c["name"] == container_name:
                        return w, c
        raise KeyError(f"{workload_name}/{container_name}")

    def up(self, workload_name: str, container_name: str) -> Local:
        workload, container = self.container(workload_name, container_name)
        return self.start(self.plan(workload, container))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if km.kubectl() is None:
        pytest.skip("kubectl not found")
    cache = Path(os.environ.get("STEERGUARD_CACHE_DIR") or Path.home() / ".cache" / "steerguard")
    local = LocalCluster(km.render("dev"), tmp_path, cache)
    try:
        yield local
    finally:
        local.cleanup()


def _chat(port: int, text: str) -> tuple[int, Obj]:
    body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=180) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


def test_redis_and_the_chatbot_pod_start_from_their_manifests(cluster: LocalCluster) -> None:
    """No model needed: Redis, the example app and its sidecar, probes, passthrough, SIGTERM."""
    _need(("sidecar",))
    redis = cluster.up("redis", "redis")
    cluster.wait_for(redis, "readinessProbe", budget_s=30)
    cluster.wait_for(redis, "livenessProbe", budget_s=10)

    # Native sidecar order: the sidecar passes its startupProbe before the app starts.
    sidecar = cluster.up("chatbot", "steerguard-sidecar")
    cluster.wait_for(sidecar, "startupProbe")
    app = cluster.up("chatbot", "chatbot")
    cluster.wait_for(app, "readinessProbe", budget_s=30)
    cluster.wait_for(app, "livenessProbe")
    cluster.wait_for(sidecar, "livenessProbe")
    # Not ready without a classifier: the Service must not send it traffic.
    assert not cluster.probe(sidecar, sidecar.container["readinessProbe"])

    # A path outside the policy's routes goes through to the app untouched.
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.ports['sidecar-http']}/status", timeout=10) as r:
        assert r.status == 200 and r.headers.get("x-demo-upstream") == "1"

    # Kubernetes stops the app first, then the native sidecar; both drain and exit 0.
    for c in (app, sidecar, redis):
        code = cluster.stop(c)
        assert code == 0, f"{c.name} exited with {code} on SIGTERM:\n{c.log_tail()}"


@pytest.mark.integration
def test_whole_stack_starts_from_the_manifests(cluster: LocalCluster) -> None:
    """Classifier and steer load the real model; the sidecar becomes ready and guards a chat."""
    _need(("classifier", "steer", "sidecar"))
    from steerguard.bundle import DEFAULT_BUNDLE_DIR

    if not (DEFAULT_BUNDLE_DIR / "manifest.json").is_file():
        pytest.skip("no default bundle committed yet (run 'steerguard calibrate'); the services need one")
    redis = cluster.up("redis", "redis")
    cluster.wait_for(redis, "readinessProbe", budget_s=30)
    services = [cluster.up(s, s) for s in MODEL_SERVICES]
    for c in services:
        cluster.wait_for(c, "startupProbe")
        cluster.wait_for(c, "readinessProbe")
        cluster.wait_for(c, "livenessProbe")
    sidecar = cluster.up("chatbot", "steerguard-sidecar")
    cluster.wait_for(sidecar, "startupProbe")
    app = cluster.up("chatbot", "chatbot")
    cluster.wait_for(app, "readinessProbe", budget_s=30)
    cluster.wait_for(sidecar, "readinessProbe", budget_s=30)

    # Through the sidecar: classified (with the shared bearer token), then answered.
    status, body = _chat(sidecar.ports["sidecar-http"], "What is the capital of France?")
    assert status == 200, (
        f"{body}\n--- sidecar:\n{sidecar.log_tail()}\n--- classifier:\n{services[0].log_tail()}"
    )
    assert body.get("choices"), body

    # The verdict was cached in Redis: the classifier's URL and password are the ones Redis serves.
    keys = ""
    for _ in range(20):
        done = subprocess.run(
            [cluster.executable("redis-cli"), "-p", str(redis.ports["redis"]), "dbsize"],
            env=redis.env,  # REDISCLI_AUTH from the manifest's Secret
            capture_output=True,
            text=True,
            check=False,
        )
        keys = done.stdout.strip()
        if keys.isdigit() and int(keys) > 0:
            break
        time.sleep(0.5)
    assert keys.isdigit() and int(keys) > 0, f"nothing cached in Redis ({keys}):\n{services[0].log_tail()}"

    # Drain: each process exits cleanly within its pod's terminationGracePeriodSeconds.
    for c in (app, sidecar, *services, redis):
        code = cluster.stop(c)
        assert code == 0, f"{c.name} exited with {code} on SIGTERM:\n{c.log_tail()}"
