"""Bounded reads of Kafka topics without a consumer group: a time window, or everything up to now.

Used by the tools that look back at a day (audit, replay, republish, analytics checks). They never join a
group and never commit, so they cannot disturb the live apps' offsets. Every record of the system carries
its event time as the Kafka timestamp, so "the records of a time window" is a question Kafka answers
(``offsets_for_times``) rather than a scan of the topic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int  # first offset to read
    end: int  # first offset not to read

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


async def time_window(
    consumer: AIOKafkaConsumer, topic: str, start_ms: int | None, end_ms: int | None
) -> list[PartitionRange]:
    """Per partition, the offsets of records with ``start_ms <= timestamp < end_ms`` (None: open end).

    Bounds are by offset: the first record at or after each time, so a record stamped out of order near
    a bound may fall on the other side of it; callers that need exact membership widen the window and
    filter on the record's own fields.
    """
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        # A consumer without subscriptions asks the broker about no topic: add this one to its metadata.
        await consumer._client.add_topic(topic)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic} does not exist (is this the right OBSERVER_TOPIC_PREFIX?)")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    firsts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)

    async def at(time_ms: int | None, default: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        if time_ms is None:
            return dict(default)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, max(0, time_ms)))
        return {tp: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}

    starts = await at(start_ms, firsts)
    stops = await at(end_ms, ends)
    return [PartitionRange(tp.partition, starts[tp], max(starts[tp], stops[tp])) for tp in tps]


async def read_ranges(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: list[PartitionRange],
    on_progress: Callable[[int], None] | None = None,
) -> AsyncIterator[KafkaRecord]:
    """The records of ``ranges`` (fewer if retention removed some), partition by partition interleaved."""
    todo = {TopicPartition(topic, r.partition): r for r in ranges if r.size > 0}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, r in todo.items():
        consumer.seek(tp, r.start)
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
        taken = 0
        for tp, messages in batch.items():
            end = todo[tp].end
            for m in messages:
                if m.offset >= end:
                    break
                taken += 1
                yield KafkaRecord(topic, tp.partition, m.offset, m.timestamp, m.key, m.value or b"")
        for tp in list(todo):
            if await consumer.position(tp) >= todo[tp].end:
                del todo[tp]
        if on_progress is not None and taken:
            on_progress(taken)
    consumer.assign([])


def new_reader(bootstrap_servers: str) -> AIOKafkaConsumer:
    """A consumer without a group (nothing committed), for :func:`time_window` and :func:`read_ranges`."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 2**20,
        fetch_max_bytes=32 * 2**20,
    )
