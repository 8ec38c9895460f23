//! Identifier newtypes. Every id is a UUIDv7: unique without coordination between nodes and
//! ordered by creation time, so "newest first" pagination is an index scan on the id alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }
    };
}

id_type!(
    /// A user of any role.
    UserId
);
id_type!(
    /// One login: the family of refresh tokens issued from it and the access tokens they
    /// minted. Revoking it ends them all.
    SessionId
);
id_type!(
    /// An order.
    OrderId
);
id_type!(
    /// A pilot's payout.
    PayoutId
);
id_type!(
    /// A discount coupon.
    CouponId
);
id_type!(
    /// One payment through a gateway (an order's or a wallet top-up's).
    PaymentId
);
id_type!(
    /// A durable job.
    JobId
);
id_type!(
    /// A wallet ledger entry.
    LedgerId
);
id_type!(
    /// An offer of an order to one pilot.
    OfferId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered() {
        let first = UserId::new();
        let second = UserId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<UserId>().unwrap(), first);
    }
}
