-- Surge counts the orders searching in one coarse cell for one vehicle at every quote and
-- order. The index it had also held pending orders, so every counted row was read from the
-- table to check its status; this one holds exactly the rows counted.
DROP INDEX orders_open_demand_idx;
CREATE INDEX orders_searching_demand_idx ON orders (pickup_cell, vehicle_type) WHERE status = 'searching_driver';
