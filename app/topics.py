"""The topic catalogue (``topics/topics.toml``) and applying it to a broker.

``apply_topics`` creates what is missing and reports drift (partition counts and declared configs that
differ on the broker); it never deletes or silently alters an existing topic.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import PROJECT_ROOT, Settings

TOPICS_FILE = PROJECT_ROOT / "topics" / "topics.toml"
SCHEMAS_DIR = PROJECT_ROOT / "schemas"

_TOPIC_KEYS = {
    "key",
    "value",
    "partitions",
    "replication_factor",
    "retention_ms",
    "cleanup_policy",
    "min_insync_replicas",
    "description",
}
_CLEANUP_POLICIES = {"delete", "compact", "compact,delete"}


class TopicsError(Exception):
    """The topic catalogue is invalid, or the broker refused to create a topic."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: str
    partitions: int
    replication_factor: int
    retention_ms: int
    cleanup_policy: str
    min_insync_replicas: int
    description: str = ""

    def configs(self) -> dict[str, str]:
        """Broker-side topic configs this declaration pins (compared for drift)."""
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_insync_replicas),
        }


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created   {name}" for name in self.created]
        out += [f"ok        {name}" for name in self.unchanged]
        out += [f"DRIFT     {line}" for line in self.drift]
        return out


def load_topics(path: Path = TOPICS_FILE, schemas_dir: Path = SCHEMAS_DIR) -> dict[str, TopicSpec]:
    """Parse and validate the catalogue; every problem is a TopicsError naming the topic and the key."""
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TopicsError(f"{path}: {exc}") from None
    defaults: dict[str, Any] = doc.get("defaults", {})
    topics: dict[str, Any] = doc.get("topics", {})
    if not topics:
        raise TopicsError(f"{path}: no [topics.*] tables")
    specs: dict[str, TopicSpec] = {}
    for name, body in topics.items():
        unknown = set(body) - _TOPIC_KEYS
        if unknown:
            raise TopicsError(f"{path}: topic {name!r} has unknown keys {sorted(unknown)}")
        merged = {**defaults, **body}
        missing = {
            "key",
            "value",
            "partitions",
            "replication_factor",
            "retention_ms",
            "cleanup_policy",
            "min_insync_replicas",
        } - set(merged)
        if missing:
            raise TopicsError(f"{path}: topic {name!r} misses {sorted(missing)}")
        for int_key in ("partitions", "replication_factor", "min_insync_replicas"):
            if not isinstance(merged[int_key], int) or merged[int_key] < 1:
                raise TopicsError(f"{path}: topic {name!r}: {int_key} must be a positive integer")
        if not isinstance(merged["retention_ms"], int) or (merged["retention_ms"] < 1 and merged["retention_ms"] != -1):
            raise TopicsError(f"{path}: topic {name!r}: retention_ms must be positive or -1")
        if merged["cleanup_policy"] not in _CLEANUP_POLICIES:
            raise TopicsError(f"{path}: topic {name!r}: cleanup_policy must be one of {sorted(_CLEANUP_POLICIES)}")
        if not (schemas_dir / f"{merged['value']}.avsc").is_file():
            raise TopicsError(f"{path}: topic {name!r}: value schema {merged['value']}.avsc not in {schemas_dir}")
        specs[name] = TopicSpec(name=name, **merged)
    return specs


async def apply_topics(
    settings: Settings, specs: dict[str, TopicSpec] | None = None, create: bool = True
) -> ApplyReport:
    """Create missing topics (physical names carry ``settings.topic_prefix``) and report drift."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    specs = load_topics() if specs is None else specs
    report = ApplyReport()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        physical = {settings.topic(name): spec for name, spec in specs.items()}
        missing = [p for p in physical if p not in existing]
        if missing and create:
            new = [
                NewTopic(p, physical[p].partitions, physical[p].replication_factor, topic_configs=physical[p].configs())
                for p in missing
            ]
            resp = await admin.create_topics(new, timeout_ms=30000)
            for topic, code, message in _create_errors(resp):
                raise TopicsError(f"broker refused to create {topic}: error {code} {message or ''}".strip())
            report.created.extend(missing)
            await _wait_visible(admin, {p: physical[p].partitions for p in missing})
        elif missing:
            report.drift.extend(f"{p}: missing on the broker" for p in missing)
        present = [p for p in physical if p in existing]
        if present:
            described = await admin.describe_topics(present)
            partitions = {d["topic"]: len(d["partitions"]) for d in described}
            resources = [ConfigResource(ConfigResourceType.TOPIC, p) for p in present]
            actual_configs: dict[str, dict[str, str]] = {}
            for resp in await admin.describe_configs(resources):
                for res in resp.to_object()["resources"]:
                    actual_configs[res["resource_name"]] = {
                        e["config_names"]: e["config_value"] for e in res["config_entries"]
                    }
            for p in present:
                spec = physical[p]
                drift = []
                if partitions.get(p) != spec.partitions:
                    drift.append(f"partitions {partitions.get(p)} (declared {spec.partitions})")
                for key, want in spec.configs().items():
                    have = actual_configs.get(p, {}).get(key)
                    if have != want:
                        drift.append(f"{key}={have} (declared {want})")
                if drift:
                    report.drift.append(f"{p}: " + ", ".join(drift))
                else:
                    report.unchanged.append(p)
    finally:
        await admin.close()
    return report


async def _wait_visible(admin: Any, partitions: dict[str, int], deadline_s: float = 30.0) -> None:
    """Creation is acknowledged before every broker's metadata shows the topic; wait until it does."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    pending = dict(partitions)
    while pending:
        for d in await admin.describe_topics(list(pending)):
            parts = d.get("partitions") or []
            if (
                d.get("error_code", 0) == 0
                and len(parts) == pending.get(d["topic"])
                and all(p.get("leader", -1) >= 0 for p in parts)
            ):
                pending.pop(d["topic"], None)
        if pending and loop.time() > deadline:
            raise TopicsError(
                f"created topics not visible with all partitions after {deadline_s:.0f} s: {sorted(pending)}"
            )
        if pending:
            await asyncio.sleep(0.1)


def _create_errors(resp: Any) -> list[tuple[str, int, str | None]]:
    obj = resp.to_object() if hasattr(resp, "to_object") else {}
    errors = []
    for t in obj.get("topic_errors", obj.get("topics", [])):
        code = t.get("error_code", 0)
        # 36 = TOPIC_ALREADY_EXISTS: a concurrent apply created it; that is fine.
        if code not in (0, 36):
            errors.append((t.get("topic", t.get("name", "?")), code, t.get("error_message")))
    return errors


async def delete_topics(settings: Settings, names: list[str] | None = None) -> None:
    """Delete the named topics (full names), or with no names every topic under ``settings.topic_prefix``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if names is None:
            if not settings.topic_prefix:
                raise ValueError("refusing to delete every topic: no topic prefix is set")
            names = sorted(n for n in existing if n.startswith(settings.topic_prefix))
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed, timeout_ms=30000)
    finally:
        await admin.close()


def strimzi_topics(
    specs: dict[str, TopicSpec], cluster: str, replicas: int, min_insync_replicas: int
) -> list[dict[str, Any]]:
    """The catalogue as Strimzi ``KafkaTopic`` resources for the Kafka cluster ``cluster`` (k8s/base/kafka-topics.yaml
    is this, rendered by ``observer topics strimzi``; a test fails when the two drift apart)."""
    return [
        {
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaTopic",
            "metadata": {
                "name": spec.name,
                "labels": {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "krx-observer"},
                "annotations": {"krx-observer/key": spec.key, "krx-observer/value": spec.value},
            },
            "spec": {
                "topicName": spec.name,
                "partitions": spec.partitions,
                "replicas": replicas,
                "config": {
                    "retention.ms": spec.retention_ms,
                    "cleanup.policy": spec.cleanup_policy,
                    "min.insync.replicas": min(min_insync_replicas, replicas),
                },
            },
        }
        for spec in specs.values()
    ]
