//! Receipts of delivered orders: the fare line by line, discount, tax, total, how it was
//! paid, who drove it, how far (from the trace) and when. As JSON, or as a printable HTML
//! page that loads nothing from elsewhere.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::orders::{Order, OrderStatus, PaymentMethod, PaymentStatus};
use crate::error::{Error, Result};
use crate::ids::OrderId;
use crate::orders::Orders;

/// One line of the fare.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptLine {
    pub label: String,
    pub paise: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub order_id: OrderId,
    pub vehicle_type: crate::domain::VehicleType,
    pub pickup_address: String,
    pub drop_address: String,
    pub placed_at: DateTime<Utc>,
    pub picked_up_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The pilot's name and plate.
    pub pilot_name: Option<String>,
    pub vehicle_plate: Option<String>,
    /// The fare's parts, adding up to `fare_paise`.
    pub lines: Vec<ReceiptLine>,
    pub fare_paise: i64,
    pub coupon_code: Option<String>,
    pub discount_paise: i64,
    pub tax_paise: i64,
    /// Cancellation fees owed from earlier cash orders, paid with this one.
    pub fees_owed_paise: i64,
    pub total_paise: i64,
    pub refunded_paise: i64,
    pub payment_method: PaymentMethod,
    pub payment_status: PaymentStatus,
    /// Along the pilot's trace while it carried the order.
    pub distance_driven_m: f64,
    /// The estimate the fare was priced on.
    pub estimated_distance_m: i64,
}

impl Orders {
    /// The receipt of `order`, which its reader (its customer, its pilot, staff) was allowed
    /// to see ([`Orders::get`]), once it is delivered.
    pub async fn receipt_of(&self, order: Order) -> Result<Receipt> {
        if order.status != OrderStatus::Delivered {
            return Err(Error::conflict("ORDER_NOT_DELIVERED", "a receipt is issued once the order is delivered"));
        }
        let id = order.id;
        let trace = self.trace_of(&order).await?;
        let events = self.store.order_events(id, 0, 1_000).await?;
        let at = |kind: &str| events.iter().find(|event| event.kind == kind).map(|event| event.created_at);
        let pilot = match order.pilot_id {
            Some(pilot) => self.contact(pilot).await?,
            None => None,
        };
        let profile = pilot.as_ref().and_then(|pilot| pilot.pilot.as_ref());
        Ok(Receipt {
            order_id: order.id,
            vehicle_type: order.vehicle_type,
            pickup_address: order.pickup.address.clone(),
            drop_address: order.drop.address.clone(),
            placed_at: order.created_at,
            picked_up_at: at("picked_up"),
            delivered_at: at("delivered"),
            pilot_name: pilot.as_ref().map(|pilot| pilot.name.as_str().to_owned()),
            vehicle_plate: profile
                .and_then(|profile| profile.vehicle_plate.as_ref())
                .map(|plate| plate.as_str().to_owned()),
            lines: fare_lines(&order),
            fare_paise: order.fare.fare_paise,
            coupon_code: order.coupon_code.clone(),
            discount_paise: order.fare.discount_paise,
            tax_paise: order.fare.tax_paise,
            fees_owed_paise: order.fare.fees_owed_paise,
            total_paise: order.fare.total_paise,
            refunded_paise: order.refunded_paise,
            payment_method: order.payment_method,
            payment_status: order.payment_status,
            distance_driven_m: trace.distance_m,
            estimated_distance_m: order.fare.distance_m,
        })
    }
}

/// The fare's parts that are not zero (the base always), in the order they add up.
fn fare_lines(order: &Order) -> Vec<ReceiptLine> {
    let fare = &order.fare;
    let km = fare.distance_m as f64 / 1000.0;
    let minutes = (fare.duration_s as f64 / 60.0).round();
    let surge = fare.surge_milli as f64 / 1000.0;
    let lines = [
        ("Base fare".to_owned(), fare.base_paise),
        (format!("Distance ({km:.1} km)"), fare.distance_paise),
        (format!("Time ({minutes:.0} min)"), fare.time_paise),
        (format!("Surge ({surge:.2}×)"), fare.surge_paise),
        ("Minimum fare adjustment".to_owned(), fare.minimum_fare_adjustment_paise),
    ];
    lines
        .into_iter()
        .enumerate()
        .filter(|(index, (_, paise))| *index == 0 || *paise != 0)
        .map(|(_, (label, paise))| ReceiptLine { label, paise })
        .collect()
}

/// Rupees from paise, grouped the Indian way: ₹1,14,093.50.
pub fn rupees(paise: i64) -> String {
    let sign = if paise < 0 { "−" } else { "" };
    let (whole, fraction) = (paise.unsigned_abs() / 100, paise.unsigned_abs() % 100);
    let digits = whole.to_string();
    let grouped = if digits.len() <= 3 {
        digits
    } else {
        let (head, last_three) = digits.split_at(digits.len() - 3);
        let mut pairs: Vec<&str> = Vec::new();
        let mut rest = head;
        while rest.len() > 2 {
            let (left, right) = rest.split_at(rest.len() - 2);
            pairs.push(right);
            rest = left;
        }
        pairs.push(rest);
        pairs.reverse();
        format!("{},{last_three}", pairs.join(","))
    };
    format!("{sign}₹{grouped}.{fraction:02}")
}

/// Text made safe to place in HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The receipt as a printable page: one self-contained document, its style inline.
pub fn receipt_html(receipt: &Receipt) -> String {
    let time =
        |at: Option<DateTime<Utc>>| at.map_or("—".to_owned(), |at| at.format("%d %b %Y, %H:%M UTC").to_string());
    let mut rows = String::new();
    for line in &receipt.lines {
        let _ = write!(rows, "<tr><td>{}</td><td>{}</td></tr>", escape(&line.label), rupees(line.paise));
    }
    let _ = write!(rows, "<tr class=\"sum\"><td>Fare</td><td>{}</td></tr>", rupees(receipt.fare_paise));
    if receipt.discount_paise > 0 {
        let coupon = receipt.coupon_code.as_deref().map(|code| format!(" ({})", escape(code))).unwrap_or_default();
        let _ = write!(rows, "<tr><td>Discount{coupon}</td><td>{}</td></tr>", rupees(-receipt.discount_paise));
    }
    let _ = write!(rows, "<tr><td>Tax</td><td>{}</td></tr>", rupees(receipt.tax_paise));
    if receipt.fees_owed_paise > 0 {
        let owed = rupees(receipt.fees_owed_paise);
        let _ = write!(rows, "<tr><td>Cancellation fee owed from an earlier order</td><td>{owed}</td></tr>");
    }
    let _ = write!(rows, "<tr class=\"total\"><td>Total</td><td>{}</td></tr>", rupees(receipt.total_paise));
    if receipt.refunded_paise > 0 {
        let _ = write!(rows, "<tr><td>Refunded</td><td>{}</td></tr>", rupees(receipt.refunded_paise));
    }
    let pilot = match (&receipt.pilot_name, &receipt.vehicle_plate) {
        (Some(name), Some(plate)) => format!("{} · {}", escape(name), escape(plate)),
        (Some(name), None) => escape(name),
        _ => "—".to_owned(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Receipt {id}</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#111}}\
h1{{font-size:1.3rem}}table{{width:100%;border-collapse:collapse}}td{{padding:.35rem 0;border-bottom:1px solid #ddd}}\
td:last-child{{text-align:right;font-variant-numeric:tabular-nums}}tr.sum td,tr.total td{{font-weight:600}}\
tr.total td{{border-top:2px solid #111}}dl{{display:grid;grid-template-columns:9rem 1fr;gap:.3rem}}dt{{color:#555}}\
@media print{{body{{margin:0}}}}</style></head><body>\
<h1>Receipt</h1><dl><dt>Order</dt><dd>{id}</dd><dt>From</dt><dd>{pickup}</dd><dt>To</dt><dd>{drop}</dd>\
<dt>Placed</dt><dd>{placed}</dd><dt>Picked up</dt><dd>{picked}</dd><dt>Delivered</dt><dd>{delivered}</dd>\
<dt>Vehicle</dt><dd>{vehicle}</dd><dt>Pilot</dt><dd>{pilot}</dd><dt>Distance driven</dt><dd>{driven:.1} km</dd>\
<dt>Paid by</dt><dd>{method} ({status})</dd></dl><table>{rows}</table></body></html>\n",
        id = receipt.order_id,
        pickup = escape(&receipt.pickup_address),
        drop = escape(&receipt.drop_address),
        placed = time(Some(receipt.placed_at)),
        picked = time(receipt.picked_up_at),
        delivered = time(receipt.delivered_at),
        vehicle = receipt.vehicle_type,
        driven = receipt.distance_driven_m / 1000.0,
        method = receipt.payment_method,
        status = receipt.payment_status,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rupees_are_grouped_the_indian_way() {
        assert_eq!(rupees(11_409_350), "₹1,14,093.50");
        assert_eq!(rupees(99_999), "₹999.99");
        assert_eq!(rupees(100_000), "₹1,000.00");
        assert_eq!(rupees(1_234_567_890), "₹1,23,45,678.90");
        assert_eq!(rupees(-2_000), "−₹20.00");
        assert_eq!(rupees(5), "₹0.05");
    }

    #[test]
    fn text_cannot_break_out_of_the_page() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
