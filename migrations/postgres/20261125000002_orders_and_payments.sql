-- Orders keep their whole fare breakdown (for receipts and disputes), the coarse H3 cell of the
-- pickup (surge pricing counts open orders per cell), the coupon code as the customer typed it,
-- notes for the pilot, and how much was refunded.
ALTER TABLE orders ADD COLUMN fare_breakdown jsonb NOT NULL DEFAULT '{}';
ALTER TABLE orders ADD COLUMN pickup_cell bigint;
ALTER TABLE orders ADD COLUMN coupon_code text;
ALTER TABLE orders ADD COLUMN notes text;
ALTER TABLE orders ADD COLUMN refunded_paise bigint NOT NULL DEFAULT 0 CHECK (refunded_paise >= 0);

-- Open demand per pickup cell and vehicle type, for surge.
CREATE INDEX orders_open_demand_idx ON orders (pickup_cell, vehicle_type)
    WHERE status IN ('pending', 'searching_driver');
-- Staff listing every order, newest first, optionally by status.
CREATE INDEX orders_status_id_idx ON orders (status, id DESC);
-- A pilot's orders, newest first.
CREATE INDEX orders_pilot_idx ON orders (pilot_id, id DESC) WHERE pilot_id IS NOT NULL;

-- Payments through a gateway, for an order or a wallet top-up. The gateway's own id is
-- unique, so a webhook finds its payment; an order has at most one payment that has not failed.
CREATE TABLE payments (
    id                 uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id),
    purpose            text NOT NULL CHECK (purpose IN ('order', 'topup')),
    order_id           uuid REFERENCES orders (id),
    gateway            text NOT NULL CHECK (gateway IN ('razorpay', 'stripe')),
    gateway_ref        text NOT NULL,
    gateway_payment_id text,
    amount_paise       bigint NOT NULL CHECK (amount_paise > 0),
    status             text NOT NULL CHECK (status IN ('created', 'paid', 'failed')),
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT payments_gateway_ref_key UNIQUE (gateway, gateway_ref),
    CHECK ((purpose = 'order') = (order_id IS NOT NULL))
);
CREATE UNIQUE INDEX payments_one_live_per_order ON payments (order_id)
    WHERE order_id IS NOT NULL AND status <> 'failed';
CREATE INDEX payments_user_idx ON payments (user_id, id DESC);

-- Gateway webhook deliveries already processed: a redelivery of the same event does nothing.
CREATE TABLE webhook_events (
    gateway     text NOT NULL CHECK (gateway IN ('razorpay', 'stripe')),
    event_id    text NOT NULL,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (gateway, event_id)
);
