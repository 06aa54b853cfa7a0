-- How far each publisher has come: the last event the broker confirmed, in the gap-safe
-- (transaction id, position) order. One row per exchange prefix, so systems that share a
-- database but publish to differently prefixed exchanges keep separate progress.
create table publisher_checkpoints (
    publisher       text primary key,
    transaction_id  bigint not null,
    position        bigint not null,
    updated_at      timestamptz not null default now()
);
