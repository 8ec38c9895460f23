//! Firebase Cloud Messaging, HTTP v1 API: `POST {base_url}/v1/projects/{project}/messages:send`
//! per device, authorised by an OAuth2 access token obtained with the JWT-bearer grant
//! (RFC 7523) from a service account's key, and cached until a minute before it expires.
//! Answers are read as Google documents them: `UNREGISTERED` (404) and `INVALID_ARGUMENT`
//! (400) mean the token is no good; 429 (`QUOTA_EXCEEDED`), `UNAVAILABLE` (503) and `INTERNAL`
//! (500) are retried, honouring `Retry-After`; `SENDER_ID_MISMATCH` and other 403s are
//! refused for good (counted in `push_gateway_errors_total`); a 401 drops the cached token.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{PushError, PushGateway, PushMessage};
use crate::store::Platform;

/// `[notifications.fcm]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key file (Firebase console → Project settings → Service
    /// accounts → Generate new private key). Empty: no push.
    pub credentials_file: String,
    /// FCM's API root (a test points it at a fake).
    pub base_url: String,
    /// The OAuth2 token endpoint; empty: the key file's `token_uri`.
    pub token_url: String,
    pub timeout_secs: u64,
}

/// The fields of a service account key that matter here.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    token_url: String,
    client_email: String,
    key: EncodingKey,
    /// The access token and when to stop using it.
    token: Mutex<Option<(String, Instant)>>,
    /// Held while a new access token is asked for.
    fetching: tokio::sync::Mutex<()>,
}

impl Fcm {
    pub fn new(config: &FcmConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(&config.credentials_file)
            .map_err(|err| anyhow::anyhow!("notifications.fcm.credentials_file {}: {err}", config.credentials_file))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|err| anyhow::anyhow!("notifications.fcm.credentials_file is not a service account key: {err}"))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|err| anyhow::anyhow!("the service account's private_key: {err}"))?;
        let token_url = if config.token_url.is_empty() { account.token_uri } else { config.token_url.clone() };
        let base = config.base_url.trim_end_matches('/');
        Ok(Self {
            client: reqwest::Client::builder().timeout(Duration::from_secs(config.timeout_secs)).build()?,
            send_url: format!("{base}/v1/projects/{}/messages:send", account.project_id),
            token_url,
            client_email: account.client_email,
            key,
            token: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, PushError> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        // One request for a new token at a time: the pushes running beside this one wait
        // for it instead of each asking for their own.
        let _fetching = self.fetching.lock().await;
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let now = chrono::Utc::now().timestamp();
        let claims =
            json!({ "iss": self.client_email, "scope": SCOPE, "aud": self.token_url, "iat": now, "exp": now + 3600 });
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|err| PushError::Rejected(format!("signing the token request: {err}")))?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let response = self.client.post(&self.token_url).form(&form).send().await.map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            gateway_error("token", status.as_u16());
            return Err(match status.as_u16() {
                429 | 500..=599 => {
                    PushError::Retry { retry_after_secs: None, message: format!("token endpoint {status}") }
                }
                _ => PushError::Rejected(format!("token endpoint {status}: {text}")),
            });
        }
        #[derive(Deserialize)]
        struct Grant {
            access_token: String,
            expires_in: u64,
        }
        let grant: Grant =
            response.json().await.map_err(|err| PushError::Rejected(format!("token endpoint answer: {err}")))?;
        // A minute early: never send with a token about to expire.
        let until = Instant::now() + Duration::from_secs(grant.expires_in.saturating_sub(60));
        *self.token.lock() = Some((grant.access_token.clone(), until));
        Ok(grant.access_token)
    }

    fn cached_token(&self) -> Option<String> {
        self.token.lock().clone().filter(|(_, until)| Instant::now() < *until).map(|(token, _)| token)
    }
}

#[async_trait]
impl PushGateway for Fcm {
    async fn send(&self, token: &str, platform: Platform, message: &PushMessage) -> Result<(), PushError> {
        let body = json!({ "message": fcm_message(token, platform, message) });
        // One more try when the cached access token was refused (revoked, or clocks apart).
        for _ in 0..2 {
            let access = self.access_token().await?;
            let response =
                self.client.post(&self.send_url).bearer_auth(&access).json(&body).send().await.map_err(unreachable)?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok());
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let code = error_code(&answer);
            gateway_error(&code, status);
            match (status, code.as_str()) {
                (401, _) => {
                    self.token.lock().take();
                    continue;
                }
                (404, _) | (_, "UNREGISTERED") => return Err(PushError::Unregistered(code)),
                (400, _) | (_, "INVALID_ARGUMENT") => return Err(PushError::Unregistered(code)),
                (429 | 500..=599, _) | (_, "UNAVAILABLE" | "INTERNAL" | "QUOTA_EXCEEDED") => {
                    return Err(PushError::Retry {
                        retry_after_secs: retry_after,
                        message: format!("{status} {code}"),
                    });
                }
                _ => return Err(PushError::Rejected(format!("{status} {code}"))),
            }
        }
        Err(PushError::Retry { retry_after_secs: None, message: "the access token was refused twice".into() })
    }
}

/// The v1 message for one device: notification, data (strings), and per-platform priority,
/// collapse key and time to live.
fn fcm_message(token: &str, platform: Platform, message: &PushMessage) -> Value {
    let ttl = (message.expires_at - chrono::Utc::now()).num_seconds().max(0);
    let mut body = json!({
        "token": token,
        "notification": { "title": message.title, "body": message.body },
        "data": message.data,
    });
    match platform {
        Platform::Android => {
            let mut android =
                json!({ "priority": if message.high_priority { "HIGH" } else { "NORMAL" }, "ttl": format!("{ttl}s") });
            if let Some(key) = &message.collapse_key {
                android["collapse_key"] = json!(key);
            }
            body["android"] = android;
        }
        Platform::Ios => {
            let mut headers = json!({
                "apns-priority": if message.high_priority { "10" } else { "5" },
                "apns-expiration": message.expires_at.timestamp().to_string(),
            });
            if let Some(key) = &message.collapse_key {
                headers["apns-collapse-id"] = json!(key);
            }
            body["apns"] = json!({ "headers": headers });
        }
        Platform::Web => {
            body["webpush"] = json!({ "headers": { "TTL": ttl.to_string(), "Urgency": if message.high_priority { "high" } else { "normal" } } });
        }
    }
    body
}

/// FCM's error code: the `FcmError` detail's `errorCode`, else the status name.
fn error_code(answer: &Value) -> String {
    let details = answer["error"]["details"].as_array();
    let fcm = details.and_then(|details| details.iter().find_map(|detail| detail["errorCode"].as_str()));
    fcm.or_else(|| answer["error"]["status"].as_str()).unwrap_or("UNKNOWN").to_owned()
}

fn unreachable(err: reqwest::Error) -> PushError {
    gateway_error("UNREACHABLE", 0);
    PushError::Retry { retry_after_secs: None, message: format!("FCM unreachable: {err}") }
}

/// `push_gateway_errors_total{code}`.
fn gateway_error(code: &str, status: u16) {
    metrics::counter!("push_gateway_errors_total", "code" => code.to_owned(), "status" => status.to_string())
        .increment(1);
}
