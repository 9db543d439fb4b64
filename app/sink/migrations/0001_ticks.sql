-- Trades from kis.ticks.raw, one row per trade, partitioned by trading day (a partition per day is created
-- by the sink when the first trade of that day arrives). The key comes from the trade itself: a symbol's
-- cumulative volume grows with every trade of the day, so a redelivered or replayed trade hits the key.
CREATE TABLE ticks (
    business_date     date        NOT NULL,
    symbol            text        NOT NULL,
    cumulative_volume bigint      NOT NULL,
    trade_time        text        NOT NULL,
    event_time        timestamptz NOT NULL,
    price             bigint      NOT NULL,
    trade_volume      bigint      NOT NULL,
    change_sign       text        NOT NULL,
    change_rate       double precision NOT NULL,
    best_ask          bigint      NOT NULL,
    best_bid          bigint      NOT NULL,
    side              text        NOT NULL,
    received_at       timestamptz NOT NULL,
    app_key_id        text        NOT NULL,
    session_id        text        NOT NULL,
    frame_seq         bigint      NOT NULL,
    record_index      integer     NOT NULL,
    fields            text[]      NOT NULL,
    PRIMARY KEY (business_date, symbol, cumulative_volume)
) PARTITION BY LIST (business_date);

-- The next offset to write per input partition, committed in the same transaction as the rows.
CREATE TABLE sink_offsets (
    consumer      text   NOT NULL,
    topic         text   NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset   bigint NOT NULL,
    PRIMARY KEY (consumer, topic, kafka_partition)
);
