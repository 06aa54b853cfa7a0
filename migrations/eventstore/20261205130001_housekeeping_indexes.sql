-- Housekeeping (the timer role) deletes idempotency keys older than the retention and
-- deadlines that stopped running longer ago than that, a small batch at a time. These indexes
-- let each batch find its rows without scanning the table.
create index idempotency_keys_created_at_idx on idempotency_keys (created_at);
create index deadlines_finished_idx on deadlines (updated_at) where state <> 'running';
