//! Accounts and sessions: users of every role, pilot profiles, refresh-token families.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{PersonName, Phone, PilotApproval, PilotStatus, Role, VehicleModel, VehiclePlate, VehicleType};
use crate::error::Result;
use crate::ids::{SessionId, UserId};
use crate::store::PageRequest;

crate::domain::string_enum! {
    /// Where a push token comes from.
    pub enum Platform {
        Android => "android",
        Ios => "ios",
        Web => "web",
    }
}

/// An app's push token, registered by its user (in a session).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub token: String,
    pub platform: Platform,
    pub user_id: UserId,
}

/// What a user wants to be told: the kinds of notification it turned off, and where its
/// email goes.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct NotificationSettings {
    pub email: Option<String>,
    pub off: Vec<String>,
}

/// An account, as every part of the server sees it. The password hash is not part of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub id: UserId,
    pub phone: Phone,
    pub name: PersonName,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<DateTime<Utc>>,
    /// How the other side of its orders rated it (customers rate pilots and pilots rate
    /// customers, after delivery).
    pub rating: RatingSummary,
    /// Present exactly when `role` is [`Role::Pilot`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pilot: Option<PilotProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PilotProfile {
    pub vehicle_type: VehicleType,
    pub status: PilotStatus,
    /// Whether it may go on duty: only `approved` pilots are offered or given work.
    pub approval: PilotApproval,
    /// Recorded by the admin who approved it.
    pub vehicle_plate: Option<VehiclePlate>,
    pub vehicle_model: Option<VehicleModel>,
}

/// Stars received: their average (`None` before the first) and count.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct RatingSummary {
    pub average: Option<f64>,
    pub count: i32,
}

impl RatingSummary {
    /// From the stored sum and count; the average to two decimals.
    pub fn from_sum(sum: i64, count: i32) -> Self {
        let average = (count > 0).then(|| (sum as f64 / f64::from(count) * 100.0).round() / 100.0);
        Self { average, count }
    }
}

/// One side's rating of the other after a delivered order.
#[derive(Debug, Clone)]
pub struct NewRating {
    pub order: crate::ids::OrderId,
    pub rater: UserId,
    pub ratee: UserId,
    /// 1 to 5.
    pub stars: i16,
    pub comment: Option<String>,
}

/// What an admin decides about a pilot.
#[derive(Debug, Clone)]
pub enum ApprovalChange {
    /// It may take work, driving the vehicle with this plate.
    Approve { plate: VehiclePlate, model: Option<VehicleModel> },
    /// It may not take work until approved again.
    Suspend,
}

/// A user to create; `vehicle_type` is required for pilots and refused for everyone else.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub phone: Phone,
    pub name: PersonName,
    pub role: Role,
    pub password_hash: String,
    pub vehicle_type: Option<VehicleType>,
}

/// A user with the hash to check a password against.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A refresh token to store: the SHA-256 of the token, never the token.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub hash: [u8; 32],
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// The token was live: it is now spent and `next` replaces it in the same session.
    Rotated {
        user: User,
        session: SessionId,
    },
    /// The token had been spent before: someone replayed it, so its session is now revoked.
    Reused {
        session: SessionId,
    },
    /// The session was revoked earlier (logout, reuse, user disabled).
    Revoked,
    Expired,
    /// No such token.
    Unknown,
}

/// Why a session was revoked; stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    RefreshTokenReused,
    UserDisabled,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::RefreshTokenReused => "refresh_token_reused",
            RevokeReason::UserDisabled => "user_disabled",
        }
    }
}

/// Account operations. Each method is atomic.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user (and its pilot profile) in one transaction.
    /// A taken phone number is `Error::Conflict` with code `PHONE_TAKEN`.
    async fn create_user(&self, user: NewUser, now: DateTime<Utc>) -> Result<User>;

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>>;

    async fn credentials_by_phone(&self, phone: &Phone) -> Result<Option<Credentials>>;

    /// Users newest first, optionally of one role.
    async fn list_users(&self, role: Option<Role>, page: PageRequest<UserId>) -> Result<Vec<User>>;

    /// Pilots with `approval`, newest first.
    async fn pilots_by_approval(&self, approval: PilotApproval, page: PageRequest<UserId>) -> Result<Vec<User>>;

    /// Records an admin's decision about a pilot (`by`: `None` for the operator's command
    /// line). `None` when there is no such pilot.
    async fn set_pilot_approval(
        &self,
        pilot: UserId,
        change: &ApprovalChange,
        by: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<Option<User>>;

    /// Records a rating and adds it to the ratee's summary, atomically. `false` when the
    /// rater already rated this order (nothing changes).
    async fn rate(&self, rating: &NewRating, now: DateTime<Utc>) -> Result<bool>;

    /// Disables a user and revokes all its sessions in one transaction. Returns the revoked
    /// sessions, or `None` when there is no such user. Disabling twice changes nothing.
    async fn disable_user(&self, id: UserId, now: DateTime<Utc>) -> Result<Option<Vec<SessionId>>>;

    /// Starts a session with its first refresh token.
    async fn create_session(
        &self,
        session: SessionId,
        user: UserId,
        refresh: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Spends the refresh token whose hash is `presented` and stores `next` in its place,
    /// atomically: of two concurrent uses of one token exactly one rotates, the other is
    /// reuse and revokes the session.
    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        next: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Rotation>;

    /// Revokes a session (idempotent).
    async fn revoke_session(&self, session: SessionId, reason: RevokeReason, now: DateTime<Utc>) -> Result<()>;

    /// Whether access tokens of `session` must be refused. Unknown sessions are revoked.
    async fn is_session_revoked(&self, session: SessionId) -> Result<bool>;

    /// Registers `device` for its user in `session` (a token registered before moves to this
    /// user), keeping the user's `keep` most recently registered devices and removing older ones.
    async fn register_device(&self, device: &Device, session: SessionId, keep: u32, now: DateTime<Utc>) -> Result<()>;

    /// Removes the device with `token` (only `owner`'s, when given); whether it was there.
    async fn remove_device(&self, token: &str, owner: Option<UserId>) -> Result<bool>;

    /// The devices registered in `session`.
    async fn devices_of_session(&self, session: SessionId) -> Result<Vec<Device>>;

    /// Removes the devices registered in `session` (it logged out).
    async fn remove_session_devices(&self, session: SessionId) -> Result<()>;

    /// The user's devices, most recently registered first.
    async fn devices_of(&self, user: UserId) -> Result<Vec<Device>>;

    /// What the user wants to be told (the defaults when it never said).
    async fn notification_settings(&self, user: UserId) -> Result<NotificationSettings>;

    async fn set_notification_settings(
        &self,
        user: UserId,
        settings: &NotificationSettings,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Sessions revoked at or after `since`, to copy into Redis after an outage.
    async fn revoked_sessions_since(&self, since: DateTime<Utc>) -> Result<Vec<(SessionId, DateTime<Utc>)>>;
}

/// Row shape shared by both backends' user queries.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UserRow {
    id: uuid::Uuid,
    phone: String,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
    vehicle_type: Option<String>,
    pilot_status: Option<String>,
    approval: Option<String>,
    vehicle_number: Option<String>,
    vehicle_model: Option<String>,
    rating_sum: i64,
    rating_count: i32,
}

impl TryFrom<UserRow> for User {
    type Error = crate::error::Error;

    /// Values in the database went through the same parsers on the way in; one that fails
    /// now means the data was changed behind the server's back.
    fn try_from(row: UserRow) -> Result<Self> {
        let corrupt = |what: &str| anyhow::anyhow!("stored {what} of user {} is invalid", row.id);
        let pilot = match (&row.vehicle_type, &row.pilot_status, &row.approval) {
            (Some(vehicle), Some(status), Some(approval)) => Some(PilotProfile {
                vehicle_type: vehicle.parse().map_err(|_| corrupt("vehicle_type"))?,
                status: status.parse().map_err(|_| corrupt("pilot status"))?,
                approval: approval.parse().map_err(|_| corrupt("pilot approval"))?,
                vehicle_plate: row
                    .vehicle_number
                    .as_deref()
                    .map(VehiclePlate::parse)
                    .transpose()
                    .map_err(|_| corrupt("vehicle plate"))?,
                vehicle_model: row
                    .vehicle_model
                    .as_deref()
                    .map(VehicleModel::parse)
                    .transpose()
                    .map_err(|_| corrupt("vehicle model"))?,
            }),
            _ => None,
        };
        Ok(User {
            id: UserId(row.id),
            phone: Phone::parse(&row.phone).map_err(|_| corrupt("phone"))?,
            name: PersonName::parse(&row.name).map_err(|_| corrupt("name"))?,
            role: row.role.parse().map_err(|_| corrupt("role"))?,
            created_at: row.created_at,
            disabled_at: row.disabled_at,
            rating: RatingSummary::from_sum(row.rating_sum, row.rating_count),
            pilot,
        })
    }
}

/// `SELECT` of a [`UserRow`] (user joined with its pilot profile), optionally with extra
/// columns, followed by `$rest`: one string literal, which is what sqlx's query functions take.
macro_rules! select_user {
    ($rest:literal) => {
        $crate::store::accounts::select_user!("", $rest)
    };
    ($extra_columns:literal, $rest:literal) => {
        concat!(
            "SELECT u.id, u.phone, u.name, u.role, u.created_at, u.disabled_at, u.rating_sum, u.rating_count, ",
            // `p.status` is never written: the live status is the grid's (`Fleet::with_live_status`).
            "p.vehicle_type, p.status AS pilot_status, p.approval, p.vehicle_number, p.vehicle_model",
            $extra_columns,
            " FROM users u LEFT JOIN pilots p ON p.user_id = u.id ",
            $rest
        )
    };
}
pub(crate) use select_user;
