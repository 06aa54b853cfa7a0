-- Projection names are identifiers: compared byte by byte they cost a fraction of a
-- locale-aware comparison, and every bookkeeping key starts or ends with one.
alter table processed_events alter column projection type text collate "C";
alter table stream_versions alter column projection type text collate "C";
