-- The dispatcher console's median wait to assignment over the last hour reads the
-- assignments of that hour: this index holds exactly them, newest last.
CREATE INDEX order_events_assigned_idx ON order_events (created_at) WHERE type = 'assigned';
