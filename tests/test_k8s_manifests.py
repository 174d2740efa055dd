"""The rendered Kubernetes manifests: they build, validate, and keep the invariants an SRE relies on.

Every overlay is rendered with the real ``kubectl kustomize`` and checked as
the API server would see it: against the pinned schemas (strict), then
against the rules of this deployment: probes, resources and a locked-down
security context on every container; Services that select existing pods and
target ports those pods expose; headless Services for gRPC; NetworkPolicies
that let only sidecars reach the services and only the classifier reach
Redis; the environment each container gets is made of flags its command
reads; the sidecar sits in the example pod as a native sidecar.

Rendering all overlays takes well under a second; the module renders each once.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import k8s_manifests as km

Obj = dict[str, Any]

GRPC_SERVICES = ("classifier", "steer")
SERVICES = (*GRPC_SERVICES, "sidecar")
# Variables a steerguard container may get that are not flags (read by the app directly).
NON_FLAG_ENV = {"STEERGUARD_CACHE_DIR"}
# The longest cold start (dequantising the model on a slow node) the startupProbe must allow.
MIN_STARTUP_SECONDS = 300
SIDECAR_LABEL = ("steerguard.io/sidecar", "true")
GUARDED_NAMESPACE_LABEL = ("steerguard.io/guarded", "true")


def _need_kubectl() -> None:
    if km.kubectl() is None:
        reason = "kubectl (with built-in kustomize) not found: apt-get install -y kubectl"
        if os.environ.get("CI"):
            pytest.fail(reason + " - required in CI")
        pytest.skip(reason)


@functools.cache
def _render(overlay: str) -> list[Obj]:
    return km.render(overlay)


@pytest.fixture(params=km.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    _need_kubectl()
    name: str = request.param
    return name


@pytest.fixture
def objects(overlay: str) -> list[Obj]:
    return _render(overlay)


# --- helpers ----------------------------------------------------------------------


def serve_target(c: km.ContainerRef) -> str | None:
    """``classifier``/``steer``/``sidecar`` when the container runs ``steerguard serve X``."""
    argv = [*c.container.get("command", []), *c.container.get("args", [])]
    if "serve" in argv:
        i = argv.index("serve")
        if i + 1 < len(argv) and argv[i + 1] in SERVICES:
            return argv[i + 1]
    return None


def steerguard_containers(objects: list[Obj]) -> Iterator[tuple[str, km.ContainerRef]]:
    for c in km.serving_containers(objects):
        target = serve_target(c)
        if target:
            yield target, c


def the(objects: list[Obj], service: str) -> km.ContainerRef:
    found = [c for target, c in steerguard_containers(objects) if target == service]
    assert len(found) == 1, f"expected exactly one container running 'steerguard serve {service}'"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o.get("kind") in km.WORKLOAD_KINDS]


def namespace(obj: Obj) -> str:
    ns: str = obj["metadata"].get("namespace", "default")
    return ns


def effective(c: km.ContainerRef, key: str) -> Any:
    """A securityContext field: the container's value wins over the pod's."""
    own = c.container.get("securityContext", {})
    if key in own:
        return own[key]
    return c.pod.get("securityContext", {}).get(key)


def serve_parsers() -> dict[str, argparse.ArgumentParser]:
    """The ``steerguard serve X`` parsers registered so far (services are being built in parallel)."""
    from steerguard.cli import build_parser

    def sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    return sub(sub(build_parser())["serve"])


def preStop_seconds(container: Obj) -> float:
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    if command[:1] == ["sleep"]:
        return float(command[1])
    return 0.0


def port_of(probe: Obj) -> Any:
    for kind in ("grpc", "httpGet", "tcpSocket"):
        if kind in probe:
            return probe[kind]["port"]
    return None


def probe_budget(probe: Obj) -> float:
    """Seconds a probe may keep failing before the kubelet acts."""
    return float(probe.get("initialDelaySeconds", 0)) + float(probe.get("periodSeconds", 10)) * float(
        probe.get("failureThreshold", 3)
    )


def peers_allowed(objects: list[Obj], workload: Obj, port: int) -> list[Obj] | None:
    """NetworkPolicy peers that may reach ``port`` of the workload's pods; None means anyone."""
    labels = km.pod_labels(workload)
    policies = [
        p
        for p in km.of_kind(objects, "NetworkPolicy")
        if namespace(p) == namespace(workload)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and km.label_selector_matches(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return None
    named = km.container_ports(km.pod_spec(workload))
    peers: list[Obj] = []
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(named.get(str(p.get("port"))) == port for p in ports):
                continue
            if not rule.get("from"):
                return None
            peers.extend(rule["from"])
    return peers


def workload_selected(objects: list[Obj], selector: dict[str, str], ns: str) -> list[Obj]:
    return [w for w in workloads(objects) if namespace(w) == ns and km.selects(selector, km.pod_labels(w))]


def service_for(objects: list[Obj], address: str, ns: str) -> tuple[Obj, Obj, int]:
    """The Service, backing workload and container port behind ``host:port`` (short or .svc name)."""
    found = km.resolve_address(objects, address, ns)
    assert found, f"no Service of the manifests answers {address} (from namespace {ns})"
    return found


# --- build and schema -------------------------------------------------------------


def test_base_and_overlays_render() -> None:
    _need_kubectl()
    for target in (km.K8S_DIR / "base", *(km.K8S_DIR / "overlays" / o for o in km.OVERLAYS)):
        objects = km.render(target)
        assert objects, f"{target} rendered nothing"
        names = [(o["kind"], o["metadata"]["name"], namespace(o)) for o in objects]
        assert len(names) == len(set(names)), f"{target}: duplicate objects"


@pytest.mark.parametrize("version", km.K8S_VERSIONS)
def test_schema_valid(objects: list[Obj], version: str) -> None:
    assert km.schema_errors(objects, version) == []


# --- every container ----------------------------------------------------------------


def test_every_container_has_probes(objects: list[Obj]) -> None:
    for c in km.serving_containers(objects):
        assert "readinessProbe" in c.container, f"{c.name}: readinessProbe"
        assert "livenessProbe" in c.container, f"{c.name}: livenessProbe"


def test_grpc_services_use_native_grpc_probes(objects: list[Obj]) -> None:
    for service in GRPC_SERVICES:
        c = the(objects, service)
        grpc_port = km.container_ports(c.pod)["grpc"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.container.get(kind)
            assert probe and "grpc" in probe, f"{c.name}: {kind} must be a native gRPC probe (grpc.health.v1)"
            assert probe["grpc"]["port"] == grpc_port, f"{c.name}: {kind} on the gRPC port"
        startup = probe_budget(c.container["startupProbe"])
        assert startup >= MIN_STARTUP_SECONDS, f"{c.name}: startupProbe allows {startup}s to load the model"
        assert probe_budget(c.container["livenessProbe"]) >= 30, f"{c.name}: liveness too trigger-happy"


def test_sidecar_uses_http_probes(objects: list[Obj]) -> None:
    c = the(objects, "sidecar")
    port = km.container_ports(c.pod)["sidecar-http"]
    paths = {
        kind: c.container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths["readinessProbe"]["path"] == "/readyz"
    assert paths["livenessProbe"]["path"] == "/healthz"
    assert all(p["port"] == port for p in paths.values())


def test_every_container_has_requests_and_limits(objects: list[Obj]) -> None:
    for c in km.containers(objects):
        res = c.container.get("resources", {})
        requests, limits = res.get("requests", {}), res.get("limits", {})
        for key in ("cpu", "memory"):
            assert key in requests and key in limits, f"{c.name}: resources.requests/limits.{key}"
            assert km.quantity(requests[key]) <= km.quantity(limits[key]), f"{c.name}: {key} request > limit"
        if "nvidia.com/gpu" in limits:
            assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]


def test_every_container_is_locked_down(objects: list[Obj]) -> None:
    for c in km.containers(objects):
        assert effective(c, "runAsNonRoot") is True, f"{c.name}: runAsNonRoot"
        assert effective(c, "runAsUser") not in (0, None), f"{c.name}: a numeric non-root runAsUser"
        sc = c.container.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, f"{c.name}: allowPrivilegeEscalation: false"
        assert sc.get("readOnlyRootFilesystem") is True, f"{c.name}: readOnlyRootFilesystem: true"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c.name}: drop ALL capabilities"
        assert not sc.get("capabilities", {}).get("add"), f"{c.name}: adds capabilities"
        assert not sc.get("privileged"), f"{c.name}: privileged"
        assert (effective(c, "seccompProfile") or {}).get("type") == "RuntimeDefault", f"{c.name}: seccomp"
    for w in workloads(objects):
        spec = km.pod_spec(w)
        assert spec.get("automountServiceAccountToken") is False, f"{km.ref(w)}: no API token needed"
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{km.ref(w)}: {key}"


def test_namespace_enforces_restricted_pod_security(objects: list[Obj]) -> None:
    namespaces = km.of_kind(objects, "Namespace")
    assert namespaces, "the namespace is part of the deployment"
    for ns in namespaces:
        assert ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    assert {namespace(w) for w in workloads(objects)} <= {n["metadata"]["name"] for n in namespaces}


def test_steerguard_image_user_and_writable_mounts(objects: list[Obj]) -> None:
    """Pods run as the image's user; its writable paths are emptyDirs (the root fs is read-only)."""
    dockerfile = km.load_dockerfile()
    uid, _, gid = (dockerfile.user() or "").partition(":")
    image_env = dockerfile.final.env()
    for service, c in steerguard_containers(objects):
        assert str(effective(c, "runAsUser")) == uid, f"{c.name}: runAsUser should be the image's {uid}"
        if gid:
            assert str(effective(c, "runAsGroup")) == gid
        volumes = {v["name"]: v for v in c.pod.get("volumes", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c.container.get("volumeMounts", [])}
        needed = ["/tmp"]
        if service in GRPC_SERVICES:  # they write the dequantised model
            needed.append(image_env["STEERGUARD_CACHE_DIR"])
        for path in needed:
            assert path in mounts and "emptyDir" in mounts[path], f"{c.name}: emptyDir at {path}"
            assert mounts[path]["emptyDir"].get("sizeLimit"), f"{c.name}: bound the emptyDir at {path}"


def test_images_are_pinned(objects: list[Obj]) -> None:
    for c in km.containers(objects):
        image = c.container["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and "/" not in tag and tag != "latest", f"{c.name}: pin a tag, not {image}"


# --- environment vs flags -----------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_environment_matches_flags(objects: list[Obj], service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each STEERGUARD_* variable a container gets is a flag its command reads, with a valid value."""
    from steerguard.settings import env_flags

    c = the(objects, service)
    env = km.container_env(objects, c.container)
    ours = {k for k in env if k.startswith("STEERGUARD_")}
    if service not in serve_parsers():
        pytest.skip(f"'steerguard serve {service}' is not registered yet (being built in parallel)")
    parser = serve_parsers()[service]
    unknown = ours - env_flags(parser) - NON_FLAG_ENV
    assert not unknown, f"{c.name}: sets {sorted(unknown)}, which 'steerguard serve {service}' does not read"

    # Build the parser under exactly this environment: add_flag converts the values,
    # so a malformed one (a port that is not a number) fails here as it would in the pod.
    for key in list(os.environ):
        if key.startswith("STEERGUARD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parser = serve_parsers()[service]
    try:
        ns = parser.parse_args([a for a in c.container.get("args", []) if a not in ("serve", service)])
    except SystemExit as exc:  # argparse reports on stderr and exits
        pytest.fail(f"{c.name}: its environment/args do not parse ({exc})")
    for action in parser._actions:
        if action.choices and action.dest in vars(ns) and not isinstance(action, argparse._SubParsersAction):
            assert getattr(ns, action.dest) in action.choices, (
                f"{c.name}: {action.dest} not in {action.choices}"
            )


def test_ports_agree_with_settings(objects: list[Obj]) -> None:
    for service, c in steerguard_containers(objects):
        env = km.container_env(objects, c.container)
        ports = km.container_ports(c.pod)
        main = "sidecar-http" if service == "sidecar" else "grpc"
        assert int(env["STEERGUARD_PORT"]) == ports[main], f"{c.name}: STEERGUARD_PORT vs containerPort"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in c.container:
                assert port_of(c.container[kind]) in (ports[main], main), f"{c.name}: {kind} port"
        if "metrics" in ports:
            assert int(env.get("STEERGUARD_METRICS_PORT", 0)) == ports["metrics"], f"{c.name}: metrics port"
            annotations = c.workload["spec"]["template"]["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/port") == str(ports["metrics"])


def test_files_in_settings_are_mounted(objects: list[Obj]) -> None:
    """Paths given to the services (token, policy, bundle, TLS) exist in the pod."""
    for _, c in steerguard_containers(objects):
        env = km.container_env(objects, c.container)
        volumes = {v["name"]: v for v in c.pod.get("volumes", [])}
        for key, value in env.items():
            if not (
                key.endswith("_FILE") or key in {"STEERGUARD_POLICY", "STEERGUARD_BUNDLE"} or "_TLS_" in key
            ):
                continue
            mounts = [
                m for m in c.container.get("volumeMounts", []) if value.startswith(m["mountPath"] + "/")
            ]
            assert mounts, f"{c.name}: {key}={value} is not on a mounted volume"
            mount = max(mounts, key=lambda m: len(m["mountPath"]))
            relative = value[len(mount["mountPath"]) + 1 :]
            volume = volumes[mount["name"]]
            for kind, source_key, name_key in (
                ("Secret", "secret", "secretName"),
                ("ConfigMap", "configMap", "name"),
            ):
                if source_key in volume:
                    source = volume[source_key]
                    obj = km.find(objects, kind, source[name_key])
                    items = {i["path"]: i["key"] for i in source.get("items", [])} or {
                        k: k for k in {**obj.get("data", {}), **obj.get("stringData", {})}
                    }
                    assert relative in items, f"{c.name}: {key} names {relative}, not in {km.ref(obj)}"


def test_addresses_point_at_the_right_pods(objects: list[Obj]) -> None:
    sidecar = the(objects, "sidecar")
    env = km.container_env(objects, sidecar.container)
    ns = namespace(sidecar.workload)
    for key, service in (("STEERGUARD_CLASSIFIER", "classifier"), ("STEERGUARD_STEER", "steer")):
        _, backing, port = service_for(objects, env[key], ns)
        target = the(objects, service)
        assert backing is target.workload, f"{key}={env[key]} does not reach the {service} pods"
        assert port == km.container_ports(target.pod)["grpc"]
    upstream = re.fullmatch(r"http://(127\.0\.0\.1|localhost):(\d+)/?", env["STEERGUARD_UPSTREAM"])
    assert upstream, "the sidecar forwards to the app over loopback, inside the pod"
    app_ports = [p["containerPort"] for c in sidecar.pod["containers"] for p in c.get("ports", [])]
    assert int(upstream.group(2)) in app_ports, "STEERGUARD_UPSTREAM is a port the app container exposes"

    classifier = the(objects, "classifier")
    url = km.container_env(objects, classifier.container).get("STEERGUARD_REDIS_URL", "")
    match = re.fullmatch(r"rediss?://(?::([^@]*)@)?([^/]+)(/\d+)?", url)
    assert match, f"STEERGUARD_REDIS_URL={url!r}"
    assert "$(" not in url, "every $(VAR) in the Redis URL is defined before it"
    _, redis, _ = service_for(objects, match.group(2), ns)
    redis_args = [*redis["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    if "--requirepass" in redis_args:
        redis_env = km.container_env(objects, redis["spec"]["template"]["spec"]["containers"][0])
        password = km.expand(redis_args[redis_args.index("--requirepass") + 1], redis_env)
        assert match.group(1) == password, "the classifier's Redis password is the one Redis requires"


def test_threads_within_cpu_limit(objects: list[Obj]) -> None:
    for service in GRPC_SERVICES:
        c = the(objects, service)
        threads = int(km.container_env(objects, c.container).get("STEERGUARD_THREADS", 0))
        limit = km.quantity(c.container["resources"]["limits"]["cpu"])
        assert threads <= max(limit, 1), f"{c.name}: {threads} torch threads on a {limit} CPU limit"


# --- Services -----------------------------------------------------------------------


def test_services_select_pods_and_target_exposed_ports(objects: list[Obj]) -> None:
    for svc in km.of_kind(objects, "Service"):
        selector = svc["spec"].get("selector", {})
        backing = workload_selected(objects, selector, namespace(svc))
        assert backing, f"{km.ref(svc)} selects no pod ({selector})"
        for w in backing:
            exposed = km.container_ports(km.pod_spec(w))
            for port in svc["spec"]["ports"]:
                target = str(port.get("targetPort", port["port"]))
                assert target in exposed, f"{km.ref(svc)} targets {target}, not exposed by {km.ref(w)}"


def test_grpc_services_are_headless(objects: list[Obj]) -> None:
    grpc_pods = {id(the(objects, s).workload) for s in GRPC_SERVICES}
    for svc in km.of_kind(objects, "Service"):
        backing = workload_selected(objects, svc["spec"]["selector"], namespace(svc))
        speaks_grpc = any(p.get("appProtocol") == "grpc" for p in svc["spec"]["ports"])
        if speaks_grpc or any(id(w) in grpc_pods for w in backing):
            assert svc["spec"].get("clusterIP") == "None", f"{km.ref(svc)}: gRPC needs a headless Service"
            assert not svc["spec"].get("publishNotReadyAddresses"), "only ready pods in DNS"


# --- the example pod ------------------------------------------------------------------


def test_sidecar_sits_in_the_example_pod(objects: list[Obj]) -> None:
    c = the(objects, "sidecar")
    assert c.sidecar, "the sidecar is a native sidecar: an init container with restartPolicy: Always"
    assert c.workload["metadata"]["name"] == "chatbot"
    app = c.pod["containers"]
    assert app and all(serve_target(km.ContainerRef(c.workload, a)) is None for a in app), (
        "the app runs beside it"
    )
    services = [
        s
        for s in km.of_kind(objects, "Service")
        if c.workload in workload_selected(objects, s["spec"]["selector"], namespace(s))
    ]
    assert services, "a Service fronts the chatbot"
    sidecar_port = km.container_ports(c.pod)["sidecar-http"]
    for svc in services:
        for port in svc["spec"]["ports"]:
            target = km.container_ports(c.pod)[str(port.get("targetPort", port["port"]))]
            assert target == sidecar_port, f"{km.ref(svc)} must point at the sidecar, not the app"
    key, value = SIDECAR_LABEL
    assert km.pod_labels(c.workload).get(key) == value, "the label the services' NetworkPolicies admit"


# --- network policies -------------------------------------------------------------------


def test_only_sidecars_reach_the_services(objects: list[Obj]) -> None:
    sidecar_pod = the(objects, "sidecar").workload
    for service in GRPC_SERVICES:
        c = the(objects, service)
        peers = peers_allowed(objects, c.workload, km.container_ports(c.pod)["grpc"])
        assert peers is not None, f"{c.name}: gRPC port open to everyone"
        assert peers, f"{c.name}: nobody may call it"
        for peer in peers:
            assert "podSelector" in peer and "ipBlock" not in peer, f"{c.name}: peer {peer}"
            assert peer["podSelector"].get("matchLabels") == dict([SIDECAR_LABEL]), f"{c.name}: peer {peer}"
            # Namespace and pod label together: a pod's own label alone, set by whoever runs it
            # in any namespace, admits nothing.
            wanted = dict([GUARDED_NAMESPACE_LABEL])
            assert peer.get("namespaceSelector", {}).get("matchLabels") == wanted, f"{c.name}: peer {peer}"
        assert any(km.label_selector_matches(p["podSelector"], km.pod_labels(sidecar_pod)) for p in peers)
        (ns,) = [
            n for n in km.of_kind(objects, "Namespace") if n["metadata"]["name"] == namespace(sidecar_pod)
        ]
        assert any(km.label_selector_matches(p["namespaceSelector"], ns["metadata"]["labels"]) for p in peers)


def test_only_the_classifier_reaches_redis(objects: list[Obj]) -> None:
    classifier = the(objects, "classifier").workload
    redis = [w for w in workloads(objects) if "redis" in [c["name"] for c in km.pod_spec(w)["containers"]]]
    assert len(redis) == 1
    peers = peers_allowed(objects, redis[0], 6379)
    assert peers, "Redis must not be open to everyone"
    for peer in peers:
        assert set(peer) == {"podSelector"}, f"same-namespace pod selector only, got {peer}"
        assert km.label_selector_matches(peer["podSelector"], km.pod_labels(classifier))
        others = [w for w in workloads(objects) if w is not classifier]
        assert not any(km.label_selector_matches(peer["podSelector"], km.pod_labels(w)) for w in others)


def test_app_port_only_reachable_through_the_sidecar(objects: list[Obj]) -> None:
    c = the(objects, "sidecar")
    app_ports = [p["containerPort"] for a in c.pod["containers"] for p in a.get("ports", [])]
    for port in app_ports:
        assert peers_allowed(objects, c.workload, port) == [], f"app port {port} reachable around the sidecar"
    assert peers_allowed(objects, c.workload, km.container_ports(c.pod)["sidecar-http"]) is None


# --- availability -----------------------------------------------------------------------


def _scaled(objects: list[Obj]) -> list[Obj]:
    """Deployments meant to run several replicas (replicas > 1 or an HPA)."""
    hpa_targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in km.of_kind(objects, "HorizontalPodAutoscaler")
    }
    return [
        d
        for d in km.of_kind(objects, "Deployment")
        if d["spec"].get("replicas", 1) > 1 or d["metadata"]["name"] in hpa_targets
    ]


def test_pod_disruption_budgets(objects: list[Obj]) -> None:
    pdbs = km.of_kind(objects, "PodDisruptionBudget")
    for d in _scaled(objects):
        matching = [p for p in pdbs if km.label_selector_matches(p["spec"]["selector"], km.pod_labels(d))]
        assert len(matching) == 1, f"{km.ref(d)}: one PodDisruptionBudget"
        assert "maxUnavailable" in matching[0]["spec"], (
            "maxUnavailable never blocks a drain at low replica counts"
        )
    for p in pdbs:
        assert any(
            km.label_selector_matches(p["spec"]["selector"], km.pod_labels(w)) for w in workloads(objects)
        )


def test_topology_spread(objects: list[Obj]) -> None:
    for d in _scaled(objects):
        constraints = km.pod_spec(d).get("topologySpreadConstraints", [])
        assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in constraints), f"{km.ref(d)}: spread"
        for constraint in constraints:
            assert km.label_selector_matches(constraint["labelSelector"], km.pod_labels(d))


def test_classifier_autoscaler(objects: list[Obj], overlay: str) -> None:
    hpas = km.of_kind(objects, "HorizontalPodAutoscaler")
    classifier = the(objects, "classifier").workload
    if overlay == "dev":
        assert not hpas, "dev runs one replica: no autoscaler"
        return
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpas] == [classifier["metadata"]["name"]]
    hpa = hpas[0]["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert "replicas" not in classifier["spec"], "the HPA owns replicas; apply must not reset them"


def test_termination_grace_covers_the_drain(objects: list[Obj]) -> None:
    for _, c in steerguard_containers(objects):
        env = km.container_env(objects, c.container)
        drain = float(env.get("STEERGUARD_GRACE_SECONDS", 10)) + preStop_seconds(c.container)
        grace = c.pod.get("terminationGracePeriodSeconds", 30)
        assert grace > drain, f"{c.name}: terminationGracePeriodSeconds {grace} <= preStop + drain {drain}"


# --- overlays ------------------------------------------------------------------------------


def test_dev_overlay_is_small_and_cpu_only() -> None:
    _need_kubectl()
    objects = _render("dev")
    for d in km.of_kind(objects, "Deployment"):
        assert d["spec"].get("replicas", 1) == 1, f"{km.ref(d)}: one replica in dev"
    for c in km.containers(objects):
        assert "nvidia.com/gpu" not in c.container["resources"].get("limits", {})
    for service, c in steerguard_containers(objects):
        # The sidecar needs no torch: it runs the light image (the base install).
        want = "steerguard-light:" if service == "sidecar" else "-cpu"
        assert want in c.container["image"], f"{c.name}: {want} image in dev, not {c.container['image']}"
        assert "STEERGUARD_MODEL" not in km.container_env(objects, c.container), "the default small model"


def test_gpu_overlay_puts_steer_on_gpus() -> None:
    _need_kubectl()
    objects = _render("gpu")
    steer = the(objects, "steer")
    assert steer.container["resources"]["limits"].get("nvidia.com/gpu") in ("1", 1)
    assert steer.container["image"].endswith("-cuda"), "the CUDA image variant"
    assert steer.pod.get("nodeSelector"), "pinned to GPU nodes"
    assert any(t.get("key") == "nvidia.com/gpu" for t in steer.pod.get("tolerations", [])), (
        "tolerates the GPU taint"
    )
    for service in ("classifier", "sidecar"):
        c = the(objects, service)
        assert "nvidia.com/gpu" not in c.container["resources"]["limits"]
        assert c.container["image"].endswith("-cpu" if service == "classifier" else "steerguard-light:0.1.0")


# --- the policy ConfigMap -----------------------------------------------------------------


def _policy(objects: list[Obj]) -> Any:
    """The sidecar's policy as its ConfigMap mounts it, parsed as the sidecar parses it."""
    from sidecar.policy import parse_policy

    c = the(objects, "sidecar")
    env = km.container_env(objects, c.container)
    path = Path(env["STEERGUARD_POLICY"])
    mount = next(m for m in c.container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in c.pod["volumes"] if v["name"] == mount["name"])
    data = km.find(objects, "ConfigMap", volume["configMap"]["name"])["data"][path.name]
    return parse_policy(yaml.safe_load(data))


def test_policy_configmap_is_a_valid_policy(objects: list[Obj]) -> None:
    assert _policy(objects).default.action.value == "steer"


def test_policy_steers_with_what_the_steer_engine_serves(objects: list[Obj]) -> None:
    """The refusal head where the engine decodes with it (in-house), the vector on vLLM."""
    policy = _policy(objects)
    steer = the(objects, "steer")
    engine = km.container_env(objects, steer.container).get("STEERGUARD_ENGINE", "inhouse")
    rules = [policy.default, *policy.categories.values()]
    vectors = {r.vector for r in rules if r.action.value == "steer"}
    assert ("refusal-head" in vectors) is (engine != "vllm"), (engine, vectors)


@pytest.mark.parametrize("overlay_name", km.OVERLAYS)
def test_each_overlay_sets_who_may_call_the_services(overlay_name: str) -> None:
    """The callers' namespace and pod labels are values an overlay sets (its callers.yaml), and
    what renders is exactly what the overlay says."""
    _need_kubectl()
    folder = km.K8S_DIR / "overlays" / overlay_name
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert {"path": "callers.yaml"} in kustomization["patches"]
    wanted = {
        d["metadata"]["name"]: d["spec"]["ingress"]
        for d in yaml.safe_load_all((folder / "callers.yaml").read_text())
    }
    assert set(wanted) == set(GRPC_SERVICES)
    rendered = {
        p["metadata"]["name"]: p["spec"]["ingress"]
        for p in km.of_kind(_render(overlay_name), "NetworkPolicy")
    }
    for service, ingress in wanted.items():
        assert rendered[service] == ingress, service
