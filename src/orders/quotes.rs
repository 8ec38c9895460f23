//! Quotes: a fare promised for a few minutes. A quote is not stored: its id is a signed token
//! carrying what was priced and the fare. An order that presents it gets exactly that fare, if
//! it is the same customer, vehicle and places, and the quote has not expired. The signature is
//! HMAC-SHA256 under a key derived from the server secret for this purpose alone.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::orders::Fare;
use crate::domain::{LatLng, VehicleType};
use crate::error::{Error, Result};
use crate::ids::UserId;

const PREFIX: &str = "q1.";

/// What a quote promises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteClaims {
    pub id: uuid::Uuid,
    pub user: UserId,
    pub vehicle: VehicleType,
    pub pickup: [f64; 2],
    pub drop: [f64; 2],
    /// The fare before any discount.
    pub fare: Fare,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

impl QuoteClaims {
    /// Whether an order for these places matches the quote (to within about 10 cm).
    pub fn covers(&self, user: UserId, vehicle: VehicleType, pickup: LatLng, drop: LatLng) -> bool {
        let same = |a: [f64; 2], b: LatLng| (a[0] - b.lat()).abs() < 1e-6 && (a[1] - b.lng()).abs() < 1e-6;
        self.user == user && self.vehicle == vehicle && same(self.pickup, pickup) && same(self.drop, drop)
    }
}

/// Signs and checks quote tokens.
pub struct QuoteSigner {
    key: [u8; 32],
}

impl QuoteSigner {
    pub fn new(secret: &[u8]) -> Self {
        let key = Sha256::new().chain_update(b"dispatchd quote signing v1\0").chain_update(secret).finalize();
        Self { key: key.into() }
    }

    pub fn sign(&self, claims: &QuoteClaims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("quote claims serialize"));
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&payload));
        format!("{PREFIX}{payload}.{signature}")
    }

    /// The claims of a genuine, unexpired quote.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<QuoteClaims> {
        let invalid =
            || Error::Unprocessable { code: "QUOTE_INVALID", message: "this is not a quote id we issued".into() };
        let (payload, signature) =
            token.strip_prefix(PREFIX).and_then(|rest| rest.split_once('.')).ok_or_else(invalid)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| invalid())?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let claims: QuoteClaims = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if claims.exp <= now.timestamp() {
            return Err(Error::Unprocessable {
                code: "QUOTE_EXPIRED",
                message: "the quote has expired; ask for a new one".into(),
            });
        }
        Ok(claims)
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> QuoteClaims {
        let fare = Fare {
            distance_m: 5000,
            duration_s: 600,
            base_paise: 2500,
            distance_paise: 4000,
            time_paise: 1000,
            surge_milli: 1000,
            surge_paise: 0,
            minimum_fare_adjustment_paise: 0,
            fare_paise: 7500,
            discount_paise: 0,
            tax_paise: 375,
            fees_owed_paise: 0,
            total_paise: 7875,
        };
        QuoteClaims {
            id: uuid::Uuid::new_v4(),
            user: UserId::new(),
            vehicle: VehicleType::Bike,
            pickup: [12.97, 77.59],
            drop: [12.99, 77.60],
            fare,
            exp,
        }
    }

    #[test]
    fn quotes_verify_until_they_expire() {
        let signer = QuoteSigner::new(b"server secret server secret server secret");
        let now = Utc::now();
        let quote = claims(now.timestamp() + 300);
        let token = signer.sign(&quote);
        assert_eq!(signer.verify(&token, now).unwrap(), quote);
        let late = now + chrono::Duration::seconds(301);
        assert_eq!(signer.verify(&token, late).unwrap_err().code(), "QUOTE_EXPIRED");
    }

    #[test]
    fn forged_or_foreign_quotes_are_refused() {
        let signer = QuoteSigner::new(b"server secret server secret server secret");
        let now = Utc::now();
        let token = signer.sign(&claims(now.timestamp() + 300));
        let other = QuoteSigner::new(b"another secret another secret another");
        assert_eq!(other.verify(&token, now).unwrap_err().code(), "QUOTE_INVALID");
        // A cheaper fare pasted into a genuine token breaks its signature.
        let mut cheaper = claims(now.timestamp() + 300);
        cheaper.fare.fare_paise = 1;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cheaper).unwrap());
        let signature = token.rsplit_once('.').unwrap().1;
        let forged = format!("{PREFIX}{forged_payload}.{signature}");
        assert_eq!(signer.verify(&forged, now).unwrap_err().code(), "QUOTE_INVALID");
        assert_eq!(signer.verify("nonsense", now).unwrap_err().code(), "QUOTE_INVALID");
    }

    #[test]
    fn a_quote_covers_only_its_own_trip() {
        let quote = claims(0);
        let pickup = LatLng::new(12.97, 77.59).unwrap();
        let drop = LatLng::new(12.99, 77.60).unwrap();
        assert!(quote.covers(quote.user, VehicleType::Bike, pickup, drop));
        assert!(!quote.covers(UserId::new(), VehicleType::Bike, pickup, drop));
        assert!(!quote.covers(quote.user, VehicleType::Auto, pickup, drop));
        assert!(!quote.covers(quote.user, VehicleType::Bike, pickup, LatLng::new(12.991, 77.60).unwrap()));
    }
}
