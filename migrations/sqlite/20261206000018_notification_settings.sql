-- What each user wants to be told, and where its email receipts go (issue 23). No row: every
-- kind on, no email.
CREATE TABLE notification_settings (
    user_id    BLOB PRIMARY KEY REFERENCES users (id),
    email      TEXT CHECK (email IS NULL OR length(email) BETWEEN 3 AND 254),
    off        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(off)),
    updated_at TEXT NOT NULL
) STRICT;
