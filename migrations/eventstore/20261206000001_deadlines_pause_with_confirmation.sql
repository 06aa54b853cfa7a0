-- Scheduling now pauses its deadline in the same statement that appends ConsultationScheduled,
-- so a paused deadline always belongs to a scheduled consultation. Before, the pause was a
-- write of its own: a step that died (or was dead-lettered) between the pause and the
-- confirmation left the deadline paused for ever and the consultation `requested`. Such
-- deadlines run again here; the timer then fires the overdue ones at once.
update deadlines d
   set state = 'running', updated_at = now()
 where d.state = 'paused'
   and not exists (select 1 from events e
                    where e.stream_id = d.id and e.event_type = 'ConsultationScheduled');
