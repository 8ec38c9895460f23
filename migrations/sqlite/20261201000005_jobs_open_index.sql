-- The job worker counts the jobs not done, by kind and state, at every poll (for /metrics).
-- Done jobs are kept, so without this the count reads the whole table.
CREATE INDEX jobs_open_idx ON jobs (status, kind) WHERE status IN ('queued', 'running', 'failed');
