-- Streams first: a batch looks up a few hundred streams of one projection, and with the
-- projection first (one value for every row) the planner scanned all of the projection's rows
-- until its first analyze; with the stream first every lookup is an index probe.
alter table stream_versions drop constraint stream_versions_pkey;
alter table stream_versions add primary key (stream_id, projection);
