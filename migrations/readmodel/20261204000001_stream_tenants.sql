-- Every read-model row belongs to one tenant (clinic): the tenant of the stream it projects.
-- The projection runtime records it with each stream's version, in the same transaction as the
-- rows, and every query shows a row only to its tenant. Rows from before tenants were
-- recorded belong to the tenant everything was then written as.
alter table stream_versions add column tenant_id text not null default 'default';
alter table stream_versions alter column tenant_id drop default;
