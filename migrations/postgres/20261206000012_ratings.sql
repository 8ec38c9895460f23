-- After delivery the customer rates the pilot and the pilot rates the customer, once each.
-- Each user's sum and count are kept beside it, written in the rating's transaction, so an
-- average is one row away.
CREATE TABLE ratings (
    order_id   uuid NOT NULL REFERENCES orders (id),
    rater_id   uuid NOT NULL REFERENCES users (id),
    ratee_id   uuid NOT NULL REFERENCES users (id),
    stars      smallint NOT NULL CHECK (stars BETWEEN 1 AND 5),
    comment    text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (order_id, rater_id)
);
CREATE INDEX ratings_ratee_idx ON ratings (ratee_id, created_at DESC);
ALTER TABLE users ADD COLUMN rating_sum bigint NOT NULL DEFAULT 0 CHECK (rating_sum >= 0);
ALTER TABLE users ADD COLUMN rating_count integer NOT NULL DEFAULT 0 CHECK (rating_count >= 0);
