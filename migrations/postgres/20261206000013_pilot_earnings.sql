-- What the platform owes each pilot (positive) or the pilot owes the platform (negative: cash
-- it collected beyond its earnings). The balance is a cache of the ledger, changed only
-- together with a ledger row. Entries are signed; one per kind and order.
CREATE TABLE pilot_accounts (
    user_id       uuid PRIMARY KEY REFERENCES users (id),
    balance_paise bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE pilot_ledger (
    id                  uuid PRIMARY KEY,
    pilot_id            uuid NOT NULL REFERENCES pilot_accounts (user_id),
    -- trip_earning: the fare less the commission; cash_collected: what a cash order's
    -- customer paid the pilot in hand; cancellation_fee: the fee kept when the customer
    -- cancelled after assignment, less the commission.
    kind                text NOT NULL CHECK (kind IN ('trip_earning', 'cash_collected', 'cancellation_fee')),
    amount_paise        bigint NOT NULL CHECK (amount_paise <> 0),
    commission_paise    bigint NOT NULL DEFAULT 0 CHECK (commission_paise >= 0),
    balance_after_paise bigint NOT NULL,
    order_id            uuid REFERENCES orders (id),
    created_at          timestamptz NOT NULL,
    CONSTRAINT pilot_ledger_once UNIQUE (kind, order_id)
);
CREATE INDEX pilot_ledger_pilot_idx ON pilot_ledger (pilot_id, created_at);
