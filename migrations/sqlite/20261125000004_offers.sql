-- Mirrors ../postgres/20261125000004_offers.sql; see the comments there.
CREATE TABLE offers (
    id                BLOB PRIMARY KEY,
    order_id          BLOB NOT NULL REFERENCES orders (id),
    pilot_id          BLOB NOT NULL REFERENCES users (id),
    status            TEXT NOT NULL CHECK (status IN ('live', 'accepted', 'rejected', 'expired', 'withdrawn')),
    pickup_distance_m INTEGER NOT NULL CHECK (pickup_distance_m >= 0),
    created_at        TEXT NOT NULL,
    expires_at        TEXT NOT NULL,
    decided_at        TEXT,
    reason            TEXT,
    CHECK ((status = 'live') = (decided_at IS NULL))
) STRICT;
CREATE UNIQUE INDEX offers_one_live_per_pilot ON offers (pilot_id) WHERE status = 'live';
CREATE UNIQUE INDEX offers_one_live_per_order ON offers (order_id) WHERE status = 'live';
CREATE INDEX offers_order_idx ON offers (order_id);

CREATE TABLE trip_points (
    order_id BLOB NOT NULL REFERENCES orders (id),
    ts_ms    INTEGER NOT NULL,
    lat      REAL NOT NULL,
    lng      REAL NOT NULL,
    PRIMARY KEY (order_id, ts_ms)
) STRICT;
