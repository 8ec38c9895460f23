-- dispatchd initial schema (embedded SQLite).
--
-- Mirrors ../postgres table for table, column for column; see the comments there. Type
-- mapping: uuid -> BLOB (16 bytes), timestamptz -> TEXT (RFC 3339, UTC, so text order is time
-- order), bytea -> BLOB, jsonb -> TEXT (checked with json_valid), bigint -> INTEGER,
-- double precision -> REAL. Tables are STRICT so a value of the wrong type is refused.

CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    phone         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('customer', 'pilot', 'dispatcher', 'admin')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    disabled_at   TEXT
) STRICT;
CREATE INDEX users_role_id_idx ON users (role, id DESC);

CREATE TABLE pilots (
    user_id        BLOB PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    vehicle_type   TEXT NOT NULL CHECK (vehicle_type IN ('bike', 'auto', 'mini_truck', 'ev_cycle')),
    vehicle_number TEXT,
    status         TEXT NOT NULL DEFAULT 'offline'
                   CHECK (status IN ('offline', 'available', 'on_offer', 'busy', 'break')),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
) STRICT;
CREATE INDEX pilots_vehicle_status_idx ON pilots (vehicle_type, status);

CREATE TABLE auth_sessions (
    id                BLOB PRIMARY KEY,
    user_id           BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at        TEXT NOT NULL,
    last_refreshed_at TEXT,
    revoked_at        TEXT,
    revoked_reason    TEXT CHECK (revoked_reason IN ('logout', 'refresh_token_reused', 'user_disabled'))
) STRICT;
CREATE INDEX auth_sessions_user_idx ON auth_sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX auth_sessions_revoked_idx ON auth_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id BLOB NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    issued_at  TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT
) STRICT;
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

CREATE TABLE coupons (
    id                 BLOB PRIMARY KEY,
    code               TEXT NOT NULL UNIQUE,
    kind               TEXT NOT NULL CHECK (kind IN ('percent', 'flat')),
    value              INTEGER NOT NULL CHECK (value > 0),
    max_discount_paise INTEGER CHECK (max_discount_paise > 0),
    min_order_paise    INTEGER NOT NULL DEFAULT 0 CHECK (min_order_paise >= 0),
    valid_from         TEXT NOT NULL,
    valid_until        TEXT NOT NULL,
    per_user_limit     INTEGER CHECK (per_user_limit > 0),
    global_limit       INTEGER CHECK (global_limit > 0),
    used_count         INTEGER NOT NULL DEFAULT 0 CHECK (used_count >= 0),
    disabled_at        TEXT,
    created_at         TEXT NOT NULL,
    CHECK (kind <> 'percent' OR value <= 100),
    CHECK (valid_until > valid_from),
    CHECK (global_limit IS NULL OR used_count <= global_limit)
) STRICT;

CREATE TABLE orders (
    id               BLOB PRIMARY KEY,
    customer_id      BLOB NOT NULL REFERENCES users (id),
    pilot_id         BLOB REFERENCES users (id),
    vehicle_type     TEXT NOT NULL CHECK (vehicle_type IN ('bike', 'auto', 'mini_truck', 'ev_cycle')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'searching_driver', 'assigned',
                                                     'picked_up', 'in_transit', 'delivered', 'cancelled')),
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
    CHECK ((status = 'cancelled') = (cancel_reason IS NOT NULL)),
    CHECK (total_paise = fare_paise - discount_paise + tax_paise)
) STRICT;
CREATE INDEX orders_customer_idx ON orders (customer_id, id DESC);
CREATE INDEX orders_open_idx ON orders (status, id) WHERE status NOT IN ('delivered', 'cancelled');
CREATE UNIQUE INDEX orders_one_active_per_pilot ON orders (pilot_id)
    WHERE status IN ('assigned', 'picked_up', 'in_transit');

CREATE TABLE order_events (
    order_id   BLOB NOT NULL REFERENCES orders (id),
    seq        INTEGER NOT NULL CHECK (seq > 0),
    type       TEXT NOT NULL,
    actor_id   BLOB REFERENCES users (id),
    actor_role TEXT CHECK (actor_role IN ('customer', 'pilot', 'dispatcher', 'admin', 'system')),
    data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data)),
    created_at TEXT NOT NULL,
    PRIMARY KEY (order_id, seq)
) STRICT;

CREATE TRIGGER order_events_no_update BEFORE UPDATE ON order_events
BEGIN
    SELECT RAISE(ABORT, 'order_events is append-only');
END;
CREATE TRIGGER order_events_no_delete BEFORE DELETE ON order_events
BEGIN
    SELECT RAISE(ABORT, 'order_events is append-only');
END;

CREATE TABLE wallet_accounts (
    user_id       BLOB PRIMARY KEY REFERENCES users (id),
    balance_paise INTEGER NOT NULL DEFAULT 0 CHECK (balance_paise >= 0),
    held_paise    INTEGER NOT NULL DEFAULT 0 CHECK (held_paise >= 0 AND held_paise <= balance_paise),
    updated_at    TEXT NOT NULL
) STRICT;

CREATE TABLE wallet_ledger (
    id                  BLOB PRIMARY KEY,
    user_id             BLOB NOT NULL REFERENCES wallet_accounts (user_id),
    kind                TEXT NOT NULL CHECK (kind IN ('credit', 'debit', 'refund', 'hold', 'release')),
    amount_paise        INTEGER NOT NULL CHECK (amount_paise > 0),
    balance_after_paise INTEGER NOT NULL CHECK (balance_after_paise >= 0),
    order_id            BLOB REFERENCES orders (id),
    reference           TEXT,
    created_at          TEXT NOT NULL,
    UNIQUE (kind, reference)
) STRICT;
CREATE INDEX wallet_ledger_user_idx ON wallet_ledger (user_id, id DESC);
CREATE INDEX wallet_ledger_order_idx ON wallet_ledger (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE coupon_redemptions (
    coupon_id  BLOB NOT NULL REFERENCES coupons (id),
    order_id   BLOB NOT NULL REFERENCES orders (id),
    user_id    BLOB NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    PRIMARY KEY (coupon_id, order_id)
) STRICT;
CREATE INDEX coupon_redemptions_user_idx ON coupon_redemptions (coupon_id, user_id);

CREATE TABLE idempotency_keys (
    user_id         BLOB NOT NULL REFERENCES users (id),
    key             TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    BLOB NOT NULL,
    response_status INTEGER,
    response_body   TEXT CHECK (response_body IS NULL OR json_valid(response_body)),
    created_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT;
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

CREATE TABLE jobs (
    id           BLOB PRIMARY KEY,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    status       TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    run_at       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts INTEGER NOT NULL DEFAULT 10 CHECK (max_attempts > 0),
    locked_until TEXT,
    last_error   TEXT,
    dedupe_key   TEXT UNIQUE,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;
CREATE INDEX jobs_due_idx ON jobs (run_at) WHERE status IN ('queued', 'running');
