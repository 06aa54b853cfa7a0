-- The console shows a request's causal trail: every event, on any stream, that carries the
-- request's correlation id. Without this index each trail would scan the whole store.
create index events_correlation_idx on events (correlation_id);
