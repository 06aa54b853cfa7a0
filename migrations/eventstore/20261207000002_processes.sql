-- Every `hap serve` process records itself here, so that operators see what runs: the row is
-- written at start, its heartbeat every few seconds, and it is deleted at a clean shutdown. A
-- killed process leaves its row behind with a heartbeat that stopped: it shows as gone, and
-- the timer's housekeeping deletes it after the retention.
create table processes (
    id           uuid primary key,
    instance     text not null,
    roles        text[] not null,
    version      text not null,
    host         text not null,
    pid          integer not null,
    http_addr    text not null,
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);
