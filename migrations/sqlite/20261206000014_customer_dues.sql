-- A cash order its customer cancels after a pilot was assigned keeps a cancellation fee that
-- nobody paid: the customer owes it. It is added to the customer's next order (charged_order_id,
-- in that order's transaction), given back if that order is cancelled, and settled when that
-- order is delivered, which is when the pilot who set out for the cancelled one is paid it.
CREATE TABLE customer_dues (
    order_id         BLOB PRIMARY KEY REFERENCES orders (id),
    customer_id      BLOB NOT NULL REFERENCES users (id),
    pilot_id         BLOB REFERENCES users (id),
    amount_paise     INTEGER NOT NULL CHECK (amount_paise > 0),
    created_at       TEXT NOT NULL,
    charged_order_id BLOB REFERENCES orders (id),
    settled_at       TEXT,
    CHECK (settled_at IS NULL OR charged_order_id IS NOT NULL)
);
CREATE INDEX customer_dues_open_idx ON customer_dues (customer_id) WHERE settled_at IS NULL;
CREATE INDEX customer_dues_charged_idx ON customer_dues (charged_order_id) WHERE charged_order_id IS NOT NULL;

-- The order's own columns keep their meaning: total_paise is the trip's total (fare − discount
-- + tax, as its CHECK says). Fees owed ride on top; the customer pays total_paise +
-- fees_owed_paise (the fare breakdown's total).
ALTER TABLE orders ADD COLUMN fees_owed_paise INTEGER NOT NULL DEFAULT 0 CHECK (fees_owed_paise >= 0);
