"""deploy/kubernetes/, checked without a cluster: every overlay renders (kubectl kustomize, or the Python
equivalent in tests/deploy/kustomize.py where kubectl is missing) and its output passes kubernetes-validate;
every container of the server image runs an `atlas-server` subcommand that parses, probes use paths the apps
serve, the Ingress routes the proxy's prefixes to the right Services, KEDA is an optional component watching
the very Redis list the workers read, the migrate Job is new for each version, and NetworkPolicies fence the
services, Redis and PostgreSQL."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from atlas.core.config import settings_from_mapping
from atlas.server.cli import build_parser
from tests.deploy.kustomize import KustomizeError, build, identity
from tests.deploy.test_proxy import APPS, PREFIXES, build_app, locations, route_paths

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
TRIAL = KUBE / "trial"
PRODUCTION = KUBE / "production"
KEDA = KUBE / "components" / "keda"
OVERLAYS = (BASE, TRIAL, PRODUCTION)  # every folder `kubectl apply -k` takes
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest still maintained by the big clouds, and the newest


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


(IMAGE,) = kustomization(BASE)["images"]
SERVER_IMAGE = f"{IMAGE['newName']}:{IMAGE['newTag']}"


def kubectl_kustomize() -> str | None:
    """kubectl, when it is installed with a kustomize that knows components (v4 and later)."""
    if shutil.which("kubectl") is None:
        return None
    version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    return "kubectl" if found and int(found[1]) >= 4 else None


@cache
def rendered(folder: Path) -> tuple[dict, ...]:
    """What `kubectl apply -k folder` creates: kubectl's rendering, or the Python equivalent without kubectl."""
    if kubectl_kustomize():
        out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True)
        return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)
    return tuple(build(folder))


def resources(folder: Path = PRODUCTION) -> list[dict]:
    return list(rendered(folder))


def named(kind: str, folder: Path = PRODUCTION) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in resources(folder) if doc["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def server_containers(folder: Path = PRODUCTION) -> list[tuple[str, dict]]:
    return [
        (doc["metadata"]["name"], container)
        for doc in resources(folder)
        if doc["kind"] in ("Deployment", "Job", "StatefulSet")
        for container in pod_spec(doc)["containers"]
        if container["image"] == SERVER_IMAGE
    ]


def test_every_manifest_parses():
    files = sorted(KUBE.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in documents(path):
            if path.name != "kustomization.yaml":
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path


def test_kustomizations_list_existing_files_and_no_secret():
    for folder in (*OVERLAYS, KEDA):
        for entry in kustomization(folder).get("resources", []) + kustomization(folder).get("components", []):
            assert (folder / entry).exists(), (folder, entry)
    for folder in OVERLAYS:
        assert all(doc["kind"] != "Secret" for doc in resources(folder)), folder
    example = documents(KUBE / "secret.example.yaml")[0]
    assert example["kind"] == "Secret"
    assert example["metadata"]["name"] == "atlas-secrets"
    assert {"DATABASE_URL", "REDIS_URL", "FLEET_API_KEY", "FLEET_ENCRYPTION_KEY", "FLEET_DB_ENCRYPTION_KEY"} <= set(
        example["stringData"]
    )


def test_containers_run_real_subcommands():
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    seen = set()
    for name, container in server_containers():
        args = container.get("command", []) + container["args"]
        assert "command" not in container, f"{name}: the image's entrypoint is atlas-server"
        assert args[0] in subcommands, (name, args)
        build_parser().parse_args(args)
        seen.add(args[0])
    assert seen == {"migrate", "ingest", "worker", "exporter", "dashboard"}


def test_one_server_image_everywhere():
    images = {
        c["image"] for doc in resources() if doc["kind"] in ("Deployment", "Job") for c in pod_spec(doc)["containers"]
    }
    assert images == {SERVER_IMAGE}
    for folder in OVERLAYS:  # one place names the image: the base
        assert folder == BASE or "images" not in kustomization(folder)
    sources = {
        c["image"]
        for path in BASE.glob("*.yaml")
        for doc in documents(path)
        if doc.get("kind") in ("Deployment", "Job")
        for c in pod_spec(doc)["containers"]
    }
    assert sources == {IMAGE["name"]}


@pytest.mark.parametrize("name", APPS)
def test_web_deployments(name):
    deployment = named("Deployment")[f"atlas-{name}"]
    hpa = named("HorizontalPodAutoscaler")[f"atlas-{name}"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (container,) = pod_spec(deployment)["containers"]
    port = build_parser().parse_args(container["args"]).port
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    served = {path for path, _ in route_paths(build_app(name).routes)}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
        assert path in served
    for resource in ("cpu", "memory"):
        assert container["resources"]["requests"][resource]
        assert container["resources"]["limits"][resource]
    service = named("Service")[f"atlas-{name}"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == port
    assert named("PodDisruptionBudget")[f"atlas-{name}"]["spec"]["minAvailable"] == 1


def test_server_pods_run_locked_down():
    for doc in resources(TRIAL):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = pod_spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] == 10001
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert {"configMapRef": {"name": "atlas-config"}} in container["envFrom"]
            assert {"secretRef": {"name": "atlas-secrets"}} in container["envFrom"]


def test_web_services_trust_forwarded_headers_from_the_pod_cidr_only():
    trusted = named("ConfigMap")["atlas-config"]["data"]["FORWARDED_ALLOW_IPS"]
    assert trusted == "10.244.0.0/16"
    settings = settings_from_mapping({"server": {"api_key": "x" * 24}}, {"FORWARDED_ALLOW_IPS": trusted})
    assert settings.forwarded_allow_ips == ("10.244.0.0/16",)


def test_ingress_routes_the_proxy_prefixes():
    routes, tls = {}, set()
    for ingress in named("Ingress").values():
        for entry in ingress["spec"].get("tls", []):
            tls.add(entry["secretName"])
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                routes[path["path"]] = (path["pathType"], path["backend"]["service"], ingress)
    assert tls == {"atlas-tls"}
    proxied = {path for (modifier, path) in locations() if modifier == ""}
    assert set(PREFIXES) == proxied
    for prefix, app in PREFIXES.items():
        path_type, backend, _ = routes[prefix]
        assert path_type == "Prefix"
        assert backend["name"] == f"atlas-{app}"
        deployment = named("Deployment")[f"atlas-{app}"]
        assert (
            backend["port"]["number"] == build_parser().parse_args(pod_spec(deployment)["containers"][0]["args"]).port
        )
    annotations = routes["/api/exports/"][2]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    body = routes["/api/fleet/"][2]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert (
        int(body.rstrip("m")) * 1024 * 1024
        > settings_from_mapping({"server": {"api_key": "x" * 24}}, {}).max_body_bytes
    )


def test_metrics_stay_private_with_any_ingress_controller():
    """No annotation keeps /metrics private: the dashboard's (inside `/`) is routed by the Ingress API's own
    longest-path rule to a Service that selects no pod, and the other services' lie outside their prefixes."""
    routes = {
        path["path"]: path["backend"]["service"]
        for ingress in named("Ingress").values()
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    closed = named("Service")[routes["/metrics"]["name"]]
    assert "selector" not in closed["spec"], "a Service without a selector has no endpoints: 503 everywhere"
    assert routes["/metrics"]["port"]["number"] == closed["spec"]["ports"][0]["port"]
    assert all(doc["kind"] != "Endpoints" for doc in resources()), "no endpoints of its own"
    for prefix, app in PREFIXES.items():
        served = {path for path, _ in route_paths(build_app(app).routes)}
        assert "/metrics" in served
        assert "/metrics".startswith(prefix) == (prefix == "/"), prefix
    for ingress in named("Ingress").values():
        for key in ingress["metadata"].get("annotations", {}):
            assert not re.search(r"(deny|allow)list|whitelist|server-snippet|configuration-snippet", key), key


def test_workers_scale_on_the_queue_the_code_uses():
    from rq import Queue
    from rq import defaults as rq_defaults

    settings = settings_from_mapping({}, {})  # defaults: redis.key_prefix atlas
    # rq keys a queue's job list as <RQ_KEY_PREFIX>:queue:<name>; the default prefix is rq (the suite sets its own).
    assert Queue.redis_queue_namespace_prefix == f"{rq_defaults.RQ_KEY_PREFIX}:queue:"
    expected = f"rq:queue:{settings.queue_name}"
    assert expected == "rq:queue:atlas-batches"
    (scaled,) = named("ScaledObject").values()
    worker = named("Deployment")["atlas-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "atlas-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1, "a running worker moves retried batches back"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == expected
    assert int(trigger["metadata"]["listLength"]) > 0
    address = trigger["metadata"]["addressFromEnv"]
    assert address in named("ConfigMap")["atlas-config"]["data"]
    assert {"configMapRef": {"name": "atlas-config"}} in pod_spec(worker)["containers"][0]["envFrom"]
    for manifest in resources():
        assert "RQ_KEY_PREFIX" not in str(manifest), "the list name above assumes rq's default prefix"
        assert "ATLAS_REDIS_PREFIX" not in str(manifest)


def test_worker_liveness_compiles():
    (container,) = pod_spec(named("Deployment")["atlas-worker"])["containers"]
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    compile(command[2], "probe", "exec")


def test_trial_runs_postgres_and_redis_in_cluster():
    sets = named("StatefulSet", TRIAL)
    assert set(sets) == {"postgres", "redis"}
    assert "StatefulSet" not in {doc["kind"] for doc in resources(BASE)} | {
        doc["kind"] for doc in resources(PRODUCTION)
    }
    (redis,) = pod_spec(sets["redis"])["containers"]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    assert redis["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    (postgres,) = pod_spec(sets["postgres"])["containers"]
    assert postgres["volumeMounts"][0]["mountPath"] == "/var/lib/postgresql/data"
    for stateful in sets.values():
        assert stateful["spec"]["volumeClaimTemplates"]
    services = named("Service", TRIAL)
    assert services["postgres"]["spec"]["ports"][0]["port"] == 5432
    assert services["redis"]["spec"]["ports"][0]["port"] == 6379
    redis_address = named("ConfigMap", TRIAL)["atlas-config"]["data"]["REDIS_ADDRESS"]
    assert redis_address == "redis:6379"
    example = documents(KUBE / "secret.example.yaml")[0]["stringData"]
    assert re.search(r"@postgres:5432/atlas", (KUBE / "secret.example.yaml").read_text())
    assert "POSTGRES_PASSWORD" in example


def test_redis_requires_the_password_in_the_secret():
    """Whoever can write to the queue decides what the workers store: the trial's Redis needs a password,
    and the Secret hands the same one to the services (REDIS_URL) and to KEDA."""
    example = documents(KUBE / "secret.example.yaml")[0]["stringData"]
    assert example["REDIS_URL"].startswith("redis://:REPLACE_ME@")
    (redis,) = pod_spec(named("StatefulSet", TRIAL)["redis"])["containers"]
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == {"name": "atlas-secrets", "key": "REDIS_PASSWORD"}
    assert "REDIS_PASSWORD" in example
    (trigger,) = next(iter(named("ScaledObject").values()))["spec"]["triggers"]
    assert trigger["metadata"]["passwordFromEnv"] == "REDIS_PASSWORD"
    assert "REDIS_PASSWORD" in (TRIAL / "kustomization.yaml").read_text()


def test_only_the_ingress_controller_reaches_the_services_and_only_the_services_their_stores():
    policies = named("NetworkPolicy", TRIAL)
    assert set(policies) == {"atlas-default-deny", "web-from-ingress", "redis-from-atlas", "postgres-from-atlas"}
    deny = policies["atlas-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}, "nothing is let in unless a policy says so"
    pods = {
        pod_spec(doc)["containers"][0]["args"][0]: doc["spec"]["template"]["metadata"]["labels"][
            "app.kubernetes.io/name"
        ]
        for doc in resources(TRIAL)
        if doc["kind"] in ("Deployment", "Job")
    }
    # The web services: from the ingress controller's namespace (and Prometheus'), on their http port only.
    web = policies["web-from-ingress"]["spec"]
    (expression,) = web["podSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("app.kubernetes.io/name", "In")
    assert set(expression["values"]) == {pods[app] for app in APPS}
    (rule,) = web["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]] == [
        "ingress-nginx",
        "monitoring",
    ]
    assert all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
    for app in APPS:
        (container,) = pod_spec(named("Deployment", TRIAL)[f"atlas-{app}"])["containers"]
        assert [port["name"] for port in container["ports"]] == ["http"]
    trial = named("StatefulSet", TRIAL)
    # Redis: ingest queues, the worker dequeues. PostgreSQL: every Atlas service (ingest for enrolled devices).
    wanted = {
        "redis-from-atlas": ("redis", 6379, {pods["ingest"], pods["worker"]}),
        "postgres-from-atlas": (
            "postgres",
            5432,
            {pods[c] for c in ("migrate", "ingest", "worker", "exporter", "dashboard")},
        ),
    }
    for name, (target, port, allowed) in wanted.items():
        policy = policies[name]
        assert policy["metadata"]["namespace"] == "atlas"
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert (
            spec["podSelector"]["matchLabels"].items()
            <= trial[target]["spec"]["template"]["metadata"]["labels"].items()
        )
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        in_namespace = [peer for peer in rule["from"] if "namespaceSelector" not in peer]
        (peer,) = in_namespace
        (expression,) = peer["podSelector"]["matchExpressions"]
        assert expression["key"] == "app.kubernetes.io/name"
        assert expression["operator"] == "In"
        assert set(expression["values"]) == allowed, name
        for other in rule["from"]:
            if "namespaceSelector" in other:  # KEDA's operator, for Redis only
                assert name == "redis-from-atlas"
                assert other["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
                assert other["podSelector"]["matchLabels"]


@pytest.mark.parametrize("folder", OVERLAYS, ids=lambda folder: folder.name)
def test_every_overlay_renders_and_validates(folder):
    """kubernetes-validate (the API's own OpenAPI schemas, strict: no unknown field) over what kustomize renders;
    KEDA's ScaledObject is a custom resource without a schema there."""
    objects = resources(folder)
    assert {doc["kind"] for doc in objects} >= {"Namespace", "ConfigMap", "Job", "Deployment", "Service", "Ingress"}
    unchecked = set()
    for version in KUBERNETES_VERSIONS:
        for doc in objects:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                unchecked.add(doc["kind"])
    assert unchecked == ({"ScaledObject"} if folder == PRODUCTION else set())


@pytest.mark.parametrize("folder", OVERLAYS, ids=lambda folder: folder.name)
def test_python_kustomize_renders_what_kubectl_does(folder):
    """The Python equivalent used where kubectl is missing renders exactly what kubectl kustomize does."""
    if kubectl_kustomize() is None:
        pytest.skip("kubectl (with kustomize v4 or later) is not installed: nothing to compare with")
    ours = {identity(doc): doc for doc in build(folder)}
    assert ours == {identity(doc): doc for doc in rendered(folder)}


def test_an_overlay_inside_its_base_is_a_cycle(tmp_path):
    """The old layout (trial/ inside the base's folder, `resources: [..]`) fails in kustomize; the renderer too."""
    base = tmp_path / "kubernetes"
    (base / "trial").mkdir(parents=True)
    (base / "configmap.yaml").write_text((BASE / "configmap.yaml").read_text())
    (base / "kustomization.yaml").write_text("resources: [configmap.yaml]\n")
    (base / "trial" / "kustomization.yaml").write_text("resources: [..]\n")
    with pytest.raises(KustomizeError, match="cycle detected"):
        build(base / "trial")
    if kubectl_kustomize():
        out = subprocess.run(["kubectl", "kustomize", str(base / "trial")], capture_output=True, text=True)
        assert out.returncode != 0
        assert "cycle detected" in out.stderr
    for folder in OVERLAYS:  # siblings: no kustomization inside another's folder
        assert folder.parent == KUBE
        assert not list(folder.glob("*/**/kustomization.yaml")), folder


def test_keda_is_an_optional_component():
    """The base and the trial apply on a cluster without KEDA (the workers scale on CPU); production adds the
    component, which swaps the worker's HorizontalPodAutoscaler for a ScaledObject, never both."""
    assert kustomization(KEDA)["kind"] == "Component"
    assert kustomization(PRODUCTION)["components"] == ["../components/keda"]
    for folder in OVERLAYS:
        worker = named("Deployment", folder)["atlas-worker"]
        assert "replicas" not in worker["spec"], "the autoscaler owns the count"
        kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in resources(folder)}
        scalers = {kind for kind, name in kinds if name == "atlas-worker"} - {"Deployment"}
        if folder == PRODUCTION:
            assert scalers == {"ScaledObject"}
        else:
            assert scalers == {"HorizontalPodAutoscaler"}, folder
            assert not any(doc["apiVersion"].startswith("keda.sh/") for doc in resources(folder))
            hpa = named("HorizontalPodAutoscaler", folder)["atlas-worker"]
            assert hpa["spec"]["scaleTargetRef"]["name"] == "atlas-worker"
            assert hpa["spec"]["minReplicas"] >= 1, "a running worker moves retried batches back"


@pytest.mark.parametrize("folder", OVERLAYS, ids=lambda folder: folder.name)
def test_the_migrate_job_is_new_for_each_version(folder):
    """A Job's template cannot change in place, and a finished one never runs again: the Job's name carries the
    image's tag, so `kubectl apply -k` after an upgrade creates (and runs) the new version's Job."""
    (job,) = named("Job", folder).values()
    (container,) = pod_spec(job)["containers"]
    tag = container["image"].rsplit(":", 1)[1]
    assert job["metadata"]["name"] == f"atlas-migrate-{tag}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", job["metadata"]["name"])
    assert len(job["metadata"]["name"]) <= 63, "the Job controller labels its pods with the name"
    assert container["args"] == ["migrate"]
