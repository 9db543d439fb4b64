"""k8s/: rendered with kustomize (base and overlay), every resource validated: Kubernetes' own kinds against
the API schemas (kubernetes-validate, strict: unknown fields are errors), PodMonitor and PrometheusRule
against the Prometheus Operator's CRD schemas, KafkaTopic resources against what `observer topics strimzi`
renders from topics/ (they must not drift). scripts/install_k8s_tools.sh (run by `make test`) provides
kustomize and the CRDs. Each validator is shown to fail on a broken copy."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator

from app.topics import load_topics, strimzi_topics

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUSTOMIZE = ROOT / ".local" / "bin" / "kustomize"
CRDS = ROOT / ".local" / "schemas" / "crds"
NODE_MODULES = ROOT / ".local" / "node" / "node_modules"
STRIMZI_VALIDATE = Path(__file__).resolve().parent / "strimzi_validate.mjs"
K8S_VERSION = "1.31"
INSTALL = "bash scripts/install_k8s_tools.sh"
OPERATOR_KINDS = {"PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}


def build(directory: Path) -> list[dict[str, Any]]:
    assert KUSTOMIZE.exists(), f"kustomize is missing: {INSTALL}"
    result = subprocess.run([str(KUSTOMIZE), "build", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return build(K8S / "overlays" / "production")


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def crd_validator(kind: str) -> Draft7Validator:
    path = CRDS / f"monitoring.coreos.com_{OPERATOR_KINDS[kind]}.yaml"
    assert path.exists(), f"{path.name} is missing: {INSTALL}"
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return Draft7Validator(version["schema"]["openAPIV3Schema"])


def strimzi_errors(docs: list[dict[str, Any]]) -> list[list[str]]:
    """Errors of each KafkaTopic against Strimzi's v1beta2 schema (Node runs the package's compiled validator)."""
    node = shutil.which("node")
    assert node and NODE_MODULES.exists(), f"Node and Strimzi's schemas are needed: {INSTALL}"
    result = subprocess.run(
        [node, str(STRIMZI_VALIDATE), str(NODE_MODULES)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    errors: list[list[str]] = json.loads(result.stdout)
    return errors


def problems(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one rendered resource (empty when valid)."""
    kind = doc["kind"]
    if kind in OPERATOR_KINDS:
        return [e.message for e in crd_validator(kind).iter_errors(doc)]
    if kind == "KafkaTopic":
        schema_errors = strimzi_errors([doc])[0]
        if schema_errors:
            return schema_errors
        expected = {t["metadata"]["name"]: t for t in strimzi_topics(load_topics(), "observer-kafka", 3, 2)}
        mine = copy.deepcopy(doc)
        mine["metadata"].pop("namespace", None)
        mine["metadata"]["labels"].pop("app.kubernetes.io/part-of", None)
        want = copy.deepcopy(expected.get(doc["metadata"]["name"], {}))
        if want:
            want["metadata"]["labels"].pop("app.kubernetes.io/part-of", None)
        return [] if mine == want else [f"KafkaTopic {doc['metadata']['name']} differs from topics/topics.toml"]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc).splitlines()[0]]
    return []


# --- rendering and validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["base", "overlays/production"])
def test_every_rendered_resource_is_valid(directory: str) -> None:
    docs = build(K8S / directory)
    assert {d["kind"] for d in docs} >= {"Deployment", "StatefulSet", "PodMonitor", "PrometheusRule", "KafkaTopic"}
    found = {f"{d['kind']}/{d['metadata']['name']}": problems(d) for d in docs}
    assert {k: v for k, v in found.items() if v} == {}


def wrong_replicas(docs: list[dict[str, Any]]) -> dict[str, Any]:
    d = copy.deepcopy(of_kind(docs, "Deployment")[0])
    d["spec"]["replicas"] = "one"
    return d


def unknown_field(docs: list[dict[str, Any]]) -> dict[str, Any]:
    d = copy.deepcopy(of_kind(docs, "StatefulSet")[0])
    d["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRefs"] = {"name": "x"}
    return d


def podmonitor_interval_as_number(docs: list[dict[str, Any]]) -> dict[str, Any]:
    d = copy.deepcopy(of_kind(docs, "PodMonitor")[0])
    d["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    return d


def rule_without_expr(docs: list[dict[str, Any]]) -> dict[str, Any]:
    d = copy.deepcopy(of_kind(docs, "PrometheusRule")[0])
    del d["spec"]["groups"][1]["rules"][0]["expr"]
    return d


def drifted_topic(docs: list[dict[str, Any]]) -> dict[str, Any]:
    d = copy.deepcopy(of_kind(docs, "KafkaTopic")[0])
    d["spec"]["partitions"] = 6
    return d


@pytest.mark.parametrize(
    "breakage", [wrong_replicas, unknown_field, podmonitor_interval_as_number, rule_without_expr, drifted_topic]
)
def test_validation_bites_on_a_broken_resource(
    production: list[dict[str, Any]], breakage: Callable[[list[dict[str, Any]]], dict[str, Any]]
) -> None:
    assert problems(breakage(production)), f"{breakage.__name__} went unnoticed"


def test_strimzis_schema_refuses_a_bad_topic_on_its_own(production: list[dict[str, Any]]) -> None:
    topic = of_kind(production, "KafkaTopic")[0]
    zero = copy.deepcopy(topic)
    zero["spec"]["partitions"] = 0
    text_replicas = copy.deepcopy(topic)
    text_replicas["spec"]["replicas"] = "3"
    good, bad_partitions, bad_replicas = strimzi_errors([topic, zero, text_replicas])
    assert good == []
    assert any("/spec/partitions minimum" in e for e in bad_partitions), bad_partitions
    assert any("/spec/replicas type" in e for e in bad_replicas), bad_replicas


def test_kustomize_refuses_a_kustomization_with_a_missing_resource(tmp_path: Path) -> None:
    copy_dir = tmp_path / "k8s"
    shutil.copytree(K8S, copy_dir)
    (copy_dir / "base" / "sink.yaml").unlink()
    result = subprocess.run([str(KUSTOMIZE), "build", str(copy_dir / "base")], capture_output=True, text=True)
    assert result.returncode != 0 and "sink.yaml" in result.stderr


# --- what the manifests must say ----------------------------------------------------------------------------


def test_the_topics_file_is_what_observer_topics_strimzi_renders() -> None:
    rendered = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "observer"), "topics", "strimzi"], capture_output=True, text=True, check=True
    ).stdout
    assert (K8S / "base" / "kafka-topics.yaml").read_text() == rendered, "regenerate: observer topics strimzi > ..."
    names = {t["metadata"]["name"] for t in yaml.safe_load_all(rendered)}
    assert names == set(load_topics())


def test_the_prometheus_rule_is_monitoring_rules_yml() -> None:
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "rules.yml").read_text())
    assert rule["spec"]["groups"] == rules["groups"], "k8s/base/prometheusrule.yaml drifted from rules.yml"


def test_the_bridge_is_one_pod_per_app_key_replaced_not_rolled(production: list[dict[str, Any]]) -> None:
    bridges = of_kind(production, "Deployment")
    assert [b["metadata"]["name"] for b in bridges] == ["observer-bridge-main"]
    spec = bridges[0]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["OBSERVER_BRIDGE_APP_KEY_ID"]["value"] == "main"
    for name in ("OBSERVER_KIS_APP_KEY", "OBSERVER_KIS_APP_SECRET"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"] == "kis-credentials-main"


def test_workers_keep_their_state_across_restarts(production: list[dict[str, Any]]) -> None:
    sets = {s["metadata"]["name"]: s["spec"] for s in of_kind(production, "StatefulSet")}
    for name in ("observer-worker", "observer-sink"):
        claims = [c["metadata"]["name"] for c in sets[name]["volumeClaimTemplates"]]
        mounts = {m["name"] for m in sets[name]["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert set(claims) <= mounts, f"{name} does not mount its claim"
    assert sets["observer-worker"]["replicas"] == 2


def test_no_secret_value_and_every_pod_runs_as_non_root(production: list[dict[str, Any]]) -> None:
    assert not of_kind(production, "Secret"), "Secrets are created by the operator, never kept in git"
    for workload in of_kind(production, "Deployment") + of_kind(production, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        container = pod["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"].startswith("registry.example.internal/krx-observer:")


def test_the_pod_monitor_finds_every_pod_and_its_port(production: list[dict[str, Any]]) -> None:
    monitor = of_kind(production, "PodMonitor")[0]["spec"]
    wanted = set(monitor["selector"]["matchExpressions"][0]["values"])
    ports = {e["port"] for e in monitor["podMetricsEndpoints"]}
    for workload in of_kind(production, "Deployment") + of_kind(production, "StatefulSet"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] in wanted
        names = {p["name"] for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert names & ports, f"{workload['metadata']['name']} exposes no port the PodMonitor scrapes"
