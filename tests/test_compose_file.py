"""docker-compose.kafka.yml: valid Compose, and the same safe stack that `observer stack up` runs.

The file is validated against the official Compose Specification JSON schema, fetched from a pinned
PyPI package by scripts/fetch_compose_schema.sh into .local/schemas/ (never committed). A missing
schema fails these tests, with the command that fetches it: a validation that silently skips is no
validation. The validator class follows the schema's own ``$schema`` dialect: the current schema is
draft 2020-12 and relies on ``unevaluatedProperties``, which a draft-07 validator would ignore (a
misspelled service key would then pass); ``test_validator_rejects_broken_copies`` proves it bites.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft201909Validator, Draft202012Validator
from jsonschema.protocols import Validator

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.kafka.yml"
SCHEMA_FILE = ROOT / os.environ.get("COMPOSE_SCHEMA_PATH", ".local/schemas/compose-spec.json")
FETCH_COMMAND = "bash scripts/fetch_compose_schema.sh"

DIALECTS: dict[str, type[Validator]] = {
    "draft-07": Draft7Validator,
    "draft/2019-09": Draft201909Validator,
    "draft/2020-12": Draft202012Validator,
}
LOOPBACK = "127.0.0.1"
INTERPOLATION = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):-(?P<default>[^}]*)\}$")
SIZE = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[bkmg]?)b?$", re.IGNORECASE)


# ------------------------------------------------------------------------------------------ helpers


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict), f"{COMPOSE_FILE.name} is not a YAML mapping"
    return doc


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two Compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def size_bytes(text: str | int) -> int:
    """'512m', '1g', '1.5G', 1048576 -> bytes (Compose's byte units)."""
    if isinstance(text, int):
        return text
    m = SIZE.match(text.strip())
    assert m, f"not a Compose byte size: {text!r}"
    return int(float(m["n"]) * 1024 ** "bkmg".index((m["unit"] or "b").lower()))


def default_of(value: str | int) -> int:
    """A published port as Compose resolves it with no variable set: '${VAR:-19092}' -> 19092."""
    if isinstance(value, int):
        return value
    m = INTERPOLATION.match(value)
    return int(m["default"] if m else value)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'PLAINTEXT://:9092,HOST://127.0.0.1:19092' -> {'PLAINTEXT': ('', 9092), 'HOST': ('127.0.0.1', 19092)}."""
    out: dict[str, tuple[str, int]] = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.partition(":")  # hosts here are names or IPv4; the port may be '${VAR:-N}'
        out[name] = (host, default_of(port))
    return out


# ----------------------------------------------------------------------------------------- fixtures


@functools.cache
def compose_validator() -> Validator:
    """The schema's validator. Called inside each test, so a missing schema FAILS the test (never skips)."""
    if not SCHEMA_FILE.is_file():
        pytest.fail(
            f"the Compose Specification schema is missing: {SCHEMA_FILE} does not exist. "
            f"Run `{FETCH_COMMAND}` from the repository root (`make setup` runs it) and test again.",
            pytrace=False,
        )
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema.get("title") == "Compose Specification", f"{SCHEMA_FILE} is not it; run `{FETCH_COMMAND} --force`"
    dialect = schema.get("$schema", "")
    cls = next((c for marker, c in DIALECTS.items() if marker in dialect), None)
    assert cls is not None, f"unknown JSON Schema dialect {dialect!r} in {SCHEMA_FILE}"
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def schema_errors(validator: Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


# ------------------------------------------------------------------------------------------- schema


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert schema_errors(compose_validator(), load_compose()) == []


def _ports_not_a_list(doc: dict[str, Any]) -> None:
    doc["services"]["kafka"]["ports"] = "not-a-list"


def _unknown_top_level_key(doc: dict[str, Any]) -> None:
    doc["servicez"] = {}


def _misspelled_service_key(doc: dict[str, Any]) -> None:
    doc["services"]["postgres"]["helthcheck"] = doc["services"]["postgres"].pop("healthcheck")


def _misspelled_memory_limit(doc: dict[str, Any]) -> None:
    limits = doc["services"]["kafka"]["deploy"]["resources"]["limits"]
    limits["memroy"] = limits.pop("memory")


def _healthcheck_retries_as_list(doc: dict[str, Any]) -> None:
    doc["services"]["kafka"]["healthcheck"]["retries"] = [3]


@pytest.mark.parametrize(
    "breakage",
    [
        _ports_not_a_list,
        _unknown_top_level_key,
        _misspelled_service_key,
        _misspelled_memory_limit,
        _healthcheck_retries_as_list,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_validator_rejects_broken_copies(breakage: Callable[[dict[str, Any]], None]) -> None:
    broken = copy.deepcopy(load_compose())
    breakage(broken)
    assert schema_errors(compose_validator(), broken), f"the schema accepted a compose file with {breakage.__name__}"


# -------------------------------------------------------------------------------- our own rules


def test_compose_v2_file_with_project_name(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the top-level `version` key is obsolete in the Compose Specification"
    assert compose["name"] == "krx-observer"
    assert set(compose["services"]) >= {"kafka", "postgres", "topics"}


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", f"{name}: host networking publishes every port"
        for port in service.get("ports", []):
            where = f"{name}: port {port!r}"
            if isinstance(port, dict):
                assert port.get("host_ip") == LOOPBACK, f"{where} must set host_ip: {LOOPBACK}"
                assert "published" in port, f"{where} publishes a random port; give it a fixed one"
            else:
                # Short syntax: only HOST_IP:HOST_PORT:CONTAINER_PORT binds one address.
                assert isinstance(port, str) and port.startswith(f"{LOOPBACK}:"), f"{where} binds all interfaces"
            published += 1
    assert published >= 2, "kafka and postgres must both be reachable from the host"


def test_images_match_the_local_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    repo, _, tag = services["kafka"]["image"].partition(":")
    assert repo == "apache/kafka", "use the official Apache Kafka image"
    assert tag.split(".")[0] == "4", f"Kafka must be 4.x (KRaft only), got {tag!r}"
    assert tag == Settings.model_fields["kafka_version"].default, "keep the Kafka version equal to the local stack's"
    repo, _, tag = services["postgres"]["image"].partition(":")
    assert repo == "postgres"
    assert tag.split(".")[0] == "15", f"PostgreSQL must be 15, as in the local stack, got {tag!r}"


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        ("kafka", "kafka-broker-api-versions.sh"),
        ("postgres", "pg_isready"),
        ("bridge", "observer healthcheck"),
        ("worker", "observer healthcheck"),
        ("sink", "observer healthcheck"),
        ("prometheus", "/-/ready"),
        ("alertmanager", "/-/ready"),
        ("grafana", "/api/health"),
    ],
)
def test_services_have_real_healthchecks(compose: dict[str, Any], service: str, probe: str) -> None:
    check = compose["services"][service].get("healthcheck")
    assert check, f"{service} has no healthcheck"
    assert not check.get("disable"), f"{service}'s healthcheck is disabled"
    test = check["test"]
    if isinstance(test, list):
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{service}'s healthcheck must run a command, not {test[0]!r}"
        test = " ".join(test[1:])
    assert probe in test, f"{service}'s healthcheck should ask the server itself ({probe})"


def test_every_service_has_memory_and_cpu_limits(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert size_bytes(limits.get("memory", 0)) > 0, f"{name} has no memory limit"
        assert float(limits.get("cpus", 0)) > 0, f"{name} has no cpu limit"


def test_kafka_heap_fits_its_memory_limit(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    heap = re.search(r"-Xmx(\S+)", env_of(kafka)["KAFKA_HEAP_OPTS"])
    assert heap, "set KAFKA_HEAP_OPTS with -Xmx so the JVM does not size itself from the host"
    limit = size_bytes(kafka["deploy"]["resources"]["limits"]["memory"])
    assert size_bytes(heap[1]) <= limit * 3 // 4, "leave a quarter of the limit for metaspace, threads and buffers"


def test_kafka_is_a_consistent_single_kraft_node(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]

    assert set(bound) <= set(protocols), "every listener needs a security protocol"
    assert bound.get("PLAINTEXT", ("", 0))[1] == 9092 and bound.get(controller, ("", 0))[1] == 9093
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in bound
    assert controller not in advertised, "a controller listener is never advertised to clients"
    assert set(advertised) <= set(bound), "every advertised listener must be bound"

    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"], "the only voter is this node"
    assert int(voter.rpartition(":")[2]) == bound[controller][1], "voters must point at the controller listener"

    # The listener clients on the host use: advertised as loopback, on the published port.
    host_side = [a for a in advertised.values() if a[0] == LOOPBACK]
    assert len(host_side) == 1, f"exactly one listener must be advertised as {LOOPBACK} for host clients"
    (port,) = [p for p in kafka["ports"] if isinstance(p, dict)]
    assert host_side[0][1] == default_of(port["published"]), "advertised host port must equal the published one"
    assert port["target"] in {p for _, p in bound.values()}, "the published port must reach a bound listener"
    assert default_of(port["published"]) == Settings.model_fields["kafka_port"].default

    for key in (
        "OFFSETS_TOPIC_REPLICATION_FACTOR",
        "TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
    ):
        assert env[f"KAFKA_{key}"] == "1", f"KAFKA_{key} must be 1 on a single broker"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert any(v.endswith(":/var/lib/kafka/data") for v in kafka["volumes"]), "kafka data needs a named volume"
    assert "kafka-data" in compose["volumes"]


def test_postgres_matches_the_local_stack(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    env = env_of(pg)
    defaults = Settings.model_fields
    assert env["POSTGRES_DB"] == defaults["pg_database"].default
    assert env["POSTGRES_USER"] == defaults["pg_user"].default
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "trust"  # the local stack has no password either
    (port,) = pg["ports"]
    assert default_of(port["published"]) == defaults["pg_port"].default
    assert any(v.startswith("postgres-data:") for v in pg["volumes"])


def test_topics_job_is_opt_in_and_waits_for_kafka(compose: dict[str, Any]) -> None:
    services = compose["services"]
    topics = services["topics"]
    assert "app" in topics.get("profiles", []), "the topics job needs the app image: keep it out of a plain `up`"
    assert "profiles" not in services["kafka"] and "profiles" not in services["postgres"]
    assert topics["command"][-2:] == ["topics", "apply"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert env_of(topics)["OBSERVER_KAFKA_BOOTSTRAP"] == "kafka:9092"


APP_SERVICES = {"sim", "bridge", "worker", "sink"}
MONITORING_SERVICES = {"prometheus", "alertmanager", "grafana"}


def test_the_observer_services_run_the_project_image_in_the_app_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        assert services[name]["image"] == "krx-observer:latest" and services[name]["build"] == "."
        assert services[name]["profiles"] == ["app"], f"{name} needs the image: keep it out of a plain `up`"
        assert services[name]["command"][0] == name
    for name in ("bridge", "worker", "sink"):
        waits = services[name]["depends_on"]
        assert waits["topics"]["condition"] == "service_completed_successfully", f"{name} starts before its topics"
        assert waits["kafka"]["condition"] == "service_healthy"
    assert services["sink"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "replicas" not in services["bridge"].get("deploy", {}), "one bridge per app key: KIS allows one session"


def test_each_health_check_url_is_the_port_its_process_serves(compose: dict[str, Any]) -> None:
    ports = {
        "bridge": Settings.model_fields["bridge_metrics_port"].default,
        "worker": Settings.model_fields["worker_web_port"].default,
        "sink": Settings.model_fields["sink_web_port"].default,
    }
    for name, port in ports.items():
        env = env_of(compose["services"][name])
        assert env["OBSERVER_HEALTHCHECK_URL"].startswith(f"http://127.0.0.1:{port}/"), name
        host = {"bridge": "OBSERVER_BRIDGE_METRICS_HOST", "worker": "OBSERVER_WORKER_WEB_HOST"}.get(name)
        if host:
            assert env[host] == "0.0.0.0", f"{name} must listen beyond loopback for Prometheus's container"


def test_no_credential_is_written_into_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name in ("OBSERVER_KIS_APP_KEY:", "OBSERVER_KIS_APP_SECRET:", "appsecret", "appkey"):
        assert name not in text


def test_monitoring_is_opt_in_and_mounts_the_checked_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in MONITORING_SERVICES:
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus-compose.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]}
    assert targets == {
        "observer-bridge": f"bridge:{Settings.model_fields['bridge_metrics_port'].default}",
        "observer-worker": f"worker:{Settings.model_fields['worker_web_port'].default}",
        "observer-sink": f"sink:{Settings.model_fields['sink_web_port'].default}",
    }
