-- An idempotency key now remembers the command's outcome (what it made or changed, the
-- version and position after it), not an HTTP response: the API rebuilds its answer from the
-- outcome, and saga steps no longer pretend to answer with a status. Keys remembered before
-- are converted: a response body held the same id, version and position; a saga step's held
-- only the version, and its key ends in the stream it targeted (`saga:{event}:{kind}:{stream}`).
alter table idempotency_keys add column outcome jsonb;

update idempotency_keys
   set outcome = jsonb_build_object(
           'id', coalesce(response_body -> 'id', to_jsonb(split_part(key, ':', 4))),
           'version', response_body -> 'version',
           'position', coalesce(response_body -> 'position', 'null'::jsonb));

alter table idempotency_keys
    alter column outcome set not null,
    drop column response_status,
    drop column response_body,
    drop column response_headers;
