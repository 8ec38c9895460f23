// Reading orders, shared by both backends (see base.rs).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use uuid::Uuid;

use crate::domain::orders::{Order, OrderEvent};
use crate::error::Result;
use crate::ids::{OrderId, UserId};
use crate::store::orders::{EventRow, IdempotentRow, OrderRow, SELECT_IDEMPOTENT_RESPONSE, parse_stored, select_order};
use crate::store::{DemandRow, IdempotentReplay, OrderFilter, OrderStore, PageRequest};

/// Most ids one `IN (…)` list binds (SQLite allows 32,766 parameters; Postgres 65,535).
const ID_CHUNK: usize = 500;

#[async_trait]
impl OrderStore for StoreImpl {
    async fn order(&self, id: OrderId) -> Result<Option<Order>> {
        let row: Option<OrderRow> =
            sqlx::query_as(select_order!("WHERE id = $1")).bind(id.0).fetch_optional(&self.pool).await?;
        row.map(Order::try_from).transpose()
    }

    async fn list_orders(&self, filter: &OrderFilter, page: PageRequest<OrderId>) -> Result<Vec<Order>> {
        // One statement per shape of filter, each planned for its index ((customer_id, id),
        // (pilot_id, id), (status, id)): one statement with "$1 IS NULL OR …" for every shape
        // is planned, once generic, for none of them, and reads every order to find a
        // customer's twenty.
        let present = [
            ("customer_id =", filter.customer.is_some()),
            ("pilot_id =", filter.pilot.is_some()),
            ("status =", filter.status.is_some()),
            ("id <", page.before.is_some()),
        ];
        let conditions: Vec<String> = present
            .iter()
            .filter(|(_, present)| *present)
            .enumerate()
            .map(|(n, (test, _))| format!("{test} ${}", n + 1))
            .collect();
        let sql = format!(
            "{}{}{} ORDER BY id DESC LIMIT ${}",
            select_order!(""),
            if conditions.is_empty() { "" } else { "WHERE " },
            conditions.join(" AND "),
            conditions.len() + 1
        );
        // Built from the constant fragments above only: every value is a bind parameter.
        let mut query = sqlx::query_as::<_, OrderRow>(sqlx::AssertSqlSafe(sql));
        if let Some(customer) = filter.customer {
            query = query.bind(customer.0);
        }
        if let Some(pilot) = filter.pilot {
            query = query.bind(pilot.0);
        }
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(before) = page.before {
            query = query.bind(before.0);
        }
        let rows = query.bind(i64::from(page.limit)).fetch_all(&self.pool).await?;
        rows.into_iter().map(Order::try_from).collect()
    }

    async fn order_events(&self, id: OrderId, after_seq: i32, limit: u32) -> Result<Vec<OrderEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT order_id, seq, type, actor_id, actor_role, data, created_at FROM order_events \
             WHERE order_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id.0)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(OrderEvent::try_from).collect()
    }

    async fn open_orders_within(&self, bbox: &crate::grid::geometry::BBox, limit: u32) -> Result<Vec<Order>> {
        let rows: Vec<OrderRow> = sqlx::query_as(select_order!(
            "WHERE status NOT IN ('delivered', 'cancelled', 'returned') AND pickup_lat BETWEEN $1 AND $2 \
             AND pickup_lng BETWEEN $3 AND $4 \
             ORDER BY CASE WHEN status = 'searching_driver' THEN 0 ELSE 1 END, id LIMIT $5"
        ))
        .bind(bbox.min_lat)
        .bind(bbox.max_lat)
        .bind(bbox.min_lng)
        .bind(bbox.max_lng)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Order::try_from).collect()
    }

    async fn assignment_waits(&self, since: DateTime<Utc>, limit: u32) -> Result<Vec<f64>> {
        let rows: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT a.created_at, (SELECT MAX(s.created_at) FROM order_events s \
             WHERE s.order_id = a.order_id AND s.seq < a.seq AND s.type = 'searching_driver') \
             FROM order_events a WHERE a.type = 'assigned' AND a.created_at >= $1 \
             ORDER BY a.created_at DESC LIMIT $2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let waits = rows.into_iter().filter_map(|(assigned, searched)| Some((assigned - searched?).as_seconds_f64()));
        Ok(waits.collect())
    }

    async fn open_orders(&self, limit: u32) -> Result<Vec<Order>> {
        // Ids grow with time (UUIDv7): the smallest is the oldest.
        let rows: Vec<OrderRow> = sqlx::query_as(select_order!(
            "WHERE status NOT IN ('delivered', 'cancelled', 'returned') \
             ORDER BY CASE WHEN status = 'searching_driver' THEN 0 ELSE 1 END, id LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Order::try_from).collect()
    }

    async fn open_order_count(&self) -> Result<i64> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status NOT IN ('delivered', 'cancelled', 'returned')")
                .fetch_one(&self.pool)
                .await?;
        Ok(count)
    }

    async fn orders_by_id(&self, ids: &[OrderId]) -> Result<Vec<Order>> {
        let mut orders = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ID_CHUNK) {
            let mut query = sqlx::QueryBuilder::<Db>::new(select_order!("WHERE id IN ("));
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id.0);
            }
            query.push(")");
            let rows: Vec<OrderRow> = query.build_query_as().fetch_all(&self.pool).await?;
            for row in rows {
                orders.push(Order::try_from(row)?);
            }
        }
        Ok(orders)
    }

    async fn refused_offers(&self, ids: &[OrderId]) -> Result<Vec<(OrderId, i64)>> {
        let mut counts = Vec::new();
        for chunk in ids.chunks(ID_CHUNK) {
            let mut query = sqlx::QueryBuilder::<Db>::new("SELECT order_id, COUNT(*) FROM offers WHERE order_id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id.0);
            }
            query.push(") AND status IN ('rejected', 'expired') GROUP BY order_id");
            let rows: Vec<(uuid::Uuid, i64)> = query.build_query_as().fetch_all(&self.pool).await?;
            counts.extend(rows.into_iter().map(|(id, count)| (OrderId(id), count)));
        }
        Ok(counts)
    }

    async fn active_orders(&self) -> Result<Vec<Order>> {
        let rows: Vec<OrderRow> =
            sqlx::query_as(select_order!("WHERE status IN ('assigned', 'picked_up', 'in_transit', 'returning') ORDER BY id"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(Order::try_from).collect()
    }

    async fn active_order_of(&self, pilot: UserId) -> Result<Option<OrderId>> {
        // The partial unique index orders_one_active_per_pilot answers it.
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE pilot_id = $1 AND status IN ('assigned', 'picked_up', 'in_transit', 'returning')",
        )
        .bind(pilot.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(OrderId))
    }

    async fn searching_orders(&self) -> Result<Vec<Order>> {
        let rows: Vec<OrderRow> = sqlx::query_as(select_order!("WHERE status = 'searching_driver' ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Order::try_from).collect()
    }

    async fn lease_search(&self, id: OrderId, node: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> Result<bool> {
        let leased = sqlx::query(
            "UPDATE orders SET search_node = $2, search_lease_until = $3              WHERE id = $1 AND status = 'searching_driver'              AND (search_node IS NULL OR search_node = $2 OR search_lease_until < $4)",
        )
        .bind(id.0)
        .bind(node)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(leased.rows_affected() == 1)
    }

    async fn renew_search_leases(
        &self,
        node: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
        unleased_before: DateTime<Utc>,
    ) -> Result<Vec<OrderId>> {
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "UPDATE orders SET search_node = $1, search_lease_until = $2              WHERE status = 'searching_driver' AND (search_node = $1 OR search_lease_until < $3              OR (search_node IS NULL AND updated_at < $4)) RETURNING id",
        )
        .bind(node)
        .bind(until)
        .bind(now)
        .bind(unleased_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn release_search_leases(&self, node: &str, now: DateTime<Utc>) -> Result<u64> {
        let released = sqlx::query(
            "UPDATE orders SET search_lease_until = $2 WHERE search_node = $1 AND status = 'searching_driver'",
        )
        .bind(node)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(released.rows_affected())
    }

    async fn idempotent_response(&self, user: UserId, key: &str) -> Result<Option<IdempotentReplay>> {
        let row: Option<IdempotentRow> =
            sqlx::query_as(SELECT_IDEMPOTENT_RESPONSE).bind(user.0).bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(IdempotentReplay::from))
    }

    async fn purge_idempotency_keys(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64> {
        let purged = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before).execute(&self.pool).await?;
        Ok(purged.rows_affected())
    }

    async fn fees_owed(&self, customer: UserId) -> Result<i64> {
        let owed: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(amount_paise), 0) AS BIGINT) FROM customer_dues \
             WHERE customer_id = $1 AND charged_order_id IS NULL",
        )
        .bind(customer.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(owed)
    }

    async fn all_fees_owed(&self) -> Result<Vec<(UserId, i64)>> {
        // Uncharged dues are unsettled too: the partial index of open dues finds them.
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT customer_id, CAST(SUM(amount_paise) AS BIGINT) FROM customer_dues \
             WHERE settled_at IS NULL AND charged_order_id IS NULL GROUP BY customer_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(customer, owed)| (UserId(customer), owed)).collect())
    }

    async fn searching_demand(&self) -> Result<Vec<DemandRow>> {
        let rows: Vec<(i64, String, Uuid)> = sqlx::query_as(
            "SELECT DISTINCT pickup_cell, vehicle_type, customer_id FROM orders WHERE status = 'searching_driver'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(cell, vehicle, customer)| {
                Ok(DemandRow { cell, vehicle: parse_stored(&vehicle, "vehicle type")?, customer: UserId(customer) })
            })
            .collect()
    }
}
