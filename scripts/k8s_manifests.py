"""Render, validate and inspect the Kubernetes manifests (k8s/) and the Dockerfile.

Shared by ``tests/test_k8s_*.py`` and ``tests/test_dockerfile*.py``, and usable
by hand or in CI without pytest:

    python scripts/k8s_manifests.py check          # render every overlay, validate against the schemas
    python scripts/k8s_manifests.py render dev     # print the rendered dev overlay

Rendering uses the real ``kubectl kustomize`` (kustomize v5 is built into
kubectl), so what is tested is byte for byte what ``kubectl apply -k`` sends.
Schema validation uses ``kubernetes-validate`` (offline, bundled OpenAPI
schemas) in strict mode, so a misspelt field fails instead of being dropped.
Only the standard library and PyYAML are needed at import time.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
OVERLAYS = ("dev", "gpu")
# The oldest release the manifests support (native sidecars are on by default
# from 1.29) and a recent one; both must accept every object.
K8S_VERSIONS = ("1.29.0", "1.33.0")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

Obj = dict[str, Any]


class RenderError(RuntimeError):
    """``kubectl kustomize`` is missing or rejected a kustomization."""


def kubectl() -> str | None:
    """Path of kubectl, or None (the tests skip locally, fail in CI)."""
    return shutil.which("kubectl")


def render(target: str | Path) -> list[Obj]:
    """Objects of ``kubectl kustomize TARGET`` (an overlay name or a directory)."""
    path = Path(target)
    if not path.is_absolute() and not path.exists():
        path = K8S_DIR / "overlays" / str(target)
    exe = kubectl()
    if exe is None:
        raise RenderError("kubectl not found (it carries kustomize): apt-get install -y kubectl")
    proc = subprocess.run(
        [exe, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def schema_errors(objects: list[Obj], version: str) -> list[str]:
    """Strict schema violations of ``objects`` for Kubernetes ``version`` (empty when valid)."""
    import kubernetes_validate  # dev dependency; imported late so rendering needs only PyYAML

    errors: list[str] = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{ref(obj)}: {exc.message} at {'/'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{ref(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in {version}")
    return errors


# --- looking things up in rendered objects -----------------------------------


def ref(obj: Obj) -> str:
    """``Kind/name`` for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The object ``kind/name`` (generated ConfigMaps match on their name before the hash)."""
    for obj in objects:
        if obj.get("kind") != kind:
            continue
        actual = obj["metadata"]["name"]
        if actual == name or (
            kind in {"ConfigMap", "Secret"} and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", actual)
        ):
            return obj
    raise KeyError(f"{kind}/{name} not rendered")


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


@dataclass(frozen=True)
class ContainerRef:
    """A container of a workload's pod; ``sidecar`` marks a native sidecar (restartable init container)."""

    workload: Obj
    container: Obj
    init: bool = False

    @property
    def sidecar(self) -> bool:
        return self.init and self.container.get("restartPolicy") == "Always"

    @property
    def name(self) -> str:
        return f"{ref(self.workload)}/{self.container['name']}"

    @property
    def pod(self) -> Obj:
        return pod_spec(self.workload)


def containers(objects: list[Obj], *, include_init: bool = True) -> Iterator[ContainerRef]:
    """Every container of every workload (init containers too, unless asked not to)."""
    for obj in objects:
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(obj)
        if include_init:
            for c in spec.get("initContainers", []):
                yield ContainerRef(obj, c, init=True)
        for c in spec.get("containers", []):
            yield ContainerRef(obj, c)


def serving_containers(objects: list[Obj]) -> Iterator[ContainerRef]:
    """Containers that stay up: regular ones and native sidecars (plain init containers excluded)."""
    for c in containers(objects):
        if not c.init or c.sidecar:
            yield c


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service-style equality selector matches ``labels`` (an empty selector matches nothing here)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels and matchExpressions) matches ``labels``."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


# --- a container's environment, the way the kubelet builds it ----------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, others stay."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(sub, text)


def lookup(objects: list[Obj], kind: str, name: str, key: str) -> str:
    obj = find(objects, kind, name)
    if key in obj.get("stringData", {}):
        return str(obj["stringData"][key])
    if key in obj.get("data", {}):
        value = obj["data"][key]
        if kind == "Secret":
            import base64

            return base64.b64decode(value).decode()
        return str(value)
    raise KeyError(f"{kind}/{name} has no key {key!r}")


def container_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The environment Kubernetes gives ``container`` (image ENV not included).

    ``envFrom`` first, then ``env`` in order, each value expanded against the
    variables defined before it, as the kubelet does.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                obj = find(objects, kind, source[key]["name"])
                for k in {**obj.get("data", {}), **obj.get("stringData", {})}:
                    env[prefix + k] = lookup(objects, kind, obj["metadata"]["name"], k)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "valueFrom" in item:
            source = item["valueFrom"]
            if "configMapKeyRef" in source:
                sel = source["configMapKeyRef"]
                env[item["name"]] = lookup(objects, "ConfigMap", sel["name"], sel["key"])
            elif "secretKeyRef" in source:
                sel = source["secretKeyRef"]
                env[item["name"]] = lookup(objects, "Secret", sel["name"], sel["key"])
            else:  # fieldRef / resourceFieldRef: known only in a cluster
                env[item["name"]] = ""
        else:
            env[item["name"]] = ""
    return env


def container_ports(pod: Obj) -> dict[str, int]:
    """Named and numbered ports exposed by a pod (regular and native sidecar containers)."""
    ports: dict[str, int] = {}
    for c in [
        *pod.get("containers", []),
        *(i for i in pod.get("initContainers", []) if i.get("restartPolicy") == "Always"),
    ]:
        for p in c.get("ports", []):
            ports[str(p["containerPort"])] = p["containerPort"]
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def resolve_address(objects: list[Obj], address: str, namespace: str) -> tuple[Obj, Obj, int] | None:
    """``host:port`` as a pod would dial it -> (Service, backing workload, container port).

    ``host`` is a Service name, short (same namespace) or qualified
    (``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``). None when no
    Service of the rendered objects answers there.
    """
    host, _, port_text = address.rpartition(":")
    if not port_text.isdigit():
        return None
    name, _, rest = host.partition(".")
    svc_ns = rest.split(".")[0] if rest else namespace
    for svc in of_kind(objects, "Service"):
        meta = svc["metadata"]
        if meta["name"] != name or meta.get("namespace", "default") != svc_ns:
            continue
        for port in svc["spec"].get("ports", []):
            if port["port"] != int(port_text):
                continue
            for workload in objects:
                if workload.get("kind") not in WORKLOAD_KINDS:
                    continue
                if workload["metadata"].get("namespace", "default") != svc_ns:
                    continue
                if not selects(svc["spec"].get("selector", {}), pod_labels(workload)):
                    continue
                target = container_ports(pod_spec(workload)).get(str(port.get("targetPort", port["port"])))
                if target is not None:
                    return svc, workload, target
    return None


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number (CPU in cores, memory in bytes)."""
    s = str(text)
    binary: dict[str, float] = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal: dict[str, float] = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, mult in binary.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    for suffix, mult in decimal.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)


# --- the Dockerfile -----------------------------------------------------------


@dataclass
class Instruction:
    """One Dockerfile instruction (continuation lines joined, comments dropped)."""

    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD, or None for the shell form."""
        import json

        try:
            parsed = json.loads(self.value)
        except ValueError:
            return None
        return [str(x) for x in parsed] if isinstance(parsed, list) else None


@dataclass
class Stage:
    """A build stage: its FROM line and the instructions after it."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """Variables set by ENV in this stage (``KEY=VALUE`` pairs, or the legacy ``KEY VALUE``)."""
        values: dict[str, str] = {}
        for ins in self.all("ENV"):
            words = shlex.split(ins.value)
            if words and "=" not in words[0]:
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARGs (before the first FROM) and the stages."""

    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        """Substitute global ``${ARG}`` defaults (used in FROM lines)."""
        for key, value in self.global_args.items():
            text = text.replace("${" + key + "}", value).replace("$" + key, value)
        return text

    def entrypoint(self) -> list[str]:
        ins = self.final.all("ENTRYPOINT")
        form = ins[-1].exec_form() if ins else None
        return form or []

    def cmd(self) -> list[str]:
        ins = self.final.all("CMD")
        form = ins[-1].exec_form() if ins else None
        return form or []

    def user(self) -> str | None:
        ins = self.final.all("USER")
        return ins[-1].value.strip() if ins else None


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse the subset of Dockerfile syntax this repo uses (no heredocs, default ``\\`` escape)."""
    logical: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments, also inside continuations, are dropped by Docker
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        logical.append((start, " ".join(b for b in buffer if b)))
        buffer = []
    if buffer:
        logical.append((start, " ".join(buffer)))

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            words = value.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = value.partition("=")
                global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value, number))
    return Dockerfile(global_args, stages)


def load_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    return parse_dockerfile(path.read_text(encoding="utf-8"))


# --- command line -------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="render every overlay and validate it against the pinned schemas")
    render_p = sub.add_parser("render", help="print an overlay's rendered manifests")
    render_p.add_argument("overlay", choices=OVERLAYS)
    ns = parser.parse_args(argv)
    try:
        if ns.cmd == "render":
            print(yaml.safe_dump_all(render(ns.overlay), sort_keys=False), end="")
            return 0
        failed = False
        for overlay in OVERLAYS:
            objects = render(overlay)
            for version in K8S_VERSIONS:
                errors = schema_errors(objects, version)
                failed |= bool(errors)
                status = "ok" if not errors else f"{len(errors)} error(s)"
                print(f"{overlay}: {len(objects)} objects, Kubernetes {version}: {status}")
                for error in errors:
                    print(f"  {error}")
        return 1 if failed else 0
    except RenderError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
