-- Read-your-writes now waits on stream_versions (which a rebuild fills too), so nothing looks
-- processed events up by position any more; the index only slowed every projector commit.
drop index processed_events_position_idx;
