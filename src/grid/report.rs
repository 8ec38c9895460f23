//! Location reports: a batch of GPS points judged by the rules and applied to the index.

use h3o::Resolution;

use crate::domain::VehicleType;
use crate::grid::gps::{GpsPoint, LastFix, Verdict};
use crate::grid::state;
use crate::grid::{PilotId, PilotIndex, ReportOutcome};

/// A batch judged against a last fix: what to tell the pilot and what to apply.
struct Plan {
    outcome: ReportOutcome,
    /// The fix after the batch, if anything was accepted.
    last: Option<LastFix>,
    /// The last point that moved the pilot (for accuracy, speed, heading).
    latest_move: Option<GpsPoint>,
}

impl Plan {
    /// What to apply, with the new cell looked up (no lock needed).
    fn fix(&self, hint: Option<state::CellHint>, resolution: Resolution, now_ms: i64) -> Option<state::Fix> {
        let last = self.last?;
        let moved_to = self.latest_move.map(|_| (last.position, state::cell_for(last.position, hint, resolution)));
        let point = self.latest_move;
        Some(state::Fix {
            moved_to,
            accuracy_m: point.and_then(|p| p.accuracy_m).unwrap_or(0.0),
            speed_mps: point.and_then(|p| p.speed_mps),
            heading_deg: point.and_then(|p| p.heading_deg),
            fix_ms: last.ts_ms,
            seen_ms: now_ms,
        })
    }
}

impl PilotIndex {
    /// Applies a batch of points from `pilot`, in timestamp order.
    ///
    /// The rules and the cell lookup run outside the write lock, against the pilot's last
    /// fix read under a read lock; the write lock then only applies the result, unless the
    /// pilot changed in between (another report raced this one), in which case the batch is
    /// judged again under the write lock.
    pub fn report(&self, pilot: PilotId, vehicle: VehicleType, points: &[GpsPoint], now_ms: i64) -> ReportOutcome {
        let resolution = self.resolution;
        let (seen_slot, seen_last, hint) = {
            let grid = self.grid.read();
            let slot = grid.slot(pilot);
            (slot, slot.map(|slot| grid.entry(slot).last_fix()), slot.and_then(|slot| grid.hint(slot)))
        };
        let mut plan = self.plan(vehicle, seen_last, points, now_ms);
        let mut fix = plan.fix(hint, resolution, now_ms);
        let mut grid = self.write();
        let slot = grid.slot(pilot);
        let last = slot.map(|slot| grid.entry(slot).last_fix());
        if slot != seen_slot || last != seen_last {
            plan = self.plan(vehicle, last, points, now_ms);
            fix = plan.fix(slot.and_then(|slot| grid.hint(slot)), resolution, now_ms);
        }
        let mut outcome = plan.outcome;
        let Some(fix) = fix else {
            outcome.pilot = slot.map(|slot| grid.entry(slot).snapshot());
            return outcome;
        };
        let slot = slot.unwrap_or_else(|| {
            let (position, _) = fix.moved_to.expect("a first accepted point is a move");
            grid.insert(pilot, vehicle, position, fix.fix_ms, now_ms)
        });
        if grid.entry(slot).vehicle != vehicle {
            grid.set_vehicle(slot, vehicle, now_ms);
        }
        grid.apply_fix(slot, &fix);
        grid.set_remote(slot, false);
        grid.mark_dirty(slot, now_ms);
        outcome.pilot = Some(grid.entry(slot).snapshot());
        outcome
    }

    /// Judges a batch against `last`, in timestamp order.
    fn plan(&self, vehicle: VehicleType, mut last: Option<LastFix>, points: &[GpsPoint], now_ms: i64) -> Plan {
        let sorted = points.windows(2).all(|pair| pair[0].ts_ms <= pair[1].ts_ms);
        let reordered: Option<Vec<usize>> = (!sorted).then(|| {
            let mut order: Vec<usize> = (0..points.len()).collect();
            order.sort_by_key(|&index| points[index].ts_ms);
            order
        });
        let mut plan = Plan { outcome: ReportOutcome::default(), last: None, latest_move: None };
        for step in 0..points.len() {
            let index = reordered.as_ref().map_or(step, |order| order[step]);
            let point = &points[index];
            match self.rules.judge(vehicle, last.as_ref(), point, now_ms) {
                Verdict::Move(position) => {
                    last = Some(LastFix { position, ts_ms: point.ts_ms, accuracy_m: point.accuracy_m.unwrap_or(0.0) });
                    plan.latest_move = Some(*point);
                    plan.outcome.moved += 1;
                    plan.outcome.path.push((position, point.ts_ms));
                }
                Verdict::Stationary => {
                    if let Some(last) = last.as_mut() {
                        last.ts_ms = point.ts_ms;
                    }
                    plan.outcome.stationary += 1;
                }
                Verdict::Reject(reason) => plan.outcome.rejected.push((index, reason)),
            }
        }
        plan.last = last.filter(|_| plan.outcome.accepted() > 0);
        plan
    }
}
