"""deploy/k8s: the Kubernetes manifests, rendered and checked offline (no API server runs here).

The base and the example overlay are each rendered with kubectl's built-in kustomize, then:

- Every document is validated against its schema, strictly: a field the schema does not know
  fails, as it would under `kubectl apply`'s strict field validation. Core kinds use the
  Kubernetes OpenAPI schemas the kubernetes-validate package ships (the oldest and the newest
  Kubernetes version we claim). KEDA's ScaledObject and TriggerAuthentication use the models
  cloudcoil generates from KEDA's CRD schemas (cloudcoil-models-keda), validated in pydantic's
  strict mode and dumped back: a field the models do not know is dropped by the dump, so the
  dump must equal the document.
- KEDA checks a trigger's metadata only when it builds the scaler: the redis trigger's
  parameters are checked against the ones KEDA's redis scaler documents.
- The properties operators rely on are computed from the rendered objects: a worker Deployment
  and a ScaledObject per queue, grace periods longer than the drain and the queue's time limit,
  one Beat, probes that read the heartbeat, secrets only by reference, locked-down containers,
  disruption budgets, selectors that select.

One module for the manifests: every check reads the same rendered documents.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudcoil.models.keda.v1alpha1 as keda
import kubernetes_validate
import pydantic
import pytest
import yaml

from kernel.settings import DEFAULT_TIME_LIMITS, Settings
from kernel.topology import DEAD_LETTER_QUEUE, WORK_QUEUES
from tests.conftest import _missing

Doc = dict[str, Any]

K8S_DIR = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
RENDERS = {"base": K8S_DIR / "base", "example": K8S_DIR / "overlays" / "example"}

# The oldest Kubernetes the manifests claim (KEDA 2.16 supports 1.29 to 1.31; PDBs'
# unhealthyPodEvictionPolicy is on by default from 1.27) and the newest kubernetes-validate
# ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
KEDA_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}

# After the drain (preStop), SIGTERM starts Celery's warm shutdown: it needs some time still.
WARM_SHUTDOWN_SECONDS = 60
# What buildah under `--isolation chroot` needs as root (deploy/README.md, "Builds and pushes
# workers"): nothing beyond this list, and never privileged.
BUILDAH_CAPABILITIES = frozenset(
    {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP", "SETUID", "SETGID", "SYS_CHROOT"}
)
# KEDA's redis (lists) scaler: the trigger metadata it reads, and what it requires.
REDIS_SCALER_PARAMETERS = frozenset(
    {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "usernameFromEnv",
        "passwordFromEnv",
        "listName",
        "listLength",
        "activationListLength",
        "enableTLS",
        "unsafeSsl",
        "databaseIndex",
    }
)
SECRET_NAME = "drydock-secrets"
# Environment variables that carry secrets: every SecretStr setting, the two URLs that hold the
# PostgreSQL and Redis passwords, playbook secrets, and the Redis password KEDA reads.
SECRET_ENV = frozenset(
    {
        "DRYDOCK_" + name.upper()
        for name, field in Settings.model_fields.items()
        if field.annotation is not None and "SecretStr" in repr(field.annotation)
    }
    | {"DRYDOCK_DATABASE_URL", "DRYDOCK_BROKER_URL", "REDIS_PASSWORD"}
)
SECRET_ENV_PREFIXES = ("DRYDOCK_REMEDIATION_SECRET_",)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@", re.IGNORECASE)


@dataclass(frozen=True)
class Render:
    name: str
    docs: list[Doc]

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def workers(self) -> dict[str, Doc]:
        """Worker Deployments by the queue their worker serves."""
        by_queue: dict[str, Doc] = {}
        for deployment in self.of_kind("Deployment"):
            args = _main_container(deployment).get("args", [])
            if args[:1] != ["worker"]:
                continue
            for queue in _option(args, "--queues", "-Q").split(","):
                assert queue not in by_queue, f"{self.name}: two Deployments serve {queue}"
                by_queue[queue] = deployment
        return by_queue


@functools.cache
def _rendered_text(directory: Path) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        _missing("kubectl (its built-in kustomize renders deploy/k8s)")
        raise AssertionError("unreachable")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


def _render(directory: Path) -> list[Doc]:
    # Parsed anew for each fixture: tests may not share (and so alter) each other's objects.
    return [doc for doc in yaml.safe_load_all(_rendered_text(directory)) if doc]


@pytest.fixture(scope="module", params=sorted(RENDERS))
def manifests(request: pytest.FixtureRequest) -> Render:
    return Render(request.param, _render(RENDERS[request.param]))


@pytest.fixture(scope="module")
def base_and_example() -> tuple[Render, Render]:
    return Render("base", _render(RENDERS["base"])), Render("example", _render(RENDERS["example"]))


# ---- helpers over rendered objects ----------------------------------------------------------


def _option(args: list[str], *names: str) -> str:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return str(args[i + 1])
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {args}")


def _pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def _main_container(doc: Doc) -> Doc:
    containers: list[Doc] = _pod_spec(doc)["containers"]
    assert len(containers) == 1, f"{doc['metadata']['name']}: one container expected"
    return containers[0]


def _workloads(render: Render) -> Iterator[Doc]:
    for doc in render.docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc


def _containers(doc: Doc) -> Iterator[Doc]:
    spec = _pod_spec(doc)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def _config_map_data(render: Render, container: Doc) -> dict[str, str]:
    """Variables a container gets from ConfigMaps through envFrom."""
    data: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data.update(render.named("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    return data


def _env_value(render: Render, container: Doc, name: str) -> str | None:
    """A variable's literal value in a container (env wins over envFrom), or None."""
    for entry in container.get("env", []):
        if entry["name"] == name:
            value = entry.get("value")
            return None if value is None else str(value)
    return _config_map_data(render, container).get(name)


def _time_limits(render: Render, container: Doc) -> dict[str, int]:
    """The hard time limits this container's worker runs with: the defaults, or what the
    manifests set in DRYDOCK_TIME_LIMITS."""
    limits = dict(DEFAULT_TIME_LIMITS)
    override = _env_value(render, container, "DRYDOCK_TIME_LIMITS")
    if override:
        limits.update({str(k): int(v) for k, v in json.loads(override).items()})
    return limits


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _differences(given: Any, kept: Any, path: str = "") -> list[str]:
    """Where ``kept`` (the validated model, dumped) lost or changed what ``given`` had."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out: list[str] = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}: unknown field")
            else:
                out += _differences(value, kept[key], f"{path}.{key}")
        return out
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=True))
            for p in _differences(g, k, f"{path}[{i}]")
        ]
    return [] if given == kept else [f"{path}: {given!r} became {kept!r}"]


def schema_problems(doc: Doc) -> list[str]:
    """Why ``doc`` is not valid for its kind ([] when it is)."""
    kind = doc["kind"]
    if kind in KEDA_MODELS:
        try:
            model = KEDA_MODELS[kind].model_validate(doc, strict=True)
        except pydantic.ValidationError as exc:
            return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return _differences(doc, kept)
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"Kubernetes {version}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"Kubernetes {version} has no schema for {doc['apiVersion']} {kind}")
    return problems


# ---- schemas ----------------------------------------------------------------------------------


def test_every_document_matches_its_schema(manifests: Render) -> None:
    kinds = {d["kind"] for d in manifests.docs}
    assert {"Deployment", "Job", "ScaledObject", "TriggerAuthentication"} <= kinds
    problems = {f"{d['kind']}/{d['metadata']['name']}": schema_problems(d) for d in manifests.docs}
    assert {name: p for name, p in problems.items() if p} == {}


def test_the_schema_checks_refuse_unknown_and_mistyped_fields(manifests: Render) -> None:
    deployment = copy.deepcopy(manifests.workers()["builds"])
    _main_container(deployment)["livenessProbe"]["exec"]["cmd"] = ["drydock"]
    assert any("cmd" in p for p in schema_problems(deployment))

    deployment = copy.deepcopy(manifests.workers()["builds"])
    _pod_spec(deployment)["terminationGracePeriodSeconds"] = "3720"
    assert schema_problems(deployment)

    scaled = copy.deepcopy(manifests.of_kind("ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 1
    assert schema_problems(scaled) == [".spec.minReplicas: unknown field"]

    scaled = copy.deepcopy(manifests.of_kind("ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 2
    assert schema_problems(scaled)


# ---- workers and KEDA -------------------------------------------------------------------------


def test_every_queue_has_a_worker_deployment_scaled_on_its_redis_list(manifests: Render) -> None:
    workers = manifests.workers()
    assert set(workers) == set(WORK_QUEUES)
    assert DEAD_LETTER_QUEUE not in workers
    scaled_by_target = {
        s["spec"]["scaleTargetRef"]["name"]: s for s in manifests.of_kind("ScaledObject")
    }
    assert len(scaled_by_target) == len(manifests.of_kind("ScaledObject"))
    for queue, deployment in workers.items():
        name = deployment["metadata"]["name"]
        scaled = scaled_by_target.get(name)
        assert scaled is not None, f"no ScaledObject scales {name}"
        target = scaled["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target.get("apiVersion", "apps/v1") == "apps/v1"
        # Celery's Redis transport keeps a queue's waiting messages in a list named after it.
        lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
        assert lists == [queue], f"{name} scales on {lists}"
        assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    # Nothing scales what is not a worker (Beat above all).
    assert set(scaled_by_target) <= {d["metadata"]["name"] for d in workers.values()}


def test_redis_triggers_are_complete_and_authenticated_from_the_secret(
    manifests: Render,
) -> None:
    for scaled in manifests.of_kind("ScaledObject"):
        target = manifests.named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        container_name = scaled["spec"]["scaleTargetRef"].get("envSourceContainerName")
        (container,) = [
            c for c in _pod_spec(target)["containers"] if container_name in (None, c["name"])
        ]
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "redis"
            metadata = trigger["metadata"]
            assert set(metadata) <= REDIS_SCALER_PARAMETERS, set(metadata) - REDIS_SCALER_PARAMETERS
            assert int(metadata["listLength"]) >= 1
            assert {"address", "addressFromEnv", "host", "hostFromEnv"} & set(metadata)
            # KEDA reads addressFromEnv in the scaled container's environment.
            if "addressFromEnv" in metadata:
                variable = metadata["addressFromEnv"]
                address = _env_value(manifests, container, variable)
                assert address is not None, f"{variable} unset in {target['metadata']['name']}"
                assert re.fullmatch(r"[A-Za-z0-9.-]+:\d+", address), address
            # The password comes from the Secret through a TriggerAuthentication, never inline.
            assert not {"password", "passwordFromEnv"} & set(metadata)
            auth = manifests.named("TriggerAuthentication", trigger["authenticationRef"]["name"])
            refs = auth["spec"]["secretTargetRef"]
            assert {r["parameter"] for r in refs} == {"password"}
            assert {r["name"] for r in refs} == {SECRET_NAME}


def test_grace_period_outlasts_the_drain_and_the_longest_job(manifests: Render) -> None:
    for queue, deployment in manifests.workers().items():
        container = _main_container(deployment)
        limits = _time_limits(manifests, container)
        queues = _option(container["args"], "--queues", "-Q").split(",")
        longest = max(limits[q] for q in queues)

        drain = container["lifecycle"]["preStop"]["exec"]["command"]
        assert drain[:2] == ["drydock", "drain"], drain
        drain_timeout = float(_option(drain, "--timeout"))
        grace = _pod_spec(deployment)["terminationGracePeriodSeconds"]
        # The drain waits out any job started before it; the grace period covers the drain and
        # the warm shutdown after SIGTERM.
        assert drain_timeout >= longest, (queue, drain_timeout, longest)
        assert grace >= drain_timeout + WARM_SHUTDOWN_SECONDS, (queue, grace, drain_timeout)


def test_keda_alone_sets_the_number_of_workers(manifests: Render) -> None:
    # A `replicas` in the manifest would be put back by every apply, fighting the autoscaler.
    for deployment in manifests.workers().values():
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def test_beat_runs_once_and_outwaits_a_stale_lock(manifests: Render) -> None:
    beats = [
        d for d in manifests.of_kind("Deployment") if _main_container(d).get("args") == ["beat"]
    ]
    assert len(beats) == 1
    beat = beats[0]
    assert beat["spec"]["replicas"] == 1
    # Recreate: the old pod is gone (its lock released) before the new one starts.
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert manifests.of_kind("HorizontalPodAutoscaler") == []

    startup = _main_container(beat)["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    settings_fields = Settings.model_fields
    lock_timeout = settings_fields["beat_lock_timeout_seconds"].default
    heartbeat = settings_fields["heartbeat_seconds"].default
    # A new Beat may wait out a dead predecessor's lock before its first heartbeat.
    assert budget > lock_timeout + 3 * heartbeat, (budget, lock_timeout)


def test_every_long_running_container_is_probed(manifests: Render) -> None:
    from drydock.api import app

    api_paths = {getattr(route, "path", None) for route in app.routes}
    for deployment in manifests.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        container = _main_container(deployment)
        role = container["args"][0]
        kinds = ("startupProbe", "livenessProbe", "readinessProbe")
        missing = [k for k in kinds if not container.get(k)]
        assert not missing, f"{name} lacks {missing}"
        probes: dict[str, Doc] = {k: container[k] for k in kinds}
        if role in ("worker", "beat"):
            commands = {k: p["exec"]["command"] for k, p in probes.items()}
            ready = "ready" if role == "worker" else "live"
            assert commands == {
                "startupProbe": ["drydock", "probe", "live"],
                "livenessProbe": ["drydock", "probe", "live"],
                "readinessProbe": ["drydock", "probe", ready],
            }, name
            # A probe is a `drydock` process: give it time to start on a busy node.
            assert all(p.get("timeoutSeconds", 1) >= 5 for p in probes.values()), name
        else:
            ports = {p["name"] for p in container["ports"]}
            for probe in probes.values():
                assert probe["httpGet"]["port"] in ports, name
                if role == "api":
                    assert probe["httpGet"]["path"] in api_paths, probe
                if role == "flower":
                    assert probe["httpGet"]["path"] == "/healthcheck"


def test_heartbeat_file_is_written_where_the_probes_read_it(manifests: Render) -> None:
    for deployment in manifests.of_kind("Deployment"):
        container = _main_container(deployment)
        if container["args"][0] not in ("worker", "beat"):
            continue
        path = _env_value(manifests, container, "DRYDOCK_HEARTBEAT_FILE")
        assert path, f"{deployment['metadata']['name']}: DRYDOCK_HEARTBEAT_FILE unset"
        # The root filesystem is read-only: the file's directory must be a mounted volume.
        mounts = [m["mountPath"].rstrip("/") for m in container.get("volumeMounts", [])]
        assert str(Path(path).parent) in mounts, (deployment["metadata"]["name"], path)


# ---- secrets -----------------------------------------------------------------------------------


def test_secrets_are_referenced_never_inlined(manifests: Render) -> None:
    assert manifests.of_kind("Secret") == [], "Secrets are created by the operator, not applied"
    for doc in manifests.docs:
        for text in _strings(doc):
            assert not URL_WITH_PASSWORD.search(text), f"a URL with a password in {doc['kind']}"
    for config in manifests.of_kind("ConfigMap"):
        leaked = {k for k in config.get("data", {}) if k in SECRET_ENV}
        assert not leaked, f"secret settings in ConfigMap {config['metadata']['name']}: {leaked}"
    for workload in _workloads(manifests):
        for container in _containers(workload):
            for entry in container.get("env", []):
                name = entry["name"]
                if name in SECRET_ENV or name.startswith(SECRET_ENV_PREFIXES):
                    assert "value" not in entry, f"{name} inlined in {workload['metadata']['name']}"
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, "secrets one by one, only where needed"


def test_the_readme_creates_every_secret_key_the_manifests_need(
    base_and_example: tuple[Render, Render],
) -> None:
    base, _ = base_and_example
    required: set[str] = set()
    referenced: set[str] = set()
    for workload in _workloads(base):
        for container in _containers(workload):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["key"])
                    if not ref.get("optional"):
                        required.add(ref["key"])
    for auth in base.of_kind("TriggerAuthentication"):
        required |= {r["key"] for r in auth["spec"]["secretTargetRef"]}
    referenced |= required

    readme = (K8S_DIR / "README.md").read_text()
    match = re.search(r"kubectl[^\n]* create secret generic drydock-secrets.*?\n```", readme, re.S)
    assert match, "README.md shows no `kubectl create secret generic drydock-secrets`"
    words = shlex.split(match.group(0).replace("\\\n", " ").removesuffix("```"))
    created = {w.split("=")[1] for w in words if w.startswith("--from-literal=")}
    assert required <= created, f"the README's command misses {required - created}"
    assert created <= referenced, f"the README creates unused keys {created - referenced}"


def _label_selector(text: str) -> dict[str, set[str]]:
    """``key=value`` or ``key in (a,b)``, comma-separated: what kubectl's -l accepts (the part
    of it the README uses)."""
    clauses: dict[str, set[str]] = {}
    for match in re.finditer(r"([\w./-]+)\s*(?:=\s*([\w.-]+)|\s+in\s*\(([^)]*)\))", text):
        key, value, values = match.groups()
        clauses[key] = {value} if value else {v.strip() for v in values.split(",")}
    assert clauses, f"no selector in {text!r}"
    return clauses


def test_the_readmes_first_apply_brings_what_the_migrate_job_needs(
    base_and_example: tuple[Render, Render],
) -> None:
    _, example = base_and_example
    readme = (K8S_DIR / "README.md").read_text()
    match = re.search(r"kubectl apply -k deploy/k8s/overlays/example -l '([^']+)'", readme)
    assert match, "README.md shows no first apply with a selector"
    selector = _label_selector(match.group(1))

    def selected(doc: Doc) -> bool:
        labels = doc["metadata"].get("labels", {})
        return all(labels.get(key) in values for key, values in selector.items())

    (job,) = example.of_kind("Job")
    assert selected(job)
    for container in _containers(job):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert selected(example.named("ConfigMap", source["configMapRef"]["name"]))
    # The first apply must not start workers, Beat or the API before the schema exists.
    assert not [d["metadata"]["name"] for d in example.of_kind("Deployment") if selected(d)]


# ---- pods -------------------------------------------------------------------------------------


def test_containers_run_locked_down(manifests: Render) -> None:
    for workload in _workloads(manifests):
        name = workload["metadata"]["name"]
        pod = _pod_spec(workload)
        pod_security = pod.get("securityContext", {})
        buildah = workload["metadata"].get("labels", {}).get("drydock/builder") == "buildah"
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        assert not any("hostPath" in v for v in pod.get("volumes", [])), name
        for container in _containers(workload):
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("allowPrivilegeEscalation") is False, name
            assert not security.get("privileged"), name
            assert security.get("readOnlyRootFilesystem") is True, name
            capabilities = security.get("capabilities", {})
            assert capabilities.get("drop") == ["ALL"], name
            added = set(capabilities.get("add", []))
            if buildah:
                # buildah needs root in its container (see BUILDAH_CAPABILITIES).
                assert added <= BUILDAH_CAPABILITIES, (name, added - BUILDAH_CAPABILITIES)
            else:
                assert security.get("runAsNonRoot") is True, name
                assert security.get("runAsUser", 0) != 0, name
                assert added == set(), name
                assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
    # Only builds and pushes share buildah's storage and run as root.
    buildah_workers = {
        q for q, d in manifests.workers().items() if d["metadata"]["labels"].get("drydock/builder")
    }
    assert buildah_workers <= {"builds", "pushes"}


def test_every_container_requests_resources(manifests: Render) -> None:
    for workload in _workloads(manifests):
        for container in _containers(workload):
            resources = container.get("resources", {})
            name = workload["metadata"]["name"]
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
            assert "memory" in resources.get("limits", {}), name


def test_disruption_budgets_cover_workers_and_the_api(manifests: Render) -> None:
    budgets = manifests.of_kind("PodDisruptionBudget")
    covered = [
        d
        for d in manifests.of_kind("Deployment")
        if _main_container(d)["args"][0] in ("worker", "api")
    ]
    for deployment in covered:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if _selects(b["spec"]["selector"]["matchLabels"], labels)]
        name = deployment["metadata"]["name"]
        assert len(matching) == 1, f"{name}: {len(matching)} disruption budgets"
        if _main_container(deployment)["args"][0] == "worker":
            # minAvailable would block every node drain while a queue runs one pod.
            assert "minAvailable" not in matching[0]["spec"], name
            assert matching[0]["spec"]["maxUnavailable"] >= 1, name
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(
            _selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in covered
        ), f"{budget['metadata']['name']} selects nothing"


def test_selectors_select_their_pods(manifests: Render) -> None:
    deployments = manifests.of_kind("Deployment")
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    # Selectors of different Deployments must not overlap (each would adopt the other's pods).
    for a in deployments:
        for b in deployments:
            if a is not b:
                assert not _selects(
                    a["spec"]["selector"]["matchLabels"],
                    b["spec"]["template"]["metadata"]["labels"],
                ), (a["metadata"]["name"], b["metadata"]["name"])
    for service in manifests.of_kind("Service"):
        selected = [
            d
            for d in deployments
            if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        ports = {p["name"] for p in _main_container(selected[0])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


# ---- the overlay -------------------------------------------------------------------------------


def test_the_overlay_sets_image_namespace_and_redis_address(
    base_and_example: tuple[Render, Render],
) -> None:
    base, example = base_and_example
    overlay = yaml.safe_load((RENDERS["example"] / "kustomization.yaml").read_text())
    (image,) = overlay["images"]
    expected = f"{image['newName']}:{image['newTag']}"
    for render, want in ((base, image["name"]), (example, expected)):
        images = {c["image"] for w in _workloads(render) for c in _containers(w)}
        assert images == {want}, (render.name, images)

    namespace = overlay["namespace"]
    for doc in example.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    assert example.named("Namespace", namespace)

    def redis_address(render: Render) -> str | None:
        return _env_value(render, _main_container(render.workers()["builds"]), "KEDA_REDIS_ADDRESS")

    assert redis_address(example) != redis_address(base)
    # The overlay's own settings reach the workers.
    assert (
        _env_value(
            example,
            _main_container(example.workers()["evaluation"]),
            "DRYDOCK_EVALUATION_HOST_ASSET",
        )
        is not None
    )
