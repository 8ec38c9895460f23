//! The order state machine through the real APIs: from every state an order can rest in, every
//! operation that changes an order's status, each on a fresh order, answered as the state
//! machine says (the table is in `expected`). `picked_up` is not a resting state: the pilot's
//! pickup moves an order through it to `in_transit` in one transaction. A dispatcher stopping
//! an order in transit sends it back (`returning`) until its pilot returns it (`returned`).

mod common;

use common::field::{assign, fix, pilot_on_duty};
use common::sio::SioClient;
use common::{DROP, Options, PICKUP, Session, TestApp, order_body};
use dispatchd::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Searching,
    Assigned,
    InTransit,
    Delivered,
    Cancelled,
    Returning,
    Returned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// A dispatcher assigns another pilot.
    Assign,
    /// A dispatcher sends the order back to searching.
    Unassign,
    /// The pilot on the order (any pilot, when none is) picks it up.
    PickUp,
    /// The pilot on the order delivers it.
    Deliver,
    /// The customer cancels it.
    Cancel,
    /// A dispatcher cancels it (sends it back, with the parcel on board).
    Stop,
    /// The pilot on the order reports its parcel back at the pickup.
    Return,
}

/// What `operation` on an order in `state` must answer: the new status, or an error code.
fn expected(state: State, operation: Operation) -> Result<&'static str, &'static str> {
    use Operation::*;
    use State::*;
    const ILLEGAL: Result<&str, &str> = Err("INVALID_TRANSITION");
    match (state, operation) {
        (Searching, Assign) => Ok("assigned"),
        (Assigned | InTransit | Returning, Assign) => Err("ORDER_TAKEN"),
        (Assigned, Unassign) => Ok("searching_driver"),
        (Assigned, PickUp) => Ok("in_transit"),
        (InTransit, Deliver) => Ok("delivered"),
        // Nobody carries it: no pilot may see it.
        (Pending | Searching, PickUp | Deliver | Return) => Err("ORDER_NOT_FOUND"),
        // With the parcel on board only a dispatcher may stop it, and it comes back first.
        (InTransit | Returning | Delivered | Cancelled | Returned, Cancel) => ILLEGAL,
        (Delivered | Cancelled | Returned, Stop) => ILLEGAL,
        (InTransit, Stop) => Ok("returning"),
        (_, Cancel | Stop) => Ok("cancelled"),
        (Returning, Return) => Ok("returned"),
        _ => ILLEGAL,
    }
}

struct World {
    app: TestApp,
    dispatcher: Session,
    customer: Session,
}

/// An order brought to `state` over the APIs, and the socket of the pilot that carries it
/// (for states without one: a pilot on duty at the pickup).
struct Case {
    order: String,
    socket: SioClient,
}

impl World {
    async fn order(&self, body: Value) -> String {
        let reply = self.app.post("/api/v1/orders", body, Some(&self.customer.access)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.data()["id"].as_str().unwrap().to_owned()
    }

    async fn case(&self, state: State) -> Case {
        let (pilot, mut socket) = pilot_on_duty(&self.app, PICKUP).await;
        let order = if state == State::Pending {
            let mut body = order_body("cash");
            let at = self.app.clock.now() + chrono::Duration::hours(2);
            body["scheduled_at"] = json!(at.to_rfc3339());
            self.order(body).await
        } else {
            self.order(order_body("cash")).await
        };
        if !matches!(state, State::Pending | State::Searching) {
            let assigned = assign(&self.app, &self.dispatcher, &order, &pilot).await;
            assert_eq!(assigned.status, StatusCode::OK, "{:?}", assigned.body);
        }
        if matches!(state, State::InTransit | State::Delivered | State::Returning | State::Returned) {
            let ack = socket.call("order:picked_up", json!({ "order_id": order })).await;
            assert_eq!(ack["data"]["status"], "in_transit", "{ack}");
        }
        if state == State::Delivered {
            drive_to_drop(&self.app, &mut socket).await;
            let ack = socket.call("order:delivered", common::field::delivery(&self.app, &order).await).await;
            assert_eq!(ack["data"]["status"], "delivered", "{ack}");
        }
        if state == State::Cancelled {
            let cancelled = self.cancel(&order).await;
            assert_eq!(cancelled.data()["status"], "cancelled", "{:?}", cancelled.body);
        }
        if matches!(state, State::Returning | State::Returned) {
            let stopped = self.stop(&order).await;
            assert_eq!(stopped.data()["status"], "returning", "{:?}", stopped.body);
        }
        if state == State::Returned {
            let ack = socket.call("order:returned", json!({ "order_id": order })).await;
            assert_eq!(ack["data"]["status"], "returned", "{ack}");
        }
        let status = self.status(&order).await;
        let resting = match state {
            State::Pending => "pending",
            State::Searching => "searching_driver",
            State::Assigned => "assigned",
            State::InTransit => "in_transit",
            State::Delivered => "delivered",
            State::Cancelled => "cancelled",
            State::Returning => "returning",
            State::Returned => "returned",
        };
        assert_eq!(status, resting, "set-up of {state:?}");
        Case { order, socket }
    }

    async fn cancel(&self, order: &str) -> common::Reply {
        self.app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&self.customer.access)).await
    }

    async fn stop(&self, order: &str) -> common::Reply {
        self.app.post(&format!("/api/v1/orders/{order}/cancel"), json!({}), Some(&self.dispatcher.access)).await
    }

    async fn status(&self, order: &str) -> String {
        let reply = self.app.get(&format!("/api/v1/orders/{order}"), Some(&self.customer.access)).await;
        reply.data()["status"].as_str().unwrap().to_owned()
    }

    /// Applies `operation`; the order's status after it, or the error code.
    async fn apply(&self, case: &mut Case, operation: Operation) -> Result<String, String> {
        let order = case.order.clone();
        match operation {
            Operation::Assign => {
                let (other, _socket) = pilot_on_duty(&self.app, PICKUP).await;
                rest(assign(&self.app, &self.dispatcher, &order, &other).await)
            }
            Operation::Unassign => {
                let path = format!("/api/v1/dispatch/orders/{order}/reassign");
                rest(self.app.post(&path, json!({}), Some(&self.dispatcher.access)).await)
            }
            Operation::PickUp => ack(case.socket.call("order:picked_up", json!({ "order_id": order })).await),
            Operation::Deliver => {
                if self.status(&order).await == "in_transit" {
                    drive_to_drop(&self.app, &mut case.socket).await;
                }
                ack(case.socket.call("order:delivered", common::field::delivery(&self.app, &order).await).await)
            }
            Operation::Cancel => rest(self.cancel(&order).await),
            Operation::Stop => rest(self.stop(&order).await),
            Operation::Return => ack(case.socket.call("order:returned", json!({ "order_id": order })).await),
        }
    }
}

/// The pilot drives from the pickup to the drop (5 km in 390 s) and reports it there.
async fn drive_to_drop(app: &TestApp, socket: &mut SioClient) {
    let ack = socket.call("location", json!({ "points": [fix(app, DROP, 390)] })).await;
    assert_eq!(ack["data"]["accepted"], 1, "{ack}");
}

fn rest(reply: common::Reply) -> Result<String, String> {
    if reply.status.is_success() {
        Ok(reply.data()["status"].as_str().unwrap().to_owned())
    } else {
        Err(reply.error_code().to_owned())
    }
}

fn ack(ack: Value) -> Result<String, String> {
    if ack["ok"] == true {
        Ok(ack["data"]["status"].as_str().unwrap().to_owned())
    } else {
        Err(ack["error"]["code"].as_str().unwrap_or("no code").to_owned())
    }
}

#[tokio::test]
async fn every_operation_from_every_state_follows_the_state_machine() {
    let options = Options::default().set("realtime.budgets.location.per_sec", 100).set("rate_limit.enabled", false);
    let app = TestApp::spawn_with(options).await;
    let world = World { dispatcher: app.staff(Role::Dispatcher).await, customer: app.register("customer").await, app };
    let states = [
        State::Pending,
        State::Searching,
        State::Assigned,
        State::InTransit,
        State::Delivered,
        State::Cancelled,
        State::Returning,
        State::Returned,
    ];
    let operations = [
        Operation::Assign,
        Operation::Unassign,
        Operation::PickUp,
        Operation::Deliver,
        Operation::Cancel,
        Operation::Stop,
        Operation::Return,
    ];
    let mut wrong = Vec::new();
    for state in states {
        for operation in operations {
            let mut case = world.case(state).await;
            let before = world.status(&case.order).await;
            let got = world.apply(&mut case, operation).await;
            let want = expected(state, operation).map(str::to_owned).map_err(str::to_owned);
            if got != want {
                wrong.push(format!("{state:?} + {operation:?}: got {got:?}, want {want:?}"));
            }
            let after = world.status(&case.order).await;
            match &want {
                Ok(status) => assert_eq!(&after, status, "{state:?} + {operation:?} is stored"),
                Err(_) => assert_eq!(after, before, "{state:?} + {operation:?} refused changes nothing"),
            }
            // Leave no pilot carrying an order into the next case.
            // (One in transit is sent back first, and then cancelled.)
            while !matches!(world.status(&case.order).await.as_str(), "delivered" | "cancelled" | "returned") {
                let cancelled = world.stop(&case.order).await;
                assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
