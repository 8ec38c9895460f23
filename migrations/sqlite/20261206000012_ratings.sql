-- After delivery the customer rates the pilot and the pilot rates the customer, once each.
-- Each user's sum and count are kept beside it, written in the rating's transaction, so an
-- average is one row away.
CREATE TABLE ratings (
    order_id   BLOB NOT NULL REFERENCES orders (id),
    rater_id   BLOB NOT NULL REFERENCES users (id),
    ratee_id   BLOB NOT NULL REFERENCES users (id),
    stars      INTEGER NOT NULL CHECK (stars BETWEEN 1 AND 5),
    comment    TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (order_id, rater_id)
);
CREATE INDEX ratings_ratee_idx ON ratings (ratee_id, created_at DESC);
ALTER TABLE users ADD COLUMN rating_sum INTEGER NOT NULL DEFAULT 0 CHECK (rating_sum >= 0);
ALTER TABLE users ADD COLUMN rating_count INTEGER NOT NULL DEFAULT 0 CHECK (rating_count >= 0);
