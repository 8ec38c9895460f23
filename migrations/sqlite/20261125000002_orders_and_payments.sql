-- Mirrors ../postgres/20261125000002_orders_and_payments.sql; see the comments there.
ALTER TABLE orders ADD COLUMN fare_breakdown TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(fare_breakdown));
ALTER TABLE orders ADD COLUMN pickup_cell INTEGER;
ALTER TABLE orders ADD COLUMN coupon_code TEXT;
ALTER TABLE orders ADD COLUMN notes TEXT;
ALTER TABLE orders ADD COLUMN refunded_paise INTEGER NOT NULL DEFAULT 0 CHECK (refunded_paise >= 0);

CREATE INDEX orders_open_demand_idx ON orders (pickup_cell, vehicle_type)
    WHERE status IN ('pending', 'searching_driver');
CREATE INDEX orders_status_id_idx ON orders (status, id DESC);
CREATE INDEX orders_pilot_idx ON orders (pilot_id, id DESC) WHERE pilot_id IS NOT NULL;

CREATE TABLE payments (
    id                 BLOB PRIMARY KEY,
    user_id            BLOB NOT NULL REFERENCES users (id),
    purpose            TEXT NOT NULL CHECK (purpose IN ('order', 'topup')),
    order_id           BLOB REFERENCES orders (id),
    gateway            TEXT NOT NULL CHECK (gateway IN ('razorpay', 'stripe')),
    gateway_ref        TEXT NOT NULL,
    gateway_payment_id TEXT,
    amount_paise       INTEGER NOT NULL CHECK (amount_paise > 0),
    status             TEXT NOT NULL CHECK (status IN ('created', 'paid', 'failed')),
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    UNIQUE (gateway, gateway_ref),
    CHECK ((purpose = 'order') = (order_id IS NOT NULL))
) STRICT;
CREATE UNIQUE INDEX payments_one_live_per_order ON payments (order_id)
    WHERE order_id IS NOT NULL AND status <> 'failed';
CREATE INDEX payments_user_idx ON payments (user_id, id DESC);

CREATE TABLE webhook_events (
    gateway     TEXT NOT NULL CHECK (gateway IN ('razorpay', 'stripe')),
    event_id    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (gateway, event_id)
) STRICT;
