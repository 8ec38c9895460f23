-- What each user wants to be told, and where its email receipts go (issue 23). No row: every
-- kind on, no email.
CREATE TABLE notification_settings (
    user_id    uuid PRIMARY KEY REFERENCES users (id),
    email      text CHECK (email IS NULL OR length(email) BETWEEN 3 AND 254),
    off        text NOT NULL DEFAULT '[]',     -- JSON array of the kinds turned off
    updated_at timestamptz NOT NULL
);
