-- What the platform owes each pilot (positive) or the pilot owes the platform (negative: cash
-- it collected beyond its earnings). The balance is a cache of the ledger, changed only
-- together with a ledger row. Entries are signed; one per kind and order (or payout).
CREATE TABLE pilot_accounts (
    user_id       uuid PRIMARY KEY REFERENCES users (id),
    balance_paise bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL
);

-- A pilot asks to be paid out of its balance; an admin approves (the money leaves the
-- balance, then the payout gateway, by default the operator by hand, pays it) or rejects.
CREATE TABLE payouts (
    id           uuid PRIMARY KEY,
    pilot_id     uuid NOT NULL REFERENCES pilot_accounts (user_id),
    amount_paise bigint NOT NULL CHECK (amount_paise > 0),
    status       text NOT NULL CHECK (status IN ('requested', 'approved', 'rejected', 'paid')),
    reason       text,                 -- why it was rejected
    reference    text,                 -- the bank transfer's reference, once paid
    decided_by   uuid REFERENCES users (id),
    created_at   timestamptz NOT NULL,
    decided_at   timestamptz,
    paid_at      timestamptz
);
CREATE INDEX payouts_pilot_idx ON payouts (pilot_id, id DESC);
CREATE INDEX payouts_open_idx ON payouts (status, id) WHERE status IN ('requested', 'approved');

CREATE TABLE pilot_ledger (
    id                  uuid PRIMARY KEY,
    pilot_id            uuid NOT NULL REFERENCES pilot_accounts (user_id),
    -- trip_earning: the fare less the commission; cash_collected: what a cash order's
    -- customer paid the pilot in hand; cancellation_fee: the fee kept when the customer
    -- cancelled after assignment, less the commission; payout: paid out to the pilot;
    -- settlement: cash the pilot handed back to the platform (reference: the receipt's).
    kind                text NOT NULL CHECK (kind IN ('trip_earning', 'cash_collected', 'cancellation_fee', 'payout', 'settlement')),
    amount_paise        bigint NOT NULL CHECK (amount_paise <> 0),
    commission_paise    bigint NOT NULL DEFAULT 0 CHECK (commission_paise >= 0),
    balance_after_paise bigint NOT NULL,
    order_id            uuid REFERENCES orders (id),
    payout_id           uuid REFERENCES payouts (id),
    reference           text,
    created_at          timestamptz NOT NULL,
    CHECK ((kind = 'payout') = (payout_id IS NOT NULL AND order_id IS NULL)),
    CONSTRAINT pilot_ledger_once UNIQUE (kind, order_id),
    CONSTRAINT pilot_ledger_payout_once UNIQUE (payout_id),
    CONSTRAINT pilot_ledger_reference_once UNIQUE (kind, reference)
);
CREATE INDEX pilot_ledger_pilot_idx ON pilot_ledger (pilot_id, created_at);
