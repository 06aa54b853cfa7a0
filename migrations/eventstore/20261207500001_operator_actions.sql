-- Every replay or discard of dead letters an operator took in the console, with who took it:
-- the audit trail of what was done to messages outside the event store, kept for good (the
-- log line and the metric of the same action are neither durable nor per operator). It also
-- remembers how often a message was replayed once the replay count in its headers is gone
-- with it (a replayed message that was applied, then dead-lettered anew). Shared by every
-- process: the console of any of them lists the recent actions.
create table operator_actions (
    id        bigint generated always as identity primary key,
    at        timestamptz not null default now(),
    -- The operator's token: its `sub`, and its tenant (`*` for a platform operator).
    actor     text not null,
    tenant_id text not null,
    action    text not null check (action in ('replay', 'discard')),
    -- The main queue whose dead letters were resolved.
    queue     text not null,
    -- What the operator chose: one message (its event id) or a failure group (its
    -- fingerprint, the error with its numbers left out; recorded without the values it quotes).
    event_id  text,
    failure   text,
    -- How many messages the action took, and the event ids of those that had one.
    messages  integer not null,
    event_ids text[] not null,
    check ((event_id is null) <> (failure is null))
);

-- The dead-letters page lists the latest actions of the operator's tenant (or of all).
create index operator_actions_by_tenant_idx on operator_actions (tenant_id, at desc);
create index operator_actions_at_idx on operator_actions (at desc);
-- And counts the replays of the messages it shows.
create index operator_actions_event_ids_idx on operator_actions using gin (event_ids);
