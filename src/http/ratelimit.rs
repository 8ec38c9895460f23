//! Per-client-IP rate limiting of the API (GCRA, from `governor`): a client may burst up to
//! `requests_per_minute` requests, then gets one more every `60 / requests_per_minute`
//! seconds. Every answer carries `X-RateLimit-Limit` and `X-RateLimit-Remaining`; a refused
//! one is 429 with `Retry-After` (whole seconds) and `X-RateLimit-Reset`.
//! Limits are per node: behind a load balancer the effective limit is per node times nodes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Governor};

/// A keyed GCRA limiter that reports remaining capacity on success.
type KeyedLimiter = Governor<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

use crate::config::RateLimitConfig;
use crate::error::Error;

/// The limiter shared by all requests of one server.
pub struct RateLimiter {
    governor: KeyedLimiter,
    clock: DefaultClock,
    limit: u32,
    client_ip_header: Option<String>,
}

impl RateLimiter {
    /// `None` when rate limiting is disabled.
    pub fn new(config: &RateLimitConfig) -> Option<Arc<Self>> {
        let per_minute = NonZeroU32::new(config.requests_per_minute).filter(|_| config.enabled)?;
        Some(Arc::new(Self {
            governor: Governor::keyed(Quota::per_minute(per_minute)).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            limit: per_minute.get(),
            client_ip_header: Some(config.client_ip_header.clone()).filter(|header| !header.is_empty()),
        }))
    }

    /// Forgets clients whose allowance is full again, so memory follows active clients.
    pub fn forget_idle_clients(&self) {
        self.governor.retain_recent();
        self.governor.shrink_to_fit();
    }

    fn client_ip(&self, req: &Request) -> IpAddr {
        let from_header = self.client_ip_header.as_deref().and_then(|name| forwarded_ip(req.headers(), name));
        from_header
            .or_else(|| req.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip()))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// The client's address as the proxy wrote it in header `name` (`x-forwarded-for`: its last
/// entry, the one our proxy added; `x-real-ip`).
pub fn forwarded_ip(headers: &HeaderMap, name: &str) -> Option<IpAddr> {
    let value = headers.get(name)?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

/// The middleware: refuse over the limit, else pass on and annotate the answer.
pub async fn enforce(State(limiter): State<Arc<RateLimiter>>, req: Request, next: Next) -> Response {
    let ip = limiter.client_ip(&req);
    match limiter.governor.check_key(&ip) {
        Ok(snapshot) => {
            let mut response = next.run(req).await;
            set_headers(response.headers_mut(), limiter.limit, snapshot.remaining_burst_capacity());
            response
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(limiter.clock.now());
            let retry_after_secs = whole_seconds(wait);
            metrics::counter!("http_rate_limited_total").increment(1);
            let mut response = Error::RateLimited { retry_after_secs }.into_response();
            set_headers(response.headers_mut(), limiter.limit, 0);
            response.headers_mut().insert("x-ratelimit-reset", HeaderValue::from(retry_after_secs));
            response
        }
    }
}

fn set_headers(headers: &mut HeaderMap, limit: u32, remaining: u32) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
}

/// Rounds up, and never says 0: "retry in 0 s" would invite an immediate retry.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(600)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2100)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn a_client_gets_its_burst_then_is_refused() {
        let config = RateLimitConfig { enabled: true, requests_per_minute: 3, client_ip_header: String::new() };
        let limiter = RateLimiter::new(&config).unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.governor.check_key(&ip).is_ok());
        }
        assert!(limiter.governor.check_key(&ip).is_err());
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(limiter.governor.check_key(&other).is_ok(), "limits are per client");
    }
}
