-- One key per data subject (a patient or a physician): the store seals their personal fields
-- with it, and erasing the subject deletes the row, which leaves those fields unreadable
-- (crypto-shredding). `wrapped` is the key sealed under a key derived from HAP's master key,
-- which the store never holds.
create table subject_keys (
    subject_id uuid primary key,
    tenant_id  text not null,
    wrapped    bytea not null,
    created_at timestamptz not null default now()
);
