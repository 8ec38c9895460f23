-- A worker claims only the kinds it has a slot for. With the due jobs indexed by time alone,
-- a backlog of one kind (a webhook receiver down for an hour) was read past at every claim of
-- the others: 90 ms a claim behind 100,000 webhooks. By kind, each claim reads only the first
-- due jobs of each kind it asks for (0.1 ms, whatever waits behind).
CREATE INDEX jobs_kind_due_idx ON jobs (kind, run_at) WHERE status IN ('queued', 'running');
-- The planner would still pick the index by time for a claim of several kinds (it cannot know
-- how far it must read), so it goes.
DROP INDEX jobs_due_idx;
