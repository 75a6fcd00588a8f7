-- Outbox table for txnotify's Postgres outbox relay (`txnotify outbox-relay`).
--
-- A producing service inserts one row per TransactionEvent in the same database
-- transaction that completes the payment:
--
--     INSERT INTO txnotify_outbox (payload, traceparent, tracestate)
--     VALUES ($1, $2, $3);
--
-- payload is the event as JSON text (schemas/json/transaction-event.v1.json).
-- traceparent and tracestate are optional W3C trace context values.
--
-- The relay publishes committed rows in id order and then sets published_at and
-- the Kafka partition and offset. It never deletes rows: `txnotify outbox-relay
-- prune --older-than DURATION` removes published rows older than DURATION.
-- A row the relay cannot publish, for example invalid JSON, gets
-- quarantined_at and quarantine_reason and is skipped from then on.
--
-- Running this file twice is harmless.

CREATE TABLE IF NOT EXISTS txnotify_outbox (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    payload           text        NOT NULL,
    traceparent       text,
    tracestate        text,
    published_at      timestamptz,
    kafka_partition   integer,
    kafka_offset      bigint,
    quarantined_at    timestamptz,
    quarantine_reason text,
    CONSTRAINT txnotify_outbox_published_or_quarantined
        CHECK (published_at IS NULL OR quarantined_at IS NULL)
);

-- The relay's scan: unpublished, unquarantined rows in id order.
CREATE INDEX IF NOT EXISTS txnotify_outbox_pending
    ON txnotify_outbox (id)
    WHERE published_at IS NULL AND quarantined_at IS NULL;

-- The retention command's scan.
CREATE INDEX IF NOT EXISTS txnotify_outbox_published_at
    ON txnotify_outbox (published_at)
    WHERE published_at IS NOT NULL;
