-- A worker claims only the kinds it has a slot for: the due jobs by kind, so that a backlog of
-- one kind is not read past at every claim of the others (see the Postgres migration).
CREATE INDEX jobs_kind_due_idx ON jobs (kind, run_at) WHERE status IN ('queued', 'running');
