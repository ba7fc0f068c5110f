"""deploy/kubernetes/, checked without a cluster: every manifest parses, every container of the server
image runs an `atlas-server` subcommand that parses, probes use paths the apps serve, the Ingress routes
the proxy's prefixes to the right Services, and KEDA watches the very Redis list the workers read."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from atlas.core.config import settings_from_mapping
from atlas.server.cli import build_parser
from tests.deploy.test_proxy import APPS, PREFIXES, build_app, locations, route_paths

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SERVER_IMAGE = "atlas-server"  # kustomization.yaml's `images:` turns it into the registry's name and tag


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def resources(folder: Path = KUBE) -> list[dict]:
    """The objects `kubectl apply -k folder` creates, overlays followed to their bases."""
    found = []
    for entry in kustomization(folder)["resources"]:
        path = (folder / entry).resolve()
        found += resources(path) if path.is_dir() else documents(path)
    return found


def named(kind: str, folder: Path = KUBE) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in resources(folder) if doc["kind"] == kind}


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def server_containers(folder: Path = KUBE) -> list[tuple[str, dict]]:
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
    for folder in (KUBE, KUBE / "trial"):
        for entry in kustomization(folder)["resources"]:
            assert (folder / entry).exists(), (folder, entry)
    assert "secret.example.yaml" not in kustomization(KUBE)["resources"]
    assert all(doc["kind"] != "Secret" for doc in resources(KUBE / "trial"))
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
    assert [i["name"] for i in kustomization(KUBE)["images"]] == [SERVER_IMAGE]


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
    for doc in resources():
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
    # /metrics: every client denied
    metrics = routes["/metrics"][2]["metadata"]["annotations"]
    assert metrics["nginx.ingress.kubernetes.io/denylist-source-range"] == "0.0.0.0/0,::/0"


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
    sets = named("StatefulSet", KUBE / "trial")
    assert set(sets) == {"postgres", "redis"}
    assert "StatefulSet" not in {doc["kind"] for doc in resources(KUBE)}
    (redis,) = pod_spec(sets["redis"])["containers"]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    assert redis["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    (postgres,) = pod_spec(sets["postgres"])["containers"]
    assert postgres["volumeMounts"][0]["mountPath"] == "/var/lib/postgresql/data"
    for stateful in sets.values():
        assert stateful["spec"]["volumeClaimTemplates"]
    services = named("Service", KUBE / "trial")
    assert services["postgres"]["spec"]["ports"][0]["port"] == 5432
    assert services["redis"]["spec"]["ports"][0]["port"] == 6379
    redis_address = named("ConfigMap", KUBE / "trial")["atlas-config"]["data"]["REDIS_ADDRESS"]
    assert redis_address == "redis:6379"
    example = documents(KUBE / "secret.example.yaml")[0]["stringData"]
    assert re.search(r"@postgres:5432/atlas", (KUBE / "secret.example.yaml").read_text())
    assert "POSTGRES_PASSWORD" in example


def test_redis_requires_the_password_in_the_secret():
    """Whoever can write to the queue decides what the workers store: the trial's Redis needs a password,
    and the Secret hands the same one to the services (REDIS_URL) and to KEDA."""
    example = documents(KUBE / "secret.example.yaml")[0]["stringData"]
    assert example["REDIS_URL"].startswith("redis://:REPLACE_ME@")
    (redis,) = pod_spec(named("StatefulSet", KUBE / "trial")["redis"])["containers"]
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert env["REDIS_PASSWORD"] == env["REDISCLI_AUTH"] == {"name": "atlas-secrets", "key": "REDIS_PASSWORD"}
    assert "REDIS_PASSWORD" in example
    (trigger,) = next(iter(named("ScaledObject").values()))["spec"]["triggers"]
    assert trigger["metadata"]["passwordFromEnv"] == "REDIS_PASSWORD"
    assert "REDIS_PASSWORD" in (KUBE / "trial" / "kustomization.yaml").read_text()


def built(folder: Path) -> list[dict]:
    """What `kubectl kustomize folder` renders: the check that kustomize itself accepts the files."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def test_only_atlas_pods_reach_redis_and_postgres():
    rendered = built(KUBE)
    policies = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "NetworkPolicy"}
    assert set(policies) == {"redis-from-atlas", "postgres-from-atlas"}
    pods = {
        pod_spec(doc)["containers"][0]["args"][0]: doc["spec"]["template"]["metadata"]["labels"][
            "app.kubernetes.io/name"
        ]
        for doc in rendered
        if doc["kind"] in ("Deployment", "Job")
    }
    trial = named("StatefulSet", KUBE / "trial")
    # Redis: ingest queues, the worker dequeues. PostgreSQL: everything but ingest.
    wanted = {
        "redis-from-atlas": ("redis", 6379, {pods["ingest"], pods["worker"]}),
        "postgres-from-atlas": ("postgres", 5432, {pods[c] for c in ("migrate", "worker", "exporter", "dashboard")}),
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
