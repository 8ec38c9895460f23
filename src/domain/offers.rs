//! Offers: an order proposed to one pilot for a short while. Live until the pilot accepts or
//! rejects it, it expires, or it is withdrawn (the order was cancelled or taken).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::string_enum;
use crate::ids::{OfferId, OrderId, UserId};

string_enum! {
    /// Where an offer is. Only `live` ever changes, and only once.
    pub enum OfferStatus {
        Live => "live",
        Accepted => "accepted",
        Rejected => "rejected",
        Expired => "expired",
        Withdrawn => "withdrawn",
    }
}

impl OfferStatus {
    /// A pilot who rejected an order, or let its offer run out, is not offered it again.
    pub fn declined(self) -> bool {
        matches!(self, OfferStatus::Rejected | OfferStatus::Expired)
    }
}

/// The `reason` of an offer expired before its deadline because its pilot's app was gone.
pub const UNREACHABLE: &str = "unreachable";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub id: OfferId,
    pub order_id: OrderId,
    pub pilot_id: UserId,
    pub status: OfferStatus,
    /// Great-circle distance from the pilot to the pickup when offered.
    pub pickup_distance_m: i32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}
