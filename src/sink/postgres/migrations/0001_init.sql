-- edge-relay sink schema, version 1 (README "Run a fleet"; docs/DESIGN.md §11).
-- One row per (gateway, stream): the contiguous mark, advanced under this row's lock.
CREATE TABLE streams (
    gateway   text   NOT NULL,
    stream    uuid   NOT NULL,
    -- Highest seq stored contiguously from seq 1 (gaps count as stored); 0 = nothing yet.
    acked_seq bigint NOT NULL DEFAULT 0 CHECK (acked_seq >= 0),
    -- Id of the event at acked_seq; NULL when acked_seq is 0 or ends a gap.
    acked_id  uuid,
    PRIMARY KEY (gateway, stream)
);

-- Every stored event once, keyed by its stream and seq; a stream's events in order are one
-- primary-key range scan.
CREATE TABLE events (
    gateway     text        NOT NULL,
    stream      uuid        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq >= 1),
    id          uuid        NOT NULL,
    source      text        NOT NULL,
    kind        text        NOT NULL,
    -- The producer's RFC 3339 time as sent (never used for ordering).
    time        text        NOT NULL,
    -- The event's data; data_text holds it instead (JSON text) when jsonb cannot: a string
    -- with a \u0000 escape.
    data        jsonb,
    data_text   text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, stream, seq),
    CHECK ((data IS NULL) <> (data_text IS NULL))
);

-- Seqs a gateway dropped (buffer overflow policy drop_oldest): disjoint, non-touching ranges.
CREATE TABLE gaps (
    gateway      text   NOT NULL,
    stream       uuid   NOT NULL,
    dropped_from bigint NOT NULL,
    dropped_to   bigint NOT NULL,
    PRIMARY KEY (gateway, stream, dropped_from),
    CHECK (1 <= dropped_from AND dropped_from <= dropped_to)
);
