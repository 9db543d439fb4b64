-- The worker's outputs and the scanner's snapshots, each partitioned by trading day like ticks. Every key
-- comes from the record itself, so a record the worker repeated after a crash, or a replay, hits the key.

-- kis.snapshots: one row per symbol, REST source and snapshot time (the end of the second before the
-- server's Date header: two polls within one second are one observation).
CREATE TABLE snapshots (
    business_date     date        NOT NULL,
    symbol            text        NOT NULL,
    source            text        NOT NULL,
    snapshot_time     timestamptz NOT NULL,
    price             bigint      NOT NULL,
    cumulative_volume bigint      NOT NULL,
    change_rate       double precision NOT NULL,
    rank              integer,
    raw               jsonb       NOT NULL,
    PRIMARY KEY (business_date, symbol, source, snapshot_time)
) PARTITION BY LIST (business_date);

-- observer.surges: a surge fires at most once per symbol, source and one-minute window.
CREATE TABLE surges (
    business_date  date        NOT NULL,
    symbol         text        NOT NULL,
    source         text        NOT NULL,
    window_start   timestamptz NOT NULL,
    event_time     timestamptz NOT NULL,
    current_volume bigint      NOT NULL,
    avg_volume_10m double precision NOT NULL,
    surge_ratio    double precision NOT NULL,
    priority_score double precision NOT NULL,
    PRIMARY KEY (business_date, symbol, source, window_start)
) PARTITION BY LIST (business_date);

-- slot.decisions: assignments and releases; the decision id is derived from the manager's inputs.
-- business_date is the KST day of decided_at.
CREATE TABLE slot_decisions (
    business_date   date        NOT NULL,
    decision_id     text        NOT NULL,
    app_key_id      text        NOT NULL,
    slot_id         integer     NOT NULL,
    symbol          text        NOT NULL,
    action          text        NOT NULL,
    trigger_type    text        NOT NULL,
    priority_score  double precision NOT NULL,
    decided_at      timestamptz NOT NULL,
    detected_at     timestamptz NOT NULL,
    current_volume  bigint      NOT NULL,
    avg_volume_10m  double precision NOT NULL,
    surge_ratio     double precision NOT NULL,
    replaced_symbol text,
    reason          text        NOT NULL,
    PRIMARY KEY (business_date, decision_id)
) PARTITION BY LIST (business_date);

-- slot.overflow: candidates that found no slot. business_date is the KST day of decided_at.
CREATE TABLE slot_overflow (
    business_date  date        NOT NULL,
    decided_at     timestamptz NOT NULL,
    symbol         text        NOT NULL,
    trigger_type   text        NOT NULL,
    detected_at    timestamptz NOT NULL,
    app_key_id     text,
    priority_score double precision NOT NULL,
    reason         text        NOT NULL,
    current_volume bigint      NOT NULL,
    avg_volume_10m double precision NOT NULL,
    surge_ratio    double precision NOT NULL,
    PRIMARY KEY (business_date, decided_at, symbol, trigger_type, detected_at)
) PARTITION BY LIST (business_date);
