-- Push tokens of the apps (issue 23): one row per token, owned by the newest user that
-- registered it, and by the session it was registered in (logging out removes it).
CREATE TABLE devices (
    token      TEXT PRIMARY KEY CHECK (length(token) BETWEEN 1 AND 4096),
    user_id    BLOB NOT NULL REFERENCES users (id),
    session_id BLOB,
    platform   TEXT NOT NULL CHECK (platform IN ('android', 'ios', 'web')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX devices_user_idx ON devices (user_id, updated_at);
CREATE INDEX devices_session_idx ON devices (session_id) WHERE session_id IS NOT NULL;
