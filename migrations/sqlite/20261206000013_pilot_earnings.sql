-- What the platform owes each pilot (positive) or the pilot owes the platform (negative: cash
-- it collected beyond its earnings). The balance is a cache of the ledger, changed only
-- together with a ledger row. Entries are signed; one per kind and order (or payout).
CREATE TABLE pilot_accounts (
    user_id       BLOB PRIMARY KEY REFERENCES users (id),
    balance_paise INTEGER NOT NULL DEFAULT 0,
    updated_at    TEXT NOT NULL
) STRICT;

CREATE TABLE payouts (
    id           BLOB PRIMARY KEY,
    pilot_id     BLOB NOT NULL REFERENCES pilot_accounts (user_id),
    amount_paise INTEGER NOT NULL CHECK (amount_paise > 0),
    status       TEXT NOT NULL CHECK (status IN ('requested', 'approved', 'rejected', 'paid')),
    reason       TEXT,
    reference    TEXT,
    decided_by   BLOB REFERENCES users (id),
    created_at   TEXT NOT NULL,
    decided_at   TEXT,
    paid_at      TEXT
) STRICT;
CREATE INDEX payouts_pilot_idx ON payouts (pilot_id, id DESC);
CREATE INDEX payouts_open_idx ON payouts (status, id) WHERE status IN ('requested', 'approved');

CREATE TABLE pilot_ledger (
    id                  BLOB PRIMARY KEY,
    pilot_id            BLOB NOT NULL REFERENCES pilot_accounts (user_id),
    kind                TEXT NOT NULL CHECK (kind IN ('trip_earning', 'cash_collected', 'cancellation_fee', 'payout', 'settlement')),
    amount_paise        INTEGER NOT NULL CHECK (amount_paise <> 0),
    commission_paise    INTEGER NOT NULL DEFAULT 0 CHECK (commission_paise >= 0),
    balance_after_paise INTEGER NOT NULL,
    order_id            BLOB REFERENCES orders (id),
    payout_id           BLOB REFERENCES payouts (id),
    reference           TEXT,
    created_at          TEXT NOT NULL,
    CHECK ((kind = 'payout') = (payout_id IS NOT NULL AND order_id IS NULL)),
    UNIQUE (kind, order_id),
    UNIQUE (payout_id),
    UNIQUE (kind, reference)
) STRICT;
CREATE INDEX pilot_ledger_pilot_idx ON pilot_ledger (pilot_id, created_at);
