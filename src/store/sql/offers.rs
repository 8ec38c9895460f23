// Reading offers and trip traces, shared by both backends (see base.rs).

use async_trait::async_trait;

use crate::domain::offers::Offer;
use crate::error::{Error, Result};
use crate::ids::{OfferId, OrderId, UserId};
use crate::store::offers::{OfferRow, OfferStore, TracePoint, offer_columns};

/// Points per insert statement: four parameters each, well inside both backends' limits
/// (SQLite's 32,766, Postgres's 65,535).
const TRACE_CHUNK: usize = 1_000;

#[async_trait]
impl OfferStore for StoreImpl {
    async fn offer(&self, id: OfferId) -> Result<Option<Offer>> {
        let row: Option<OfferRow> = sqlx::query_as(concat!("SELECT ", offer_columns!(), " FROM offers WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Offer::try_from).transpose()
    }

    async fn live_offers(&self) -> Result<Vec<Offer>> {
        let rows: Vec<OfferRow> =
            sqlx::query_as(concat!("SELECT ", offer_columns!(), " FROM offers WHERE status = 'live' ORDER BY id"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(Offer::try_from).collect()
    }

    async fn live_offers_due(&self, before: chrono::DateTime<chrono::Utc>) -> Result<Vec<Offer>> {
        let rows: Vec<OfferRow> = sqlx::query_as(concat!(
            "SELECT ",
            offer_columns!(),
            " FROM offers WHERE status = 'live' AND expires_at < $1 ORDER BY id"
        ))
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Offer::try_from).collect()
    }

    async fn live_offer_for_pilot(&self, pilot: UserId) -> Result<Option<Offer>> {
        let row: Option<OfferRow> = sqlx::query_as(concat!(
            "SELECT ",
            offer_columns!(),
            " FROM offers WHERE pilot_id = $1 AND status = 'live'"
        ))
        .bind(pilot.0)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Offer::try_from).transpose()
    }

    async fn offers_for_order(&self, order: OrderId) -> Result<Vec<Offer>> {
        let rows: Vec<OfferRow> =
            sqlx::query_as(concat!("SELECT ", offer_columns!(), " FROM offers WHERE order_id = $1 ORDER BY id"))
                .bind(order.0)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(Offer::try_from).collect()
    }

    async fn insert_offer(&self, offer: &Offer) -> Result<bool> {
        // The database, not this node's memory, says whether the order still searches and
        // whether the pilot is free to be asked: no order on board, and it has not turned
        // this order down.
        let inserted = sqlx::query(INSERT_OFFER)
            .bind(offer.id.0)
            .bind(offer.order_id.0)
            .bind(offer.pilot_id.0)
            .bind(offer.status.as_str())
            .bind(offer.pickup_distance_m)
            .bind(offer.created_at)
            .bind(offer.expires_at)
            .bind(offer.decided_at)
            .bind(offer.reason.as_deref())
            // A write: on SQLite it queues with the write transactions.
            .execute(&self.writer)
            .await;
        let conflict = |why: &str| Err(Error::conflict("OFFER_CONFLICT", why.to_owned()));
        match inserted {
            Ok(done) if done.rows_affected() == 1 => Ok(true),
            // Which guard held: only on this (rare) path is it worth a second look.
            Ok(_) => {
                let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                    .bind(offer.order_id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                match status.as_deref() {
                    Some("searching_driver") => conflict("the pilot carries an order, declined this one, or is not approved"),
                    _ => Ok(false),
                }
            }
            // offers_one_live_per_pilot or offers_one_live_per_order.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                conflict("the pilot already holds a live offer, or the order already has one")
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn append_trace(&self, points: &[TracePoint]) -> Result<()> {
        // One transaction for the batch, on the writer: one commit (one sync of the log)
        // however many statements, and on SQLite no race with the writer for the write lock.
        // A statement per chunk: a chunk is one round trip, not one per point.
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await?;
        for chunk in points.chunks(TRACE_CHUNK) {
            let mut query =
                sqlx::QueryBuilder::<Db>::new("INSERT INTO trip_points (order_id, ts_ms, lat, lng) ");
            query.push_values(chunk, |mut row, point| {
                row.push_bind(point.order_id.0).push_bind(point.ts_ms).push_bind(point.lat).push_bind(point.lng);
            });
            query.push(" ON CONFLICT (order_id, ts_ms) DO NOTHING");
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn trace(&self, order: OrderId) -> Result<Vec<TracePoint>> {
        let rows: Vec<(i64, f64, f64)> =
            sqlx::query_as("SELECT ts_ms, lat, lng FROM trip_points WHERE order_id = $1 ORDER BY ts_ms")
                .bind(order.0)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(ts_ms, lat, lng)| TracePoint { order_id: order, ts_ms, lat, lng }).collect())
    }
}
