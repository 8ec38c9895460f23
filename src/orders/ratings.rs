//! After delivery, the customer rates the pilot and the pilot rates the customer: once each,
//! 1 to 5 stars and an optional comment. Each user's average and count are on the user
//! (`/me`, and the pilot block a customer sees while its pilot is coming).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::domain::Role;
use crate::domain::orders::OrderStatus;
use crate::error::{Error, Result};
use crate::ids::OrderId;
use crate::orders::{Orders, not_found, visible};
use crate::store::NewRating;

/// Longest comment kept, in characters.
const MAX_COMMENT_CHARS: usize = 500;

/// `POST /orders/{id}/rating`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    pub stars: i64,
    #[serde(default)]
    pub comment: Option<String>,
}

impl Orders {
    /// The caller (the order's customer or its pilot) rates the other side of a delivered
    /// order.
    pub async fn rate(&self, caller: &Caller, id: OrderId, request: RatingRequest) -> Result<Value> {
        caller.require(&[Role::Customer, Role::Pilot])?;
        let stars = i16::try_from(request.stars)
            .ok()
            .filter(|stars| (1..=5).contains(stars))
            .ok_or_else(|| Error::validation("stars", "must be a whole number from 1 to 5"))?;
        let comment = request.comment.map(|comment| comment.trim().to_owned()).filter(|comment| !comment.is_empty());
        if comment.as_ref().is_some_and(|comment| comment.chars().count() > MAX_COMMENT_CHARS) {
            return Err(Error::validation("comment", format!("must be at most {MAX_COMMENT_CHARS} characters")));
        }
        let order = self.store.order(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        if order.status != OrderStatus::Delivered {
            return Err(Error::conflict("ORDER_NOT_DELIVERED", "an order is rated once it is delivered"));
        }
        let ratee = match caller.role {
            Role::Customer => order.pilot_id.ok_or_else(not_found)?,
            _ => order.customer_id,
        };
        let rating = NewRating { order: id, rater: caller.user_id, ratee, stars, comment };
        if !self.store.rate(&rating, self.now()).await? {
            return Err(Error::conflict("ALREADY_RATED", "this order was rated by you already"));
        }
        metrics::counter!("ratings_total", "by" => caller.role.as_str(), "stars" => stars.to_string()).increment(1);
        let rated = self.store.user_by_id(ratee).await?.ok_or_else(not_found)?;
        Ok(json!({
            "order_id": id,
            "stars": rating.stars,
            "comment": rating.comment,
            "ratee": { "id": rated.id, "rating": rated.rating },
        }))
    }
}
