-- no-transaction
-- An order a dispatcher stops with the parcel on board goes back to its pickup: 'returning'
-- (its pilot still carries it) and then 'returned' (ended, like delivered and cancelled).
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt as its documented
-- twelve-step procedure does (foreign keys off around one transaction).
PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE orders_new (
    id               BLOB PRIMARY KEY,
    customer_id      BLOB NOT NULL REFERENCES users (id),
    pilot_id         BLOB REFERENCES users (id),
    vehicle_type     TEXT NOT NULL CHECK (vehicle_type IN ('bike', 'auto', 'mini_truck', 'ev_cycle')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'searching_driver', 'assigned',
                                                     'picked_up', 'in_transit', 'delivered', 'cancelled',
                                                     'returning', 'returned')),
    cancel_reason    TEXT CHECK (cancel_reason IN ('customer', 'pilot', 'no_pilot_found',
                                                   'payment_failed', 'dispatcher')),
    pickup_lat       REAL NOT NULL CHECK (pickup_lat BETWEEN -90 AND 90),
    pickup_lng       REAL NOT NULL CHECK (pickup_lng BETWEEN -180 AND 180),
    pickup_address   TEXT NOT NULL,
    drop_lat         REAL NOT NULL CHECK (drop_lat BETWEEN -90 AND 90),
    drop_lng         REAL NOT NULL CHECK (drop_lng BETWEEN -180 AND 180),
    drop_address     TEXT NOT NULL,
    payment_method   TEXT NOT NULL CHECK (payment_method IN ('wallet', 'card', 'upi', 'cash')),
    payment_status   TEXT NOT NULL DEFAULT 'unpaid'
                     CHECK (payment_status IN ('unpaid', 'pending', 'paid', 'failed', 'refunded')),
    fare_paise       INTEGER NOT NULL CHECK (fare_paise >= 0),
    discount_paise   INTEGER NOT NULL DEFAULT 0 CHECK (discount_paise >= 0),
    tax_paise        INTEGER NOT NULL DEFAULT 0 CHECK (tax_paise >= 0),
    total_paise      INTEGER NOT NULL CHECK (total_paise >= 0),
    coupon_id        BLOB REFERENCES coupons (id),
    quote_id         BLOB,
    scheduled_at     TEXT,
    last_event_seq   INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    fare_breakdown   TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(fare_breakdown)),
    pickup_cell      INTEGER,
    coupon_code      TEXT,
    notes            TEXT,
    refunded_paise   INTEGER NOT NULL DEFAULT 0 CHECK (refunded_paise >= 0),
    search_node      TEXT,
    search_lease_until TEXT,
    delivery_otp     TEXT CHECK (delivery_otp IS NULL OR length(delivery_otp) = 4),
    delivery_otp_failures INTEGER NOT NULL DEFAULT 0 CHECK (delivery_otp_failures >= 0),
    fees_owed_paise  INTEGER NOT NULL DEFAULT 0 CHECK (fees_owed_paise >= 0),
    CHECK ((status = 'cancelled') = (cancel_reason IS NOT NULL)),
    CHECK (total_paise = fare_paise - discount_paise + tax_paise)
) STRICT;

INSERT INTO orders_new (
    id, customer_id, pilot_id, vehicle_type, status, cancel_reason, pickup_lat, pickup_lng,
    pickup_address, drop_lat, drop_lng, drop_address, payment_method, payment_status, fare_paise,
    discount_paise, tax_paise, total_paise, coupon_id, quote_id, scheduled_at, last_event_seq,
    created_at, updated_at, fare_breakdown, pickup_cell, coupon_code, notes, refunded_paise,
    search_node, search_lease_until, delivery_otp, delivery_otp_failures, fees_owed_paise
)
SELECT
    id, customer_id, pilot_id, vehicle_type, status, cancel_reason, pickup_lat, pickup_lng,
    pickup_address, drop_lat, drop_lng, drop_address, payment_method, payment_status, fare_paise,
    discount_paise, tax_paise, total_paise, coupon_id, quote_id, scheduled_at, last_event_seq,
    created_at, updated_at, fare_breakdown, pickup_cell, coupon_code, notes, refunded_paise,
    search_node, search_lease_until, delivery_otp, delivery_otp_failures, fees_owed_paise
FROM orders;

DROP TABLE orders;
ALTER TABLE orders_new RENAME TO orders;

-- Every index the earlier migrations made, with the new statuses where they count.
CREATE INDEX orders_customer_idx ON orders (customer_id, id DESC);
CREATE INDEX orders_status_id_idx ON orders (status, id DESC);
CREATE INDEX orders_pilot_idx ON orders (pilot_id, id DESC) WHERE pilot_id IS NOT NULL;
CREATE UNIQUE INDEX orders_quote_once_idx ON orders (quote_id) WHERE quote_id IS NOT NULL;
CREATE INDEX orders_searching_demand_idx ON orders (pickup_cell, vehicle_type, customer_id)
    WHERE status = 'searching_driver';
CREATE UNIQUE INDEX orders_one_active_per_pilot ON orders (pilot_id)
    WHERE status IN ('assigned', 'picked_up', 'in_transit', 'returning');
CREATE INDEX orders_open_idx ON orders (status, id) WHERE status NOT IN ('delivered', 'cancelled', 'returned');
CREATE INDEX orders_customer_open_idx ON orders (customer_id)
    WHERE status NOT IN ('delivered', 'cancelled', 'returned');

COMMIT;
PRAGMA foreign_keys = ON;
