//! The store conformance suite: every case runs against Postgres and against SQLite, through
//! the one `Store` interface, plus the schema's own guarantees checked with raw SQL.
//!
//! Accounts and the schema's guarantees are here; orders (and idempotency keys), offers and
//! traces, money and jobs are in `store/`, each declaring its cases with the same `conformance!` macro.

mod common;

use std::sync::Arc;

use chrono::{Duration, Utc};
use dispatchd::config::Config;
use dispatchd::domain::{PersonName, Phone, PilotApproval, PilotStatus, Role, VehicleModel, VehiclePlate, VehicleType};
use dispatchd::error::Result;
use dispatchd::ids::{SessionId, UserId};
use dispatchd::store::postgres::PgStore;
use dispatchd::store::sqlite::SqliteStore;
use dispatchd::store::{ApprovalChange, NewRefreshToken, NewUser, PageRequest, RevokeReason, Rotation, Store, StoreTx};
use futures::future::join_all;

/// A store under test, with raw access to its schema.
struct Subject {
    store: Arc<dyn Store>,
    raw: Raw,
    _dir: Option<tempfile::TempDir>,
}

enum Raw {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl Subject {
    async fn postgres() -> Self {
        let url = common::fresh_postgres_database().await;
        let store = PgStore::connect(&url, &database_config()).await.unwrap();
        store.migrate().await.unwrap();
        Self { store: Arc::new(store.clone()), raw: Raw::Postgres(store), _dir: None }
    }

    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"), &database_config()).await.unwrap();
        store.migrate().await.unwrap();
        Self { store: Arc::new(store.clone()), raw: Raw::Sqlite(store), _dir: Some(dir) }
    }

    /// Presents the refresh token `[presented; 32]`, offering `[next; 32]` as its successor.
    async fn rotate(&self, presented: u8, next: u8) -> Rotation {
        let successor = refresh_token(next, Duration::days(7));
        self.store.rotate_refresh_token(&[presented; 32], &successor, now()).await.unwrap()
    }

    /// Runs a statement directly; `Err` carries the database's refusal.
    async fn execute(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        match &self.raw {
            Raw::Postgres(store) => sqlx::query(sql).execute(store.pool()).await.map(|done| done.rows_affected()),
            Raw::Sqlite(store) => sqlx::query(sql).execute(store.pool()).await.map(|done| done.rows_affected()),
        }
    }
}

fn database_config() -> dispatchd::config::DatabaseConfig {
    Config::defaults().database
}

/// Declares each case once and runs it on both backends; attributes before a case (such as
/// `#[ignore = "why"]`) go on both its tests. Modules under `store/` use it too: `super::Subject`
/// must name [`Subject`] where it is invoked.
macro_rules! conformance {
    ($($(#[$attr:meta])* $case:ident),+ $(,)?) => {
        mod postgres {
            $(#[tokio::test] $(#[$attr])* async fn $case() { super::$case(super::Subject::postgres().await).await; })+
        }
        mod sqlite {
            $(#[tokio::test] $(#[$attr])* async fn $case() { super::$case(super::Subject::sqlite().await).await; })+
        }
    };
}

// Declared after the macro, which they use.
#[path = "store/jobs.rs"]
mod jobs;
#[path = "store/money.rs"]
mod money;
#[path = "store/offers.rs"]
mod offers;
#[path = "store/orders.rs"]
mod orders;

conformance!(
    a_schema_a_newer_release_migrated_still_opens,
    users_round_trip_with_pilot_profiles,
    pilots_wait_for_approval_and_can_be_suspended,
    phone_numbers_are_unique,
    users_list_newest_first_by_role,
    refresh_tokens_rotate_once_and_reuse_revokes,
    concurrent_rotations_have_one_winner,
    expired_and_unknown_tokens_rotate_nothing,
    revocations_are_recorded_and_listed,
    disabling_a_user_revokes_its_sessions,
    order_events_are_append_only,
    wallet_balances_never_go_negative,
);

fn new_user(role: Role, vehicle: Option<VehicleType>) -> NewUser {
    NewUser {
        id: UserId::new(),
        phone: Phone::parse(&common::unique_phone()).unwrap(),
        name: PersonName::parse("Meera").unwrap(),
        role,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        vehicle_type: vehicle,
    }
}

fn now() -> chrono::DateTime<Utc> {
    dispatchd::clock::Clock::system().now()
}

fn refresh_token(seed: u8, expires_in: Duration) -> NewRefreshToken {
    NewRefreshToken { hash: [seed; 32], expires_at: now() + expires_in }
}

/// A user stored with `role` (pilots ride a bike, approved), for the rows that name one.
async fn user(subject: &Subject, role: Role) -> UserId {
    let vehicle = (role == Role::Pilot).then_some(VehicleType::Bike);
    let id = subject.store.create_user(new_user(role, vehicle), now()).await.unwrap().id;
    if role == Role::Pilot {
        let plate = dispatchd::domain::VehiclePlate::parse("KA01AB1234").unwrap();
        let change = dispatchd::store::ApprovalChange::Approve { plate, model: None };
        subject.store.set_pilot_approval(id, &change, None, now()).await.unwrap().unwrap();
    }
    id
}

/// Runs `op` in a transaction and commits, holding the transaction open a moment first so a
/// concurrent one runs into whatever it took. A failed `op` rolls back.
async fn commit_after_pause<T>(store: &dyn Store, op: &impl AsyncFn(&mut dyn StoreTx) -> Result<T>) -> Result<T> {
    let mut tx = store.begin().await?;
    let outcome = op(&mut *tx).await?;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tx.commit().await?;
    Ok(outcome)
}

/// Runs `op` in two transactions at once: a race on whatever rows it touches.
async fn twice_at_once<T>(subject: &Subject, op: impl AsyncFn(&mut dyn StoreTx) -> Result<T>) -> [Result<T>; 2] {
    let store = &*subject.store;
    let (first, second) = tokio::join!(commit_after_pause(store, &op), commit_after_pause(store, &op));
    [first, second]
}

async fn session_for(subject: &Subject, seed: u8) -> (UserId, SessionId) {
    let user = subject.store.create_user(new_user(Role::Customer, None), now()).await.unwrap();
    let session = SessionId::new();
    subject.store.create_session(session, user.id, &refresh_token(seed, Duration::days(7)), now()).await.unwrap();
    (user.id, session)
}

async fn users_round_trip_with_pilot_profiles(subject: Subject) {
    let at = now();
    let pilot = subject.store.create_user(new_user(Role::Pilot, Some(VehicleType::EvCycle)), at).await.unwrap();
    let profile = pilot.pilot.clone().unwrap();
    assert_eq!((profile.vehicle_type, profile.status), (VehicleType::EvCycle, PilotStatus::Offline));
    assert_eq!(subject.store.user_by_id(pilot.id).await.unwrap(), Some(pilot.clone()), "read back equals written");
    let credentials = subject.store.credentials_by_phone(&pilot.phone).await.unwrap().unwrap();
    assert_eq!(credentials.user, pilot);
    assert!(credentials.password_hash.starts_with("$argon2id$"));
    let customer = subject.store.create_user(new_user(Role::Customer, None), at).await.unwrap();
    assert_eq!(subject.store.user_by_id(customer.id).await.unwrap().unwrap().pilot, None);
    assert_eq!(subject.store.user_by_id(UserId::new()).await.unwrap(), None);
    let unknown = Phone::parse(&common::unique_phone()).unwrap();
    assert!(subject.store.credentials_by_phone(&unknown).await.unwrap().is_none());
}

async fn pilots_wait_for_approval_and_can_be_suspended(subject: Subject) {
    let store = &subject.store;
    let first = store.create_user(new_user(Role::Pilot, Some(VehicleType::Bike)), now()).await.unwrap();
    let second = store.create_user(new_user(Role::Pilot, Some(VehicleType::Auto)), now()).await.unwrap();
    assert_eq!(first.pilot.as_ref().unwrap().approval, PilotApproval::Pending);
    let page = |before| PageRequest { before, limit: 10 };
    let pending: Vec<_> =
        store.pilots_by_approval(PilotApproval::Pending, page(None)).await.unwrap().iter().map(|u| u.id).collect();
    assert_eq!(pending, [second.id, first.id], "newest first");
    let older = store.pilots_by_approval(PilotApproval::Pending, page(Some(second.id))).await.unwrap();
    assert_eq!(older.iter().map(|u| u.id).collect::<Vec<_>>(), [first.id]);

    let plate = VehiclePlate::parse("ka 01 ab 1234").unwrap();
    let model = Some(VehicleModel::parse("Honda Activa 6G").unwrap());
    let approve = ApprovalChange::Approve { plate, model };
    let approved = store.set_pilot_approval(first.id, &approve, None, now()).await.unwrap().unwrap();
    let profile = approved.pilot.clone().unwrap();
    assert_eq!(profile.approval, PilotApproval::Approved);
    assert_eq!(profile.vehicle_plate.unwrap().as_str(), "KA01AB1234");
    assert_eq!(profile.vehicle_model.unwrap().as_str(), "Honda Activa 6G");
    assert_eq!(store.user_by_id(first.id).await.unwrap(), Some(approved), "read back equals written");

    let suspended = store.set_pilot_approval(first.id, &ApprovalChange::Suspend, None, now()).await.unwrap().unwrap();
    let profile = suspended.pilot.unwrap();
    assert_eq!(profile.approval, PilotApproval::Suspended);
    assert_eq!(profile.vehicle_plate.unwrap().as_str(), "KA01AB1234", "a suspension keeps the vehicle on record");
    let listed = store.pilots_by_approval(PilotApproval::Suspended, page(None)).await.unwrap();
    assert_eq!(listed.iter().map(|u| u.id).collect::<Vec<_>>(), [first.id]);

    let customer = store.create_user(new_user(Role::Customer, None), now()).await.unwrap();
    for nobody in [customer.id, UserId::new()] {
        assert_eq!(store.set_pilot_approval(nobody, &ApprovalChange::Suspend, None, now()).await.unwrap(), None);
    }
}

async fn phone_numbers_are_unique(subject: Subject) {
    let first = new_user(Role::Customer, None);
    let mut second = new_user(Role::Pilot, Some(VehicleType::Bike));
    second.phone = first.phone.clone();
    subject.store.create_user(first, now()).await.unwrap();
    let err = subject.store.create_user(second.clone(), now()).await.unwrap_err();
    assert_eq!(err.code(), "PHONE_TAKEN");
    assert_eq!(subject.store.user_by_id(second.id).await.unwrap(), None, "nothing half-written");
}

async fn users_list_newest_first_by_role(subject: Subject) {
    let mut pilots = Vec::new();
    for _ in 0..3 {
        subject.store.create_user(new_user(Role::Customer, None), now()).await.unwrap();
        pilots.push(subject.store.create_user(new_user(Role::Pilot, Some(VehicleType::Auto)), now()).await.unwrap().id);
    }
    pilots.reverse();
    let first = subject.store.list_users(Some(Role::Pilot), PageRequest { before: None, limit: 2 }).await.unwrap();
    assert_eq!(first.iter().map(|user| user.id).collect::<Vec<_>>(), pilots[..2]);
    let rest =
        subject.store.list_users(Some(Role::Pilot), PageRequest { before: Some(pilots[1]), limit: 2 }).await.unwrap();
    assert_eq!(rest.iter().map(|user| user.id).collect::<Vec<_>>(), pilots[2..]);
    let everyone = subject.store.list_users(None, PageRequest { before: None, limit: 100 }).await.unwrap();
    assert_eq!(everyone.len(), 6);
}

async fn refresh_tokens_rotate_once_and_reuse_revokes(subject: Subject) {
    let (user, session) = session_for(&subject, 1).await;
    match subject.rotate(1, 2).await {
        Rotation::Rotated { user: found, session: same } => assert_eq!((found.id, same), (user, session)),
        other => panic!("expected a rotation, got {other:?}"),
    }
    assert!(!subject.store.is_session_revoked(session).await.unwrap());
    assert_eq!(subject.rotate(1, 3).await, Rotation::Reused { session });
    assert!(subject.store.is_session_revoked(session).await.unwrap());
    assert_eq!(subject.rotate(2, 4).await, Rotation::Revoked, "the whole family is gone");
}

async fn concurrent_rotations_have_one_winner(subject: Subject) {
    let (_, session) = session_for(&subject, 7).await;
    let attempts = (0..10u8).map(|seed| {
        let store = subject.store.clone();
        async move { store.rotate_refresh_token(&[7; 32], &refresh_token(100 + seed, Duration::days(7)), now()).await }
    });
    let outcomes: Vec<Rotation> = join_all(attempts).await.into_iter().map(Result::unwrap).collect();
    let winners = outcomes.iter().filter(|outcome| matches!(outcome, Rotation::Rotated { .. })).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    for outcome in outcomes.iter().filter(|outcome| !matches!(outcome, Rotation::Rotated { .. })) {
        assert!(matches!(outcome, Rotation::Reused { .. } | Rotation::Revoked), "{outcome:?}");
    }
    assert!(subject.store.is_session_revoked(session).await.unwrap());
}

async fn expired_and_unknown_tokens_rotate_nothing(subject: Subject) {
    let user = subject.store.create_user(new_user(Role::Customer, None), now()).await.unwrap();
    let session = SessionId::new();
    let issued = now() - Duration::days(8);
    let old = NewRefreshToken { hash: [9; 32], expires_at: issued + Duration::days(7) };
    subject.store.create_session(session, user.id, &old, issued).await.unwrap();
    assert_eq!(subject.rotate(9, 10).await, Rotation::Expired);
    assert_eq!(subject.rotate(9, 11).await, Rotation::Expired, "still");
    assert_eq!(subject.rotate(10, 12).await, Rotation::Unknown);
    assert!(!subject.store.is_session_revoked(session).await.unwrap());
}

async fn revocations_are_recorded_and_listed(subject: Subject) {
    let before = now();
    let (_, kept) = session_for(&subject, 20).await;
    let (_, ended) = session_for(&subject, 21).await;
    subject.store.revoke_session(ended, RevokeReason::Logout, now()).await.unwrap();
    subject.store.revoke_session(ended, RevokeReason::Logout, now()).await.unwrap();
    assert!(subject.store.is_session_revoked(ended).await.unwrap());
    assert!(!subject.store.is_session_revoked(kept).await.unwrap());
    assert!(subject.store.is_session_revoked(SessionId::new()).await.unwrap(), "unknown sessions are refused");
    let listed = subject.store.revoked_sessions_since(before).await.unwrap();
    assert_eq!(listed.iter().map(|(session, _)| *session).collect::<Vec<_>>(), vec![ended]);
    assert!(subject.store.revoked_sessions_since(now() + Duration::seconds(1)).await.unwrap().is_empty());
}

async fn disabling_a_user_revokes_its_sessions(subject: Subject) {
    let (user, first) = session_for(&subject, 30).await;
    let second = SessionId::new();
    subject.store.create_session(second, user, &refresh_token(31, Duration::days(7)), now()).await.unwrap();
    let mut revoked = subject.store.disable_user(user, now()).await.unwrap().unwrap();
    revoked.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(subject.store.user_by_id(user).await.unwrap().unwrap().disabled_at.is_some());
    assert_eq!(subject.store.disable_user(user, now()).await.unwrap(), Some(vec![]), "idempotent");
    assert_eq!(subject.store.disable_user(UserId::new(), now()).await.unwrap(), None);
    assert_eq!(subject.rotate(31, 32).await, Rotation::Revoked);
}

async fn order_events_are_append_only(subject: Subject) {
    let inserts: [&'static str; 3] = match subject.raw {
        Raw::Postgres(_) => [
            "INSERT INTO users (id, phone, name, password_hash, role, created_at, updated_at) VALUES \
             ('01900000-0000-7000-8000-000000000001', '+911111111111', 'C', 'h', 'customer', now(), now())",
            "INSERT INTO orders (id, customer_id, vehicle_type, status, pickup_lat, pickup_lng, pickup_address, \
             drop_lat, drop_lng, drop_address, payment_method, fare_paise, total_paise, created_at, updated_at) VALUES \
             ('01900000-0000-7000-8000-000000000002', '01900000-0000-7000-8000-000000000001', 'bike', 'pending', \
             12.9, 77.6, 'A', 12.95, 77.65, 'B', 'cash', 5000, 5000, now(), now())",
            "INSERT INTO order_events (order_id, seq, type, actor_role, created_at) VALUES \
             ('01900000-0000-7000-8000-000000000002', 1, 'created', 'customer', now())",
        ],
        Raw::Sqlite(_) => [
            "INSERT INTO users (id, phone, name, password_hash, role, created_at, updated_at) VALUES \
             (x'01900000000070008000000000000001', '+911111111111', 'C', 'h', 'customer', 't', 't')",
            "INSERT INTO orders (id, customer_id, vehicle_type, status, pickup_lat, pickup_lng, pickup_address, \
             drop_lat, drop_lng, drop_address, payment_method, fare_paise, total_paise, created_at, updated_at) VALUES \
             (x'01900000000070008000000000000002', x'01900000000070008000000000000001', 'bike', 'pending', \
             12.9, 77.6, 'A', 12.95, 77.65, 'B', 'cash', 5000, 5000, 't', 't')",
            "INSERT INTO order_events (order_id, seq, type, actor_role, created_at) VALUES \
             (x'01900000000070008000000000000002', 1, 'created', 'customer', 't')",
        ],
    };
    for insert in inserts {
        subject.execute(insert).await.unwrap();
    }
    let update = subject.execute("UPDATE order_events SET type = 'rewritten'").await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = subject.execute("DELETE FROM order_events").await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    let duplicate_seq = subject.execute(inserts[2]).await;
    assert!(duplicate_seq.is_err(), "seq is unique per order");
}

async fn wallet_balances_never_go_negative(subject: Subject) {
    let user = subject.store.create_user(new_user(Role::Customer, None), now()).await.unwrap();
    let (open, debit) = match subject.raw {
        Raw::Postgres(_) => (
            "INSERT INTO wallet_accounts (user_id, balance_paise, updated_at) SELECT id, 1000, now() FROM users",
            "UPDATE wallet_accounts SET balance_paise = balance_paise - 1500",
        ),
        Raw::Sqlite(_) => (
            "INSERT INTO wallet_accounts (user_id, balance_paise, updated_at) SELECT id, 1000, 't' FROM users",
            "UPDATE wallet_accounts SET balance_paise = balance_paise - 1500",
        ),
    };
    assert_eq!(subject.execute(open).await.unwrap(), 1, "{user:?}");
    assert!(subject.execute(debit).await.is_err(), "the CHECK refuses a negative balance");
}

/// A rollback, or an old node restarting while a rollout runs: the database has a migration
/// this binary does not know (a newer release applied it). Migrations only add, so it starts.
async fn a_schema_a_newer_release_migrated_still_opens(subject: Subject) {
    let newer = match &subject.raw {
        Raw::Postgres(_) => subject.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99991231000000, 'from a newer release', true, decode('00', 'hex'), 0)",
        ),
        Raw::Sqlite(_) => subject.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99991231000000, 'from a newer release', true, x'00', 0)",
        ),
    };
    assert_eq!(newer.await.unwrap(), 1);
    match &subject.raw {
        Raw::Postgres(store) => store.migrate().await.unwrap(),
        Raw::Sqlite(store) => store.migrate().await.unwrap(),
    }
}
