//! What one user may ask of the gateway, whatever number of sockets it opens.
//!
//! * **Event budgets.** Every event a client sends belongs to a class ([`Class`]) with a
//!   budget per user, counted across all the user's sockets on this node: a sustained rate
//!   and a burst (GCRA, from `governor`). An event over its budget is answered `RATE_LIMITED`
//!   and does nothing else, so that a burst costs a refusal each, not a database read each.
//! * **Floods.** Refusals have a budget of their own, per user (`realtime.budgets.refusals`),
//!   and so do events no handler knows (they are refused `UNKNOWN_EVENT`). A user past it is
//!   flooding: the socket that sent the event is told why (`closing {code: "FLOODING"}`) and
//!   disconnected. The budget of refusals is larger than any burst a normal app sends after a
//!   network drop (socket.io clients flush what they buffered at once), so an app flushing
//!   its buffer gets `RATE_LIMITED` acks at worst, never a disconnect.
//! * **Sockets per user.** At most `realtime.max_sockets_per_user` sockets per user and
//!   namespace on this node. The newest one wins: a phone that reconnects after a network
//!   drop may do so before its old socket has timed out, and it must not be locked out. The
//!   oldest socket is told `closing {code: "TOO_MANY_SOCKETS"}` and disconnected (a server
//!   disconnect: the client does not reconnect by itself, so two tabs never take turns).
//!
//! * **Sockets per address, behind a proxy.** With `rate_limit.client_ip_header` set, every TCP
//!   connection comes from the proxy, so `server.max_connections_per_ip` bounds sockets per
//!   client address the proxy forwards instead (refused at connect, `TOO_MANY_CONNECTIONS`).
//!
//! Budgets hold a few dozen bytes per active user; [`Budgets::forget_idle`] drops users whose
//! budgets are full again.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use serde::Deserialize;
use socketioxide::socket::Sid;

use crate::ids::UserId;

/// What kind of work an event asks for; each kind has its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/pilot` `location`: GPS batches into the grid.
    Location,
    /// `/pilot` `status:set`, `offer:accept`, `offer:reject`, `order:arrived`,
    /// `order:picked_up`, `order:delivered`: a pilot's commands.
    Command,
    /// `/customer` `order:watch`, `order:unwatch`: a snapshot read from the database.
    Watch,
    /// `/dispatch` `viewport:set`: a snapshot of a map area.
    Viewport,
    /// `auth:refresh` on every namespace: a token check.
    Session,
}

impl Class {
    const ALL: [Class; 5] = [Class::Location, Class::Command, Class::Watch, Class::Viewport, Class::Session];

    fn index(self) -> usize {
        self as usize
    }
}

/// A sustained rate and a burst.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Quota {
        let rate = NonZeroU32::new(self.per_sec).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(rate).allow_burst(NonZeroU32::new(self.burst).unwrap_or(rate))
    }
}

/// `[realtime.budgets]`: one [`Rate`] per class, and one for refusals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    pub location: Rate,
    pub command: Rate,
    pub watch: Rate,
    pub viewport: Rate,
    pub session: Rate,
    pub refusals: Rate,
}

impl BudgetsConfig {
    fn rate(&self, class: Class) -> Rate {
        match class {
            Class::Location => self.location,
            Class::Command => self.command,
            Class::Watch => self.watch,
            Class::Viewport => self.viewport,
            Class::Session => self.session,
        }
    }

    /// Every rate must allow something; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let named = [
            ("realtime.budgets.location", self.location),
            ("realtime.budgets.command", self.command),
            ("realtime.budgets.watch", self.watch),
            ("realtime.budgets.viewport", self.viewport),
            ("realtime.budgets.session", self.session),
            ("realtime.budgets.refusals", self.refusals),
        ];
        match named.iter().find(|(_, rate)| rate.per_sec == 0 || rate.burst == 0) {
            Some((key, _)) => Err((key, "per_sec and burst must be at least 1".into())),
            None => Ok(()),
        }
    }
}

/// What the budget says of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the class's budget: answer `RATE_LIMITED`.
    Refuse,
    /// Over the budget of refusals too: disconnect the socket.
    Flood,
}

/// A user's sockets on one namespace, oldest first. Nearly every user has one: it is kept
/// inline, with no allocation of its own (every idle socket pays for this).
enum Open {
    One(Sid),
    Many(VecDeque<Sid>),
}

/// The budgets of every user on this node.
pub struct Budgets {
    classes: Vec<DefaultKeyedRateLimiter<UserId>>,
    refusals: DefaultKeyedRateLimiter<UserId>,
    /// Each user's sockets per namespace, oldest first.
    sockets: Mutex<HashMap<(UserId, &'static str), Open>>,
    max_sockets: usize,
    /// Behind a proxy: sockets per client address the proxy forwards, and the most allowed.
    by_address: Mutex<HashMap<IpAddr, usize>>,
    per_address: Option<usize>,
}

/// The client address a socket was counted under (behind a proxy), kept in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded(pub IpAddr);

impl Budgets {
    /// `per_address`: behind a proxy, the most sockets per forwarded client address.
    pub fn new(config: &BudgetsConfig, max_sockets: usize, per_address: Option<usize>) -> Self {
        Self {
            classes: Class::ALL.iter().map(|class| RateLimiter::dashmap(config.rate(*class).quota())).collect(),
            refusals: RateLimiter::dashmap(config.refusals.quota()),
            sockets: Mutex::default(),
            max_sockets: max_sockets.max(1),
            by_address: Mutex::default(),
            per_address,
        }
    }

    /// Behind a proxy: counts a socket from `address`, unless it has the most allowed. True
    /// when counted (or when no bound applies: not behind a proxy).
    pub fn address_opened(&self, address: IpAddr) -> bool {
        let Some(most) = self.per_address else { return true };
        let mut by_address = self.by_address.lock();
        let open = by_address.entry(address).or_default();
        if *open >= most {
            return false;
        }
        *open += 1;
        true
    }

    /// A socket counted under `address` closed.
    pub fn address_closed(&self, address: IpAddr) {
        let mut by_address = self.by_address.lock();
        if let Entry::Occupied(mut open) = by_address.entry(address) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }

    /// Whether sockets are counted per forwarded address (behind a proxy).
    pub fn per_address(&self) -> bool {
        self.per_address.is_some()
    }

    /// Spends one event of `class` from `user`'s budget.
    pub fn spend(&self, user: UserId, class: Class) -> Verdict {
        if self.classes[class.index()].check_key(&user).is_ok() { Verdict::Admit } else { self.refuse(user) }
    }

    /// Counts a refusal (an event over its budget, or one no handler knows).
    pub fn refuse(&self, user: UserId) -> Verdict {
        if self.refusals.check_key(&user).is_ok() { Verdict::Refuse } else { Verdict::Flood }
    }

    /// A socket of `user` opened on `namespace`; returns the oldest one, to be closed, when
    /// the user now has more than allowed there.
    pub fn opened(&self, user: UserId, namespace: &'static str, sid: Sid) -> Option<Sid> {
        let mut sockets = self.sockets.lock();
        match sockets.entry((user, namespace)) {
            Entry::Vacant(vacant) => {
                vacant.insert(Open::One(sid));
                None
            }
            Entry::Occupied(mut occupied) => {
                let open = occupied.get_mut();
                let mut all = match std::mem::replace(open, Open::Many(VecDeque::new())) {
                    Open::One(first) => VecDeque::from([first]),
                    Open::Many(all) => all,
                };
                all.push_back(sid);
                let oldest = if all.len() > self.max_sockets { all.pop_front() } else { None };
                *open = Open::Many(all);
                oldest
            }
        }
    }

    /// A socket of `user` closed (or was evicted).
    pub fn closed(&self, user: UserId, namespace: &'static str, sid: Sid) {
        let mut sockets = self.sockets.lock();
        let Entry::Occupied(mut occupied) = sockets.entry((user, namespace)) else { return };
        let gone = match occupied.get_mut() {
            Open::One(only) => *only == sid,
            Open::Many(all) => {
                all.retain(|open| *open != sid);
                all.is_empty()
            }
        };
        if gone {
            occupied.remove();
        }
    }

    /// Forgets users whose budgets are full again, so memory follows active users.
    pub fn forget_idle(&self) {
        for limiter in self.classes.iter().chain([&self.refusals]) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.sockets.lock().shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BudgetsConfig {
        let rate = |per_sec, burst| Rate { per_sec, burst };
        BudgetsConfig {
            location: rate(1, 3),
            command: rate(1, 2),
            watch: rate(1, 2),
            viewport: rate(1, 2),
            session: rate(1, 1),
            refusals: rate(1, 2),
        }
    }

    #[test]
    fn a_burst_then_refusals_then_a_flood() {
        let budgets = Budgets::new(&config(), 5, None);
        let user = UserId(uuid::Uuid::now_v7());
        let verdicts: Vec<Verdict> = (0..6).map(|_| budgets.spend(user, Class::Location)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Admit, Admit, Admit, Refuse, Refuse, Flood]);
        // Another class has its own budget, but refusals are shared.
        assert_eq!(budgets.spend(user, Class::Watch), Admit);
        let other = UserId(uuid::Uuid::now_v7());
        assert_eq!(budgets.spend(other, Class::Location), Admit, "budgets are per user");
    }

    #[test]
    fn the_newest_socket_wins() {
        let budgets = Budgets::new(&config(), 2, None);
        let user = UserId(uuid::Uuid::now_v7());
        let sids: Vec<Sid> = (0..3).map(|_| Sid::new()).collect();
        assert_eq!(budgets.opened(user, "/pilot", sids[0]), None);
        assert_eq!(budgets.opened(user, "/customer", Sid::new()), None, "per namespace");
        assert_eq!(budgets.opened(user, "/pilot", sids[1]), None);
        assert_eq!(budgets.opened(user, "/pilot", sids[2]), Some(sids[0]));
        budgets.closed(user, "/pilot", sids[0]);
        budgets.closed(user, "/pilot", sids[1]);
        assert_eq!(budgets.opened(user, "/pilot", Sid::new()), None);
    }

    #[test]
    fn rates_must_allow_something() {
        let mut config = config();
        assert!(config.check().is_ok());
        config.watch.burst = 0;
        assert_eq!(config.check().unwrap_err().0, "realtime.budgets.watch");
    }
}
