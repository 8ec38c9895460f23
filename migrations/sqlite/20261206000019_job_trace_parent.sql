-- The W3C traceparent of the span that queued a job (issue 24), so that its runs continue
-- that trace; NULL when traces were off.
ALTER TABLE jobs ADD COLUMN trace_parent TEXT CHECK (trace_parent IS NULL OR length(trace_parent) <= 128);
