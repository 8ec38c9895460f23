//! What the Redis mirror has not written yet: one mark per changed pilot (so a pilot that
//! moved ten times is written once, at its latest state) and the pilots that left.

use crate::domain::VehicleType;
use crate::grid::{PilotId, PilotSnapshot};

/// A change the Redis mirror must write.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorRecord {
    Upsert(PilotSnapshot),
    /// The pilot left the index altogether (or is listed again under another vehicle type).
    Forget {
        id: PilotId,
        vehicle: VehicleType,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Slots with a pending upsert; each slot's entry carries a `dirty` flag so it is listed once.
    pub dirty: Vec<u32>,
    pub forgotten: Vec<MirrorRecord>,
    /// Server time of the oldest pending change, ms.
    pub since_ms: Option<i64>,
}

impl Outbox {
    pub fn mark(&mut self, slot: u32, now_ms: i64) {
        self.dirty.push(slot);
        self.since_ms.get_or_insert(now_ms);
    }

    pub fn forget(&mut self, id: PilotId, vehicle: VehicleType, now_ms: i64) {
        self.forgotten.push(MirrorRecord::Forget { id, vehicle });
        self.since_ms.get_or_insert(now_ms);
    }

    pub fn pending(&self) -> (usize, Option<i64>) {
        (self.dirty.len() + self.forgotten.len(), self.since_ms)
    }

    /// Clears `since_ms` once nothing is pending.
    pub fn settle(&mut self) {
        if self.dirty.is_empty() && self.forgotten.is_empty() {
            self.since_ms = None;
        }
    }
}
