-- Offers: matching proposes a searching order to one pilot at a time. The database decides
-- every race: a pilot holds at most one live offer, an order has at most one live offer, and
-- an offer is decided (accepted, rejected, expired, withdrawn) by one conditional update.
-- Decided offers stay: a pilot who rejected an order or let its offer expire is never
-- offered that order again, after a restart too.
CREATE TABLE offers (
    id                uuid PRIMARY KEY,
    order_id          uuid NOT NULL REFERENCES orders (id),
    pilot_id          uuid NOT NULL REFERENCES users (id),
    status            text NOT NULL CHECK (status IN ('live', 'accepted', 'rejected', 'expired', 'withdrawn')),
    pickup_distance_m integer NOT NULL CHECK (pickup_distance_m >= 0),
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    decided_at        timestamptz,
    reason            text,
    CHECK ((status = 'live') = (decided_at IS NULL))
);
CREATE UNIQUE INDEX offers_one_live_per_pilot ON offers (pilot_id) WHERE status = 'live';
CREATE UNIQUE INDEX offers_one_live_per_order ON offers (order_id) WHERE status = 'live';
CREATE INDEX offers_order_idx ON offers (order_id);

-- The trip trace: the pilot's accepted positions while it carries an order, written in
-- batches; for the distance actually driven and for disputes.
CREATE TABLE trip_points (
    order_id uuid NOT NULL REFERENCES orders (id),
    ts_ms    bigint NOT NULL,
    lat      double precision NOT NULL,
    lng      double precision NOT NULL,
    PRIMARY KEY (order_id, ts_ms)
);
