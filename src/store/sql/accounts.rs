// Account operations, shared by both backends (included into a submodule of each; see
// base.rs). The backend defines `SELECT_REFRESH_FOR_ROTATION`, locking the token row where the
// dialect needs it. Times are always parameters (the server's clock, never the database's
// `now()`), so tests can control time.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{Phone, PilotApproval, PilotStatus, Role};
use crate::error::{Error, Result};
use crate::ids::{SessionId, UserId};
use crate::store::accounts::{UserRow, select_user};
use crate::store::{
    AccountStore, ApprovalChange, Credentials, Device, NotificationSettings, NewRating, RatingSummary, NewRefreshToken, NewUser, PageRequest, PilotProfile, RevokeReason, Rotation, User,
};

type Tx = sqlx::Transaction<'static, Db>;

/// A user with its pilot profile, on the pool or inside a transaction.
pub(crate) async fn user_by_id<'e, E>(executor: E, id: UserId) -> Result<Option<User>>
where
    E: sqlx::Executor<'e, Database = Db>,
{
    let row: Option<UserRow> =
        sqlx::query_as(select_user!("WHERE u.id = $1")).bind(id.0).fetch_optional(executor).await?;
    row.map(User::try_from).transpose()
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    session_id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    disabled_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

#[async_trait]
impl AccountStore for StoreImpl {
    async fn create_user(&self, user: NewUser, now: DateTime<Utc>) -> Result<User> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, phone, name, password_hash, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(user.id.0)
        .bind(user.phone.as_str())
        .bind(user.name.as_str())
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(db)) = &inserted
            && db.is_unique_violation()
        {
            return Err(Error::conflict("PHONE_TAKEN", "an account with this phone number already exists"));
        }
        inserted?;
        if let Some(vehicle) = user.vehicle_type {
            sqlx::query(
                "INSERT INTO pilots (user_id, vehicle_type, status, approval, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(user.id.0)
            .bind(vehicle.as_str())
            .bind(PilotStatus::Offline.as_str())
            .bind(PilotApproval::Pending.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(User {
            id: user.id,
            phone: user.phone,
            name: user.name,
            role: user.role,
            created_at: now,
            disabled_at: None,
            rating: RatingSummary::default(),
            pilot: user.vehicle_type.map(|vehicle_type| PilotProfile {
                vehicle_type,
                status: PilotStatus::Offline,
                approval: PilotApproval::Pending,
                vehicle_plate: None,
                vehicle_model: None,
            }),
        })
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        user_by_id(&self.pool, id).await
    }

    async fn credentials_by_phone(&self, phone: &Phone) -> Result<Option<Credentials>> {
        let row: Option<CredentialsRow> = sqlx::query_as(select_user!(", u.password_hash", "WHERE u.phone = $1"))
        .bind(phone.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(Credentials { user: User::try_from(row.user)?, password_hash: row.password_hash }))
            .transpose()
    }

    async fn list_users(&self, role: Option<Role>, page: PageRequest<UserId>) -> Result<Vec<User>> {
        let rows: Vec<UserRow> = sqlx::query_as(select_user!(
            "WHERE ($1 IS NULL OR u.role = $1) AND ($2 IS NULL OR u.id < $2) ORDER BY u.id DESC LIMIT $3"
        ))
        .bind(role.map(Role::as_str))
        .bind(page.before.map(|id| id.0))
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(User::try_from).collect()
    }

    async fn pilots_by_approval(&self, approval: PilotApproval, page: PageRequest<UserId>) -> Result<Vec<User>> {
        let rows: Vec<UserRow> = sqlx::query_as(select_user!(
            "WHERE p.approval = $1 AND ($2 IS NULL OR p.user_id < $2) ORDER BY p.user_id DESC LIMIT $3"
        ))
        .bind(approval.as_str())
        .bind(page.before.map(|id| id.0))
        .bind(i64::from(page.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(User::try_from).collect()
    }

    async fn set_pilot_approval(
        &self,
        pilot: UserId,
        change: &ApprovalChange,
        by: Option<UserId>,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
        let (approval, plate, model) = match change {
            ApprovalChange::Approve { plate, model } => {
                (PilotApproval::Approved, Some(plate.as_str()), model.as_ref().map(|model| model.as_str()))
            }
            ApprovalChange::Suspend => (PilotApproval::Suspended, None, None),
        };
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        // Suspending keeps the plate and model on record.
        let found = sqlx::query(
            "UPDATE pilots SET approval = $2, vehicle_number = COALESCE($3, vehicle_number), \
             vehicle_model = CASE WHEN $3 IS NULL THEN vehicle_model ELSE $4 END, \
             approval_changed_at = $5, approval_changed_by = $6, updated_at = $5 WHERE user_id = $1",
        )
        .bind(pilot.0)
        .bind(approval.as_str())
        .bind(plate)
        .bind(model)
        .bind(now)
        .bind(by.map(|by| by.0))
        .execute(&mut *tx)
        .await?;
        if found.rows_affected() == 0 {
            return Ok(None);
        }
        let row: UserRow = sqlx::query_as(select_user!("WHERE u.id = $1")).bind(pilot.0).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        User::try_from(row).map(Some)
    }

    async fn rate(&self, rating: &NewRating, now: DateTime<Utc>) -> Result<bool> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let inserted = sqlx::query(
            "INSERT INTO ratings (order_id, rater_id, ratee_id, stars, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, rater_id) DO NOTHING",
        )
        .bind(rating.order.0)
        .bind(rating.rater.0)
        .bind(rating.ratee.0)
        .bind(rating.stars)
        .bind(rating.comment.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE users SET rating_sum = rating_sum + $2, rating_count = rating_count + 1 WHERE id = $1")
            .bind(rating.ratee.0)
            .bind(i64::from(rating.stars))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn disable_user(&self, id: UserId, now: DateTime<Utc>) -> Result<Option<Vec<SessionId>>> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let found = sqlx::query("UPDATE users SET disabled_at = COALESCE(disabled_at, $2), updated_at = $2 WHERE id = $1")
            .bind(id.0)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Ok(None);
        }
        let revoked: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 \
             WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
        )
        .bind(id.0)
        .bind(now)
        .bind(RevokeReason::UserDisabled.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(revoked.into_iter().map(SessionId).collect()))
    }

    async fn create_session(
        &self,
        session: SessionId,
        user: UserId,
        refresh: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        sqlx::query("INSERT INTO auth_sessions (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(session.0)
            .bind(user.0)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_refresh_token(&mut tx, session, refresh, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        next: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> Result<Rotation> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        let row: Option<RefreshRow> =
            sqlx::query_as(SELECT_REFRESH_FOR_ROTATION).bind(&presented[..]).fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Ok(Rotation::Unknown);
        };
        let session = SessionId(row.session_id);
        let outcome = if row.revoked_at.is_some() || row.disabled_at.is_some() {
            Rotation::Revoked
        } else if row.used_at.is_some() {
            revoke(&mut tx, session, RevokeReason::RefreshTokenReused, now).await?;
            Rotation::Reused { session }
        } else if row.expires_at <= now {
            Rotation::Expired
        } else if !spend_refresh_token(&mut tx, presented, now).await? {
            // Spent between our read and our write: only possible where the read took no
            // row lock. It is still a second use of one token.
            revoke(&mut tx, session, RevokeReason::RefreshTokenReused, now).await?;
            Rotation::Reused { session }
        } else {
            insert_refresh_token(&mut tx, session, next, now).await?;
            sqlx::query("UPDATE auth_sessions SET last_refreshed_at = $2 WHERE id = $1")
                .bind(session.0)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let user: UserRow = sqlx::query_as(select_user!("WHERE u.id = $1"))
                .bind(row.user_id)
                .fetch_one(&mut *tx)
                .await?;
            Rotation::Rotated { user: User::try_from(user)?, session }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn revoke_session(&self, session: SessionId, reason: RevokeReason, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        revoke(&mut tx, session, reason, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn register_device(&self, device: &Device, session: SessionId, keep: u32, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        sqlx::query(
            "INSERT INTO devices (token, user_id, session_id, platform, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (token) DO UPDATE SET user_id = excluded.user_id, \
             session_id = excluded.session_id, platform = excluded.platform, updated_at = excluded.updated_at",
        )
        .bind(&device.token)
        .bind(device.user_id.0)
        .bind(session.0)
        .bind(device.platform.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM devices WHERE user_id = $1 AND token NOT IN \
             (SELECT token FROM devices WHERE user_id = $1 ORDER BY updated_at DESC, token LIMIT $2)",
        )
        .bind(device.user_id.0)
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_device(&self, token: &str, owner: Option<UserId>) -> Result<bool> {
        let removed = sqlx::query("DELETE FROM devices WHERE token = $1 AND ($2 IS NULL OR user_id = $2)")
            .bind(token)
            .bind(owner.map(|user| user.0))
            .execute(&self.writer)
            .await?;
        Ok(removed.rows_affected() > 0)
    }

    async fn remove_session_devices(&self, session: SessionId) -> Result<()> {
        sqlx::query("DELETE FROM devices WHERE session_id = $1").bind(session.0).execute(&self.writer).await?;
        Ok(())
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<Device>> {
        let rows: Vec<(String, String, Uuid)> = sqlx::query_as(
            "SELECT token, platform, user_id FROM devices WHERE user_id = $1 ORDER BY updated_at DESC, token",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(device).collect()
    }

    async fn devices_of_session(&self, session: SessionId) -> Result<Vec<Device>> {
        let rows: Vec<(String, String, Uuid)> =
            sqlx::query_as("SELECT token, platform, user_id FROM devices WHERE session_id = $1 ORDER BY token")
                .bind(session.0)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(device).collect()
    }

    async fn notification_settings(&self, user: UserId) -> Result<NotificationSettings> {
        let row: Option<(Option<String>, String)> =
            sqlx::query_as("SELECT email, off FROM notification_settings WHERE user_id = $1")
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await?;
        let Some((email, off)) = row else { return Ok(NotificationSettings::default()) };
        let off = serde_json::from_str(&off).map_err(|err| Error::Internal(anyhow::anyhow!("notification settings: {err}")))?;
        Ok(NotificationSettings { email, off })
    }

    async fn set_notification_settings(
        &self,
        user: UserId,
        settings: &NotificationSettings,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let off = serde_json::to_string(&settings.off).map_err(|err| Error::Internal(err.into()))?;
        sqlx::query(
            "INSERT INTO notification_settings (user_id, email, off, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, off = excluded.off, updated_at = excluded.updated_at",
        )
        .bind(user.0)
        .bind(settings.email.as_deref())
        .bind(off)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn is_session_revoked(&self, session: SessionId) -> Result<bool> {
        let revoked_at: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT revoked_at FROM auth_sessions WHERE id = $1")
                .bind(session.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(revoked_at.is_none_or(|at| at.is_some()))
    }

    async fn revoked_sessions_since(&self, since: DateTime<Utc>) -> Result<Vec<(SessionId, DateTime<Utc>)>> {
        let rows: Vec<(Uuid, DateTime<Utc>)> =
            sqlx::query_as("SELECT id, revoked_at FROM auth_sessions WHERE revoked_at >= $1 ORDER BY revoked_at")
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, at)| (SessionId(id), at)).collect())
    }
}

async fn insert_refresh_token(
    tx: &mut Tx,
    session: SessionId,
    token: &NewRefreshToken,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(&token.hash[..])
        .bind(session.0)
        .bind(now)
        .bind(token.expires_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks a refresh token spent, if nobody did first. The conditional update is what makes
/// two concurrent rotations of one token yield one winner.
async fn spend_refresh_token(tx: &mut Tx, hash: &[u8; 32], now: DateTime<Utc>) -> Result<bool> {
    let spent = sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL")
        .bind(&hash[..])
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(spent.rows_affected() == 1)
}

async fn revoke(tx: &mut Tx, session: SessionId, reason: RevokeReason, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(session.0)
    .bind(now)
    .bind(reason.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn device((token, platform, user): (String, String, Uuid)) -> Result<Device> {
    let platform = crate::store::orders::parse_stored(&platform, "device platform")?;
    Ok(Device { token, platform, user_id: UserId(user) })
}
