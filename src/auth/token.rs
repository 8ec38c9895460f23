//! Access and refresh tokens.
//!
//! * Access tokens are HS256 JWTs (`sub` user, `sid` session, `role`, `iss`, `iat`, `exp`,
//!   `typ: "access"`), valid `auth.access_ttl_secs`. Expiry is checked against the server's
//!   [`Clock`](crate::clock::Clock), not the library's, so tests control it.
//! * Refresh tokens are 256 random bits, base64url. Only their SHA-256 is stored.

use crate::clock::seconds;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::ids::{SessionId, UserId};
use crate::store::NewRefreshToken;

const ACCESS_TYPE: &str = "access";

/// What an access token says about its bearer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub sub: UserId,
    pub sid: SessionId,
    pub role: Role,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    pub typ: String,
}

/// Issues and checks tokens with the configured secret and lifetimes.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl Tokens {
    pub fn new(secret: &[u8], config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.set_issuer(&[&config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: config.issuer.clone(),
            access_ttl: seconds(config.access_ttl_secs),
            refresh_ttl: seconds(config.refresh_ttl_secs),
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// A signed access token and when it expires.
    pub fn issue_access(
        &self,
        user: UserId,
        role: Role,
        session: SessionId,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>)> {
        let expires_at = now + self.access_ttl;
        let claims = AccessClaims {
            sub: user,
            sid: session,
            role,
            iss: self.issuer.clone(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            typ: ACCESS_TYPE.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|err| anyhow::anyhow!("signing an access token failed: {err}"))?;
        Ok((token, expires_at))
    }

    /// Checks signature, issuer, type and expiry. Says why a token is refused, never more.
    pub fn verify_access(&self, token: &str, now: DateTime<Utc>) -> Result<AccessClaims> {
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| Error::unauthorized("INVALID_TOKEN", "the access token is invalid"))?
            .claims;
        if claims.typ != ACCESS_TYPE {
            return Err(Error::unauthorized("INVALID_TOKEN", "not an access token"));
        }
        if claims.exp <= now.timestamp() {
            return Err(Error::unauthorized("TOKEN_EXPIRED", "the access token has expired; refresh it"));
        }
        Ok(claims)
    }

    /// A fresh refresh token (to hand out) and what to store of it.
    pub fn new_refresh(&self, now: DateTime<Utc>) -> (String, NewRefreshToken) {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let stored = NewRefreshToken { hash: hash_refresh(&token), expires_at: now + self.refresh_ttl };
        (token, stored)
    }

    pub fn refresh_ttl(&self) -> Duration {
        self.refresh_ttl
    }
}

/// The stored form of a refresh token.
pub fn hash_refresh(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &str) -> Tokens {
        let config = crate::config::Config::defaults();
        Tokens::new(secret.as_bytes(), &config.auth)
    }

    #[test]
    fn access_tokens_round_trip_and_expire_by_the_given_clock() {
        let tokens = tokens("0123456789abcdef0123456789abcdef");
        let now = Utc::now();
        let (user, session) = (UserId::new(), SessionId::new());
        let (token, expires_at) = tokens.issue_access(user, Role::Pilot, session, now).unwrap();
        assert_eq!(expires_at - now, Duration::hours(24));
        let claims = tokens.verify_access(&token, now).unwrap();
        assert_eq!((claims.sub, claims.sid, claims.role), (user, session, Role::Pilot));
        let expired = tokens.verify_access(&token, now + Duration::hours(24)).unwrap_err();
        assert_eq!(expired.code(), "TOKEN_EXPIRED");
    }

    #[test]
    fn tokens_from_another_secret_or_tampered_are_invalid() {
        let now = Utc::now();
        let (token, _) = tokens("another-secret-another-secret-xx")
            .issue_access(UserId::new(), Role::Admin, SessionId::new(), now)
            .unwrap();
        let ours = tokens("0123456789abcdef0123456789abcdef");
        assert_eq!(ours.verify_access(&token, now).unwrap_err().code(), "INVALID_TOKEN");
        assert_eq!(ours.verify_access("not.a.jwt", now).unwrap_err().code(), "INVALID_TOKEN");
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let tokens = tokens("0123456789abcdef0123456789abcdef");
        let now = Utc::now();
        let (first, stored) = tokens.new_refresh(now);
        let (second, _) = tokens.new_refresh(now);
        assert_ne!(first, second);
        assert_eq!(first.len(), 43);
        assert_eq!(stored.hash, hash_refresh(&first));
        assert_eq!(stored.expires_at - now, Duration::days(7));
    }
}
