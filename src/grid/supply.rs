//! Supply counts per coarse cell and vehicle type, kept up to date on every change (cheap
//! enough per update, and a read is then a lookup, not a scan).

use ahash::AHashMap;
use h3o::CellIndex;

use crate::domain::VehicleType;
use crate::grid::Supply;

/// Where one pilot counts: its coarse cell, vehicle, and whether it could take work now.
/// `None` for pilots out of service.
pub(crate) type Contribution = Option<(CellIndex, VehicleType, bool)>;

#[derive(Debug, Default, PartialEq)]
pub(crate) struct SupplyTable {
    cells: AHashMap<CellIndex, [Supply; 4]>,
}

impl SupplyTable {
    /// Moves one pilot's count from `before` to `after`.
    pub fn update(&mut self, before: Contribution, after: Contribution) {
        if before == after {
            return;
        }
        if let Some((cell, vehicle, available)) = before
            && let Some(counts) = self.cells.get_mut(&cell)
        {
            let count = &mut counts[vehicle_index(vehicle)];
            count.online -= 1;
            count.available -= u32::from(available);
            if counts.iter().all(|count| count.online == 0) {
                self.cells.remove(&cell);
            }
        }
        if let Some((cell, vehicle, available)) = after {
            let count = &mut self.cells.entry(cell).or_default()[vehicle_index(vehicle)];
            count.online += 1;
            count.available += u32::from(available);
        }
    }

    /// Counts of one coarse cell, per vehicle type in [`VehicleType::ALL`] order.
    pub fn get(&self, cell: CellIndex) -> [Supply; 4] {
        self.cells.get(&cell).copied().unwrap_or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (CellIndex, &[Supply; 4])> {
        self.cells.iter().map(|(cell, counts)| (*cell, counts))
    }
}

pub(crate) fn vehicle_index(vehicle: VehicleType) -> usize {
    VehicleType::ALL.iter().position(|known| *known == vehicle).unwrap_or(0)
}
