-- What each `hap serve` process measured of itself, written with its heartbeat: the console
-- is served by any query process, and the figures of the others (commands, errors, who leads
-- the publisher, projector lag and queue depths) reach it only through a table every process
-- shares. Counters are totals since the process started; the console derives rates from the
-- differences between one process's samples. Kept for minutes only: each beat deletes what
-- is older than the window the console plots.
create table process_samples (
    process_id            uuid not null references processes (id) on delete cascade,
    sampled_at            timestamptz not null default now(),
    commands              bigint not null,
    command_errors        bigint not null,
    publisher_leader      boolean not null,
    projector_lag_seconds double precision not null,
    queue_depth           bigint not null,
    dead_letters          bigint not null,
    primary key (process_id, sampled_at)
);

create index process_samples_sampled_at_idx on process_samples (sampled_at);

-- The sagas page charts the last day's scheduling failures by reason and hour; without this
-- index each look would scan the whole store.
create index events_scheduling_failed_idx on events (occurred_at)
    where event_type = 'ConsultationSchedulingFailed';
