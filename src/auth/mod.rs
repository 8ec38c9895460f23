//! Accounts and sessions: sign-up, login, token refresh with rotation and reuse detection,
//! logout, and turning a bearer token into a [`Caller`].
//!
//! Invariants:
//! * a session's refresh tokens form a chain; each is spent once. Presenting a spent one
//!   means it was copied, so the whole session is revoked (the thief's and the owner's
//!   tokens alike) and both must log in again;
//! * a revoked session's access tokens are refused from the moment the revocation commits,
//!   on every node (see [`revocation`]);
//! * dispatchers and admins never sign themselves up: [`Auth::create_staff`] is reached
//!   only from the `dispatchd admin create-user` command.
//!
//! [`Auth::authenticate`] is the one token check, used by the REST extractor and (later)
//! by Socket.io connects.

pub mod password;
pub mod revocation;
pub mod token;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;

use crate::clock::Clock;
use crate::domain::{PersonName, Phone, Role, VehicleType};
use crate::error::{Error, Result};
use crate::ids::{SessionId, UserId};
use crate::store::{NewUser, RevokeReason, Rotation, Store, User};
use password::{NewPassword, PasswordHasher};
use revocation::Revocations;
use token::{Tokens, hash_refresh};

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub role: Role,
    pub session: SessionId,
    /// When the access token it came with expires (Unix seconds). A socket lives on past
    /// connect, so the gateway ends it then unless the app sends a fresher token.
    pub expires_at: i64,
}

impl Caller {
    /// Refuses with 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<()> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        Err(Error::forbidden("FORBIDDEN_ROLE", format!("this needs the role {}", allowed.join(" or "))))
    }
}

/// What sign-up, login and refresh hand back. `Debug` leaves the tokens out.
#[derive(Clone, Serialize)]
pub struct Grant {
    pub user: User,
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_token_expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("user", &self.user)
            .field("access_token", &"[REDACTED]")
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("refresh_token", &"[REDACTED]")
            .field("refresh_token_expires_at", &self.refresh_token_expires_at)
            .finish()
    }
}

/// A self sign-up, already parsed.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: PersonName,
    pub phone: Phone,
    pub password: NewPassword,
    pub role: Role,
    pub vehicle_type: Option<VehicleType>,
}

pub struct Auth {
    store: Arc<dyn Store>,
    tokens: Tokens,
    passwords: PasswordHasher,
    revocations: Revocations,
    clock: Clock,
    /// Push on: sessions the server ends are told so for this long (see `notify`).
    session_push_ttl: Option<chrono::Duration>,
}

impl Auth {
    pub fn new(
        store: Arc<dyn Store>,
        tokens: Tokens,
        passwords: PasswordHasher,
        revocations: Revocations,
        clock: Clock,
    ) -> Self {
        Self { store, tokens, passwords, revocations, clock, session_push_ttl: None }
    }

    /// Tells the devices of sessions the server ends (the account disabled, a refresh token
    /// used twice) to sign in again, by push, for `ttl`.
    pub fn push_ended_sessions(mut self, ttl: chrono::Duration) -> Self {
        self.session_push_ttl = Some(ttl);
        self
    }

    /// Queues the push telling `sessions` they ended (best effort: the sessions are already
    /// revoked, and their sockets told).
    async fn tell_ended(&self, sessions: &[SessionId], reason: RevokeReason) {
        let Some(ttl) = self.session_push_ttl.filter(|_| !sessions.is_empty()) else { return };
        let now = self.clock.now();
        let job = crate::notify::sessions_ended_job(sessions, reason.as_str(), now, ttl);
        if let Err(err) = self.store.enqueue(&job, now).await {
            tracing::warn!(error = %err, "could not queue the push of ended sessions");
        }
    }

    /// Which sessions are revoked.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Signs up a customer or a pilot and logs them in.
    pub async fn register(&self, registration: Registration) -> Result<Grant> {
        if !registration.role.can_self_register() {
            return Err(Error::forbidden(
                "ROLE_NOT_ALLOWED",
                format!("{} accounts are created by an operator, not by sign-up", registration.role),
            ));
        }
        let user = self
            .create_user(
                registration.name,
                registration.phone,
                registration.password,
                registration.role,
                registration.vehicle_type,
            )
            .await?;
        self.start_session(user).await
    }

    /// Creates a dispatcher or admin account (operator tooling only).
    pub async fn create_staff(
        &self,
        name: PersonName,
        phone: Phone,
        password: NewPassword,
        role: Role,
    ) -> Result<User> {
        if !role.is_staff() {
            return Err(Error::validation("role", "must be dispatcher or admin"));
        }
        self.create_user(name, phone, password, role, None).await
    }

    async fn create_user(
        &self,
        name: PersonName,
        phone: Phone,
        password: NewPassword,
        role: Role,
        vehicle_type: Option<VehicleType>,
    ) -> Result<User> {
        match (role, vehicle_type) {
            (Role::Pilot, None) => return Err(Error::validation("vehicle_type", "is required for pilots")),
            (role, Some(_)) if role != Role::Pilot => {
                return Err(Error::validation("vehicle_type", "is only for pilots"));
            }
            _ => {}
        }
        let password_hash = self.passwords.hash(password.into_secret()).await?;
        let user = NewUser { id: UserId::new(), phone, name, role, password_hash, vehicle_type };
        self.store.create_user(user, self.clock.now()).await
    }

    /// Logs in with phone and password. Unknown phone and wrong password look the same.
    pub async fn login(&self, phone: &Phone, password: SecretString) -> Result<Grant> {
        let credentials = self.store.credentials_by_phone(phone).await?;
        let hash = credentials.as_ref().map(|found| found.password_hash.clone());
        if !self.passwords.verify(password, hash).await? {
            return Err(Error::unauthorized("INVALID_CREDENTIALS", "phone number or password is wrong"));
        }
        let Some(credentials) = credentials else {
            return Err(Error::unauthorized("INVALID_CREDENTIALS", "phone number or password is wrong"));
        };
        if credentials.user.disabled_at.is_some() {
            return Err(Error::forbidden("ACCOUNT_DISABLED", "this account is disabled"));
        }
        self.start_session(credentials.user).await
    }

    /// Spends a refresh token for a new pair. A spent token revokes its session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Grant> {
        let now = self.clock.now();
        let (token, next) = self.tokens.new_refresh(now);
        match self.store.rotate_refresh_token(&hash_refresh(refresh_token), &next, now).await? {
            Rotation::Rotated { user, session } => self.grant(user, session, token, next.expires_at, now),
            Rotation::Reused { session } => {
                tracing::warn!(%session, "refresh token reused; session revoked");
                self.revocations.publish(&[session]).await;
                self.tell_ended(&[session], RevokeReason::RefreshTokenReused).await;
                Err(Error::unauthorized(
                    "REFRESH_TOKEN_REUSED",
                    "this refresh token was already used; the session is revoked, log in again",
                ))
            }
            Rotation::Revoked => Err(Error::unauthorized("SESSION_REVOKED", "the session has ended; log in again")),
            Rotation::Expired => Err(Error::unauthorized("REFRESH_TOKEN_EXPIRED", "the refresh token has expired")),
            Rotation::Unknown => Err(Error::unauthorized("INVALID_REFRESH_TOKEN", "the refresh token is not valid")),
        }
    }

    /// Ends the caller's session: its refresh token and every access token it minted.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        self.store.revoke_session(caller.session, RevokeReason::Logout, self.clock.now()).await?;
        self.revocations.publish(&[caller.session]).await;
        Ok(())
    }

    /// Disables an account and ends all its sessions.
    pub async fn disable_user(&self, id: UserId) -> Result<User> {
        let revoked = self
            .store
            .disable_user(id, self.clock.now())
            .await?
            .ok_or_else(|| Error::not_found("USER_NOT_FOUND", "no such user"))?;
        self.revocations.publish(&revoked).await;
        self.tell_ended(&revoked, RevokeReason::UserDisabled).await;
        self.store.user_by_id(id).await?.ok_or_else(|| Error::not_found("USER_NOT_FOUND", "no such user"))
    }

    /// Checks an access token and that its session is still live.
    pub async fn authenticate(&self, access_token: &str) -> Result<Caller> {
        let claims = self.tokens.verify_access(access_token, self.clock.now())?;
        if self.revocations.is_revoked(claims.sid).await? {
            return Err(Error::unauthorized("TOKEN_REVOKED", "the session has ended; log in again"));
        }
        Ok(Caller { user_id: claims.sub, role: claims.role, session: claims.sid, expires_at: claims.exp })
    }

    async fn start_session(&self, user: User) -> Result<Grant> {
        let now = self.clock.now();
        let session = SessionId::new();
        let (token, stored) = self.tokens.new_refresh(now);
        self.store.create_session(session, user.id, &stored, now).await?;
        self.grant(user, session, token, stored.expires_at, now)
    }

    fn grant(
        &self,
        user: User,
        session: SessionId,
        refresh_token: String,
        refresh_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Grant> {
        let (access_token, access_expires_at) = self.tokens.issue_access(user.id, user.role, session, now)?;
        Ok(Grant {
            user,
            access_token,
            token_type: "Bearer",
            expires_in: (access_expires_at - now).num_seconds(),
            access_token_expires_at: access_expires_at,
            refresh_token,
            refresh_token_expires_at: refresh_expires_at,
        })
    }
}
