-- One instance's read model. Applied to schema rm_{instance} (or a shadow schema during a
-- rebuild) through the connection's search_path, so no name here is schema-qualified.

-- Which events each projection has applied: redelivering one changes nothing. Written in the
-- same transaction as the projection's rows. The position answers X-Min-Position waits.
create table processed_events (
    projection  text not null,
    event_id    uuid not null,
    position    bigint not null,
    primary key (projection, event_id)
);
create index processed_events_position_idx on processed_events (projection, position);

-- The last version of each stream a projection applied: an event at or below it is old news,
-- one above the next is preceded by a gap that is filled from the event store first.
create table stream_versions (
    projection  text not null,
    stream_id   uuid not null,
    version     bigint not null,
    primary key (projection, stream_id)
);

create table patients (
    id               uuid primary key,
    name             text not null,
    birth_date       date not null,
    document_number  text not null,
    email            text,
    phone            text,
    status           text not null,
    version          bigint not null,
    updated_at       timestamptz not null
);
-- Keyset pagination orders by id; filters by status and name prefix.
create index patients_status_id_idx on patients (status, id);
create index patients_name_idx on patients (lower(name) text_pattern_ops);

create table physicians (
    id              uuid primary key,
    name            text not null,
    specialty       text not null,
    license_number  text not null,
    status          text not null,
    version         bigint not null,
    updated_at      timestamptz not null
);
create index physicians_specialty_id_idx on physicians (specialty, id);

-- The consultations projection keeps the names of the people it shows, from their own events,
-- so that a consultation shows the current names without asking another projection.
create table people (
    id       uuid primary key,
    name     text not null
);

create table consultations (
    id                   uuid primary key,
    patient_id           uuid not null,
    patient_name         text,
    physician_id         uuid not null,
    physician_name       text,
    starts_at            timestamptz not null,
    ends_at              timestamptz not null,
    status               text not null,
    reason               text,
    notes                text,
    failure_reason       text,
    failure_detail       text,
    cancellation_reason  text,
    version              bigint not null,
    updated_at           timestamptz not null
);
create index consultations_patient_idx on consultations (patient_id, starts_at desc);
-- The physician's agenda for a day is a range of this index.
create index consultations_physician_idx on consultations (physician_id, starts_at);
create index consultations_status_idx on consultations (status, id);

create table records (
    id               uuid primary key,
    consultation_id  uuid not null,
    patient_id       uuid not null,
    physician_id     uuid not null,
    content          text not null,
    status           text not null,
    version          bigint not null,
    updated_at       timestamptz not null
);
create index records_consultation_idx on records (consultation_id, id);
