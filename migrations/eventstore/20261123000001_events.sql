-- The event store. Appending events is the only write of the command side, and this table is
-- also the publisher's outbox: there is no second table to keep in step.

create table events (
    -- Global insertion order. Assigned at insert but visible only at commit, so a reader must
    -- never treat it alone as "everything before this was seen" (see transaction_id).
    position        bigint generated always as identity primary key,
    -- The writing transaction. Readers of the global order only take rows whose transaction
    -- is older than every transaction still running, ordered by (transaction_id, position):
    -- an event whose transaction commits late is then read late, never skipped.
    transaction_id  xid8 not null default pg_current_xact_id(),
    event_id        uuid not null,
    -- The aggregate the event belongs to; its stream is all events with this id.
    stream_id       uuid not null,
    aggregate_type  text not null,
    -- 1, 2, 3, … within the stream, without gaps: optimistic concurrency relies on the
    -- unique constraint below to let only one writer take a version.
    version         bigint not null check (version > 0),
    event_type      text not null,
    payload         jsonb not null,
    tenant_id       text not null,
    -- The request (or message) that caused the event, as given by the client or generated.
    correlation_id  text not null,
    -- The event that caused this one, when a saga step or follow-up appended it.
    causation_id    uuid,
    schema_version  integer not null default 1,
    occurred_at     timestamptz not null,
    constraint events_event_id_key unique (event_id),
    constraint events_stream_version_key unique (stream_id, version)
);

-- The gap-safe global read walks this index.
create index events_transaction_position_idx on events (transaction_id, position);

-- What makes a command safe to repeat: the first successful response to a key, written in the
-- same transaction as the command's events, so a key is remembered exactly when its effect is.
create table idempotency_keys (
    tenant_id        text not null,
    key              text not null,
    -- A digest of method, path and body: the same key with another request is refused.
    request_hash     text not null,
    response_status  smallint not null,
    response_body    jsonb not null,
    -- The response headers worth repeating (Location, ETag).
    response_headers jsonb not null default '{}',
    created_at       timestamptz not null default now(),
    constraint idempotency_keys_pkey primary key (tenant_id, key)
);

-- Values that must be unique at once, not eventually (document and license numbers), and
-- lookups that must be exact (which record book holds a record): claimed by a stream in the
-- same transaction as the event that needs the claim.
create table unique_claims (
    tenant_id  text not null,
    kind       text not null,
    value      text not null,
    -- The stream that holds the claim.
    owner_id   uuid not null,
    constraint unique_claims_pkey primary key (tenant_id, kind, value)
);
