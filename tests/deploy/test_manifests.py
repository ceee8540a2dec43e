"""The Kubernetes manifests render, and agree with the code they deploy, so that neither can drift.

Rendered with the real kustomize (deploy/tools/install-kustomize.sh); compared with pipeline.config
(env var names, defaults), pipeline.ops.server (port, paths), pipeline.kafka.topics (topics) and the CLI.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.config import Settings, env_var, load_settings, settings_fields
from pipeline.kafka.topics import TopicSpec, topic_specs
from pipeline.ops.server import HEALTH_PATH, METRICS_PATH, READY_PATH
from pipeline.policy import load_policy_book
from tests.deploy.rendering import (
    POLICIES_CONFIGMAP,
    REPO_ROOT,
    SETTINGS_CONFIGMAP,
    SETTINGS_SECRET,
    Manifest,
    Rendered,
    containers,
    pod_labels,
    pod_spec,
    selector_matches,
    worker_container,
    workloads,
)
from workers.cli import build_parser

SETTINGS_ENV_VARS = {env_var(f.name) for f in settings_fields()}
DEFAULTS = Settings()
# Which worker each Deployment runs, by its component label, and the consumer group that kind uses.
WORKER_KINDS = {"stream-worker": "stream", "generative-worker": "generative"}
DEFAULT_GROUPS = {"stream": DEFAULTS.stream_group, "generative": DEFAULTS.generative_group}
# Topic settings that differ between environments on purpose (durability), compared separately.
REPLICATION_CONFIGS = {"min.insync.replicas"}


def settings_of(rendered: Rendered) -> Settings:
    return load_settings(environ=rendered.settings_environ())


def worker_kind(deployment: Manifest) -> str:
    return WORKER_KINDS[pod_labels(deployment)["app.kubernetes.io/component"]]


def guardstream_args(container: dict[str, Any]) -> list[str]:
    """The guardstream command line a container runs: directly, or exec'd from a `sh -c` script."""
    command, args = container["command"], container.get("args", [])
    if command == ["guardstream"]:
        return list(args)
    assert command == ["/bin/sh", "-c"] and len(args) == 1, f"{container['name']}: unexpected command {command}"
    invocations = [part.split("exec guardstream ", 1)[1] for part in args[0].split(";") if "exec guardstream " in part]
    assert len(invocations) == 1, f"{container['name']}: the script must exec exactly one guardstream command"
    return shlex.split(invocations[0])


def parse_cli(args: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"`guardstream {' '.join(args)}` is not a valid command line") from exc


def kafka_topics(rendered: Rendered) -> dict[str, Manifest]:
    return {t["spec"]["topicName"]: t for t in rendered.of_kind("KafkaTopic")}


def topic_fields(spec: TopicSpec) -> tuple[str, int, dict[str, str]]:
    config = {k: v for k, v in spec.config.items() if k not in REPLICATION_CONFIGS}
    return spec.name, spec.partitions, config


def kafka_topic_fields(topic: Manifest) -> tuple[str, int, dict[str, str]]:
    config = {k: str(v) for k, v in topic["spec"].get("config", {}).items() if k not in REPLICATION_CONFIGS}
    return topic["spec"]["topicName"], topic["spec"]["partitions"], config


def port_of(address: str, default: int) -> int:
    return urlsplit(f"//{address}" if "://" not in address else address).port or default


# --- rendering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", "topics", "dev", "prod"])
def test_kustomization_renders_named_kubernetes_objects(rendered_all: dict[str, Rendered], name: str) -> None:
    manifests = rendered_all[name].manifests
    assert manifests, f"{name} renders nothing"
    for m in manifests:
        assert m.get("apiVersion") and m.get("kind") and m.get("metadata", {}).get("name"), m


def test_workers_and_topics_live_in_their_own_namespaces(rendered_all: dict[str, Rendered]) -> None:
    # Strimzi's Topic Operator watches the Kafka cluster's namespace, not guardstream's.
    prod = rendered_all["prod"]
    (namespace,) = prod.of_kind("Namespace")
    topic_namespaces = {t["metadata"].get("namespace") for t in prod.of_kind("KafkaTopic")}
    assert len(topic_namespaces) == 1 and None not in topic_namespaces
    assert namespace["metadata"]["name"] not in topic_namespaces
    for m in prod.manifests:
        if m["kind"] not in ("Namespace", "KafkaTopic"):
            assert m["metadata"].get("namespace") == namespace["metadata"]["name"], (m["kind"], m["metadata"]["name"])


# --- settings ----------------------------------------------------------------------------------------


def test_every_env_var_the_manifests_set_is_a_settings_variable(workers_rendered: Rendered) -> None:
    environ = workers_rendered.settings_environ()
    assert environ, "no settings ConfigMap/Secret rendered"
    named = set(environ)
    for workload in workloads(workers_rendered):
        for container in containers(workload):
            named |= {e["name"] for e in container.get("env", [])}
    for scaled in workers_rendered.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            named |= {v for k, v in trigger["metadata"].items() if k.endswith("FromEnv")}
    assert named - SETTINGS_ENV_VARS == set(), "not GUARD_* variables of pipeline.config.Settings"


def test_configmap_and_secret_values_are_valid_settings(workers_rendered: Rendered) -> None:
    settings = settings_of(workers_rendered)  # raises ConfigError on a bad int, bool or choice
    assert settings.topic_in and settings.partitions > 0


def test_containers_read_the_rendered_settings_configmap_and_secret(workers_rendered: Rendered) -> None:
    configmap = workers_rendered.named("ConfigMap", SETTINGS_CONFIGMAP)
    secret = workers_rendered.named("Secret", SETTINGS_SECRET)
    assert configmap is not None and secret is not None
    for workload in workloads(workers_rendered):
        for container in containers(workload):
            sources = container.get("envFrom", [])
            configmaps = {s["configMapRef"]["name"] for s in sources if "configMapRef" in s}
            assert configmap["metadata"]["name"] in configmaps, container["name"]
        worker_sources = worker_container(workload).get("envFrom", []) if workload["kind"] == "Deployment" else []
        if worker_sources:
            secrets = {s["secretRef"]["name"] for s in worker_sources if "secretRef" in s}
            assert secret["metadata"]["name"] in secrets


def test_the_policy_file_setting_points_at_the_mounted_policies(workers_rendered: Rendered, tmp_path: Path) -> None:
    settings = settings_of(workers_rendered)
    policies = workers_rendered.named("ConfigMap", POLICIES_CONFIGMAP)
    assert policies is not None
    policy_file = PurePosixPath(settings.policy_file)
    (key,) = policies["data"]
    assert policy_file.name == key
    local = tmp_path / key
    local.write_text(policies["data"][key], encoding="utf-8")
    book = load_policy_book(str(local), settings.default_policy)
    assert book.tenants, "the sample policy file should show per-tenant policies"
    for deployment in workers_rendered.of_kind("Deployment"):
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        mounts = {
            PurePosixPath(m["mountPath"]): volumes[m["name"]] for m in worker_container(deployment)["volumeMounts"]
        }
        volume = mounts.get(policy_file.parent)
        assert volume is not None and volume.get("configMap", {}).get("name") == policies["metadata"]["name"]


# --- the CLI -----------------------------------------------------------------------------------------


def test_every_container_command_line_is_accepted_by_the_cli(workers_rendered: Rendered) -> None:
    for workload in workloads(workers_rendered):
        for container in containers(workload):
            parse_cli(guardstream_args(container))


def test_the_onnx_export_has_the_precision_the_settings_ask_for(workers_rendered: Rendered) -> None:
    settings = settings_of(workers_rendered)
    expected = "fp32" if settings.precision == "auto" else settings.precision
    exports = [parse_cli(guardstream_args(c)) for job in workers_rendered.of_kind("Job") for c in containers(job)]
    exports = [e for e in exports if e.command == "export"]
    assert len(exports) == 1, "the Job that exports the stream model once is gone"
    assert exports[0].precision == expected
    assert exports[0].out.name.endswith(expected), "an export folder holds one precision only"


def test_stream_pods_load_the_export_the_job_writes_and_never_export_themselves(workers_rendered: Rendered) -> None:
    (job,) = [j for j in workers_rendered.of_kind("Job")
              if any("export" in guardstream_args(c) for c in containers(j))]
    (export,) = [parse_cli(guardstream_args(c)) for c in containers(job)]
    stream = [d for d in workers_rendered.of_kind("Deployment") if worker_kind(d) == "stream"]
    for deployment in stream:
        assert not pod_spec(deployment).get("initContainers"), "a stream pod exports at start again"
        model = PurePosixPath(vars(parse_cli(worker_container(deployment)["args"]))["model"])
        assert model == PurePosixPath(str(export.out))

        def claim(workload: Manifest, path: PurePosixPath, container: dict[str, Any]) -> str:
            volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
            mount = max((m for m in container["volumeMounts"]
                         if path == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in path.parents),
                        key=lambda m: len(m["mountPath"]))
            return str(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])

        (job_container,) = list(containers(job))
        assert claim(deployment, model, worker_container(deployment)) == claim(job, model, job_container)


def test_each_deployment_runs_the_worker_its_labels_name(workers_rendered: Rendered) -> None:
    deployments = workers_rendered.of_kind("Deployment")
    assert {worker_kind(d) for d in deployments} == set(WORKER_KINDS.values())
    for deployment in deployments:
        args = worker_container(deployment)["args"]
        assert args[:2] == ["worker", worker_kind(deployment)]
        model = PurePosixPath(vars(parse_cli(args))["model"])
        mounted = [PurePosixPath(m["mountPath"]) for m in worker_container(deployment)["volumeMounts"]]
        assert any(model == p or p in model.parents for p in mounted), f"--model {model} is not on a volume"


# --- operations endpoint -----------------------------------------------------------------------------


def test_worker_port_and_probes_match_the_ops_server(workers_rendered: Rendered) -> None:
    settings = settings_of(workers_rendered)
    assert settings.metrics_port == DEFAULTS.metrics_port
    for deployment in workers_rendered.of_kind("Deployment"):
        worker = worker_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert ports == {"metrics": settings.metrics_port}
        assert worker["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "metrics"}
        assert worker["livenessProbe"]["httpGet"] == {"path": HEALTH_PATH, "port": "metrics"}
        assert worker["startupProbe"]["httpGet"] == {"path": HEALTH_PATH, "port": "metrics"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(settings.metrics_port)
        assert annotations["prometheus.io/path"] == METRICS_PATH


def test_services_and_service_monitor_expose_the_metrics_port(rendered_all: dict[str, Rendered]) -> None:
    prod = rendered_all["prod"]
    services = prod.of_kind("Service")
    for deployment in prod.of_kind("Deployment"):
        labels = pod_labels(deployment)
        matching = [s for s in services if selector_matches({"matchLabels": s["spec"]["selector"]}, labels)]
        assert matching, f"no Service selects {deployment['metadata']['name']}"
        assert {p["name"]: p["targetPort"] for s in matching for p in s["spec"]["ports"]} == {"metrics": "metrics"}
    (monitor,) = prod.of_kind("ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", METRICS_PATH)]
    assert all(selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"]) for s in services)


# --- topics ------------------------------------------------------------------------------------------


def test_strimzi_topics_equal_what_guardstream_topics_creates_by_default(rendered_all: dict[str, Rendered]) -> None:
    topics = kafka_topics(rendered_all["topics"])
    specs = topic_specs(DEFAULTS)
    assert set(topics) == {s.name for s in specs}
    for spec in specs:
        topic = topics[spec.name]["spec"]
        assert topic["partitions"] == spec.partitions, spec.name
        assert topic["replicas"] == spec.replication_factor, spec.name
        assert {k: str(v) for k, v in topic["config"].items()} == spec.config, spec.name
    assert all(t["metadata"]["labels"].get("strimzi.io/cluster") for t in topics.values())


def test_prod_topics_match_topic_specs_apart_from_replication(rendered_all: dict[str, Rendered]) -> None:
    prod = rendered_all["prod"]
    topics = kafka_topics(prod)
    specs = topic_specs(settings_of(prod))
    assert sorted(kafka_topic_fields(t) for t in topics.values()) == sorted(topic_fields(s) for s in specs)


def test_prod_topics_keep_acknowledged_writes_through_a_broker_loss(rendered_all: dict[str, Rendered]) -> None:
    prod = rendered_all["prod"]
    settings = settings_of(prod)
    for name, topic in kafka_topics(prod).items():
        replicas = topic["spec"]["replicas"]
        min_insync = int(topic["spec"]["config"]["min.insync.replicas"])
        assert replicas >= 3 and 2 <= min_insync < replicas, name
        # `guardstream topics` run with the prod settings would ask for the same replication.
        assert replicas == settings.replication_factor, name


# --- autoscaling -------------------------------------------------------------------------------------


def scaled_objects_by_target(rendered: Rendered) -> dict[str, Manifest]:
    return {s["spec"]["scaleTargetRef"]["name"]: s for s in rendered.of_kind("ScaledObject")}


def test_keda_scales_each_worker_on_its_own_consumer_group_lag(rendered_all: dict[str, Rendered]) -> None:
    prod = rendered_all["prod"]
    settings = settings_of(prod)
    by_target = scaled_objects_by_target(prod)
    deployments = prod.of_kind("Deployment")
    assert set(by_target) == {d["metadata"]["name"] for d in deployments}
    for deployment in deployments:
        kind = worker_kind(deployment)
        (trigger,) = by_target[deployment["metadata"]["name"]]["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == DEFAULT_GROUPS[kind] == getattr(settings, f"{kind}_group")
        assert meta["topic"] == settings.topic_in
        assert meta["bootstrapServersFromEnv"] == env_var("kafka_bootstrap")
        assert int(meta["lagThreshold"]) > 0
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count; kubectl apply would fight it"


def test_keda_never_scales_past_the_input_partitions(rendered_all: dict[str, Rendered]) -> None:
    prod = rendered_all["prod"]
    settings = settings_of(prod)
    (input_spec,) = [s for s in topic_specs(settings) if s.name == settings.topic_in]
    input_topic = kafka_topics(prod)[settings.topic_in]
    for scaled in prod.of_kind("ScaledObject"):
        spec: dict[str, Any] = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["maxReplicaCount"] <= input_spec.partitions == input_topic["spec"]["partitions"]
        assert all(str(t["metadata"].get("allowIdleConsumers", "false")) == "false" for t in spec["triggers"])


# --- pods --------------------------------------------------------------------------------------------


def test_every_pod_runs_as_a_non_root_user_without_privileges(workers_rendered: Rendered) -> None:
    for workload in workloads(workers_rendered):
        pod = pod_spec(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, workload["metadata"]["name"]
        for container in containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, container["name"]
            assert security["capabilities"]["drop"] == ["ALL"], container["name"]


def test_every_container_declares_cpu_and_memory(workers_rendered: Rendered) -> None:
    for workload in workloads(workers_rendered):
        for container in containers(workload):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_workers_get_longer_to_stop_than_the_kubernetes_default(workers_rendered: Rendered) -> None:
    # 30 s is the default; a worker must finish its batch, flush verdicts and commit (docs/deploy.md).
    for deployment in workers_rendered.of_kind("Deployment"):
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > 30


def test_every_deployment_has_a_disruption_budget(workers_rendered: Rendered) -> None:
    budgets = workers_rendered.of_kind("PodDisruptionBudget")
    for deployment in workers_rendered.of_kind("Deployment"):
        matching = [b for b in budgets if selector_matches(b["spec"]["selector"], pod_labels(deployment))]
        assert len(matching) == 1, deployment["metadata"]["name"]


def test_network_policy_admits_scrapes_and_reaches_dns_kafka_and_redis(workers_rendered: Rendered) -> None:
    settings = settings_of(workers_rendered)
    (policy,) = workers_rendered.of_kind("NetworkPolicy")
    spec = policy["spec"]
    for deployment in workers_rendered.of_kind("Deployment"):
        assert selector_matches(spec["podSelector"], pod_labels(deployment))
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert [p["port"] for rule in spec["ingress"] for p in rule["ports"]] == ["metrics"]
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    kafka_ports = {port_of(a.strip(), 9092) for a in settings.kafka_bootstrap.split(",")}
    assert {53, port_of(settings.redis_url, 6379)} | kafka_ports <= egress_ports


def test_prod_workers_each_get_a_gpu_on_gpu_nodes(rendered_all: dict[str, Rendered]) -> None:
    prod = rendered_all["prod"]
    assert settings_of(prod).device == "cuda"
    for deployment in prod.of_kind("Deployment"):
        resources = worker_container(deployment)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
        spec = pod_spec(deployment)
        assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_dev_workers_run_on_cpu_without_gpus(rendered_all: dict[str, Rendered]) -> None:
    dev = rendered_all["dev"]
    assert settings_of(dev).device == "cpu"
    for workload in workloads(dev):
        for container in containers(workload):
            assert "nvidia.com/gpu" not in str(container["resources"])


@pytest.mark.parametrize(("overlay", "stream_image"), [("dev", "stream-cpu"), ("prod", "stream-cuda")])
def test_worker_images_are_the_ones_the_dockerfiles_build(
    rendered_all: dict[str, Rendered], overlay: str, stream_image: str
) -> None:
    images: dict[str, str] = {}
    for workload in workloads(rendered_all[overlay]):
        for container in containers(workload):
            repository = container["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
            assert repository.startswith("guardstream-"), container["image"]
            dockerfile = REPO_ROOT / "deploy" / "docker" / f"{repository.removeprefix('guardstream-')}.Dockerfile"
            assert dockerfile.is_file(), f"{container['image']} has no {dockerfile.relative_to(REPO_ROOT)}"
            if workload["kind"] == "Deployment" and container["name"] == "worker":
                images[worker_kind(workload)] = repository
    assert images == {"stream": f"guardstream-{stream_image}", "generative": "guardstream-generative"}


# --- monitoring and Redis ----------------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    from workers.generative.metrics import GenMetrics
    from workers.stream.metrics import StreamMetrics

    names: set[str] = set()
    for metrics in (StreamMetrics(), GenMetrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            names.update({f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count",
                          f"{family.name}_sum"} if family.type in ("counter", "histogram") else set())
    return names


def _guardstream_metrics_in(text: str) -> set[str]:
    import re

    return set(re.findall(r"\bguardstream_[a-z0-9_]+", text))


def test_alerts_cover_lag_dlq_fail_open_health_and_latency_with_metrics_that_exist(
    rendered_all: dict[str, Rendered]
) -> None:
    (rule,) = rendered_all["prod"].of_kind("PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    text = " ".join(alerts.values())
    for needed in ("consumer_lag", "dlq", "verdict_latency", "assigned_partitions", "up{"):
        assert needed in text, needed
    assert any("FailOpen" in name for name in alerts)
    used = _guardstream_metrics_in(text)
    assert used and used <= _exported_metric_names(), used - _exported_metric_names()


def test_grafana_dashboard_uses_only_metrics_that_exist(rendered_all: dict[str, Rendered]) -> None:
    import json

    dashboard = rendered_all["prod"].named("ConfigMap", "guardstream-grafana-dashboard")
    assert dashboard is not None and dashboard["metadata"]["labels"].get("grafana_dashboard") == "1"
    (content,) = dashboard["data"].values()
    panels = json.loads(content)["panels"]
    used = _guardstream_metrics_in(" ".join(t["expr"] for p in panels for t in p["targets"]))
    assert len(used) >= 8 and used <= _exported_metric_names(), used - _exported_metric_names()


def test_the_redis_manifest_persists_and_never_evicts(rendered_all: dict[str, Rendered]) -> None:
    redis = rendered_all["redis"]
    config = redis.named("ConfigMap", "guardstream-redis-config")
    assert config is not None
    lines = {line.split()[0]: line.split()[1:] for line in config["data"]["redis.conf"].splitlines()
             if line.strip() and not line.startswith("#")}
    assert lines["maxmemory-policy"] == ["noeviction"] and lines["appendonly"] == ["yes"]
    (statefulset,) = redis.of_kind("StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (container,) = pod_spec(statefulset)["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"] and claim["metadata"]["name"] == "data"
    assert pod_spec(statefulset)["securityContext"]["runAsNonRoot"] is True
