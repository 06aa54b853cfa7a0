-- Durable deadlines of sagas. A deadline is started in the same transaction as the event that
-- starts its saga, and changes state only through conditional updates of its row:
--   running -> paused   (the saga is confirming: the deadline must not fire meanwhile)
--   paused  -> running  (the confirmation failed: the deadline counts again)
--   running -> fired    (it fell due; the failure it causes is appended in the same statement)
-- Pause and fire both update the row only from `running`, so under the row lock exactly one of
-- them wins and the other finds nothing to change.
create table deadlines (
    -- The saga's id (the consultation's): one deadline per saga.
    id             uuid primary key,
    tenant_id      text not null,
    -- What falls due, for operators and metrics (`scheduling`).
    kind           text not null,
    due_at         timestamptz not null,
    state          text not null default 'running'
                   check (state in ('running', 'paused', 'fired')),
    -- Carried into the event a firing appends, so the trail of the request continues.
    correlation_id text not null,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);

-- What the timers look for: running deadlines in the order they fall due.
create index deadlines_due_idx on deadlines (due_at) where state = 'running';

-- The deactivation follow-up finds a person's consultations through the events that requested
-- them; these partial indexes keep that lookup off a scan of the whole store.
create index events_consultation_patient_idx on events (tenant_id, (payload ->> 'patientId'))
    where event_type = 'ConsultationSchedulingStarted';
create index events_consultation_physician_idx on events (tenant_id, (payload ->> 'physicianId'))
    where event_type = 'ConsultationSchedulingStarted';

-- Who acted: the `sub` of the token of the request that caused the event (saga steps keep the
-- one of the request that started their saga). Null for events from before authentication.
alter table events add column actor_id text;
alter table deadlines add column actor_id text;
