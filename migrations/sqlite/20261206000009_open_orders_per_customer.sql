-- An order create counts its customer's open orders (at most orders.max_open_per_customer),
-- and surge counts the distinct customers searching in a cell: both read only their index.
CREATE INDEX orders_customer_open_idx ON orders (customer_id) WHERE status NOT IN ('delivered', 'cancelled');
DROP INDEX orders_searching_demand_idx;
CREATE INDEX orders_searching_demand_idx ON orders (pickup_cell, vehicle_type, customer_id) WHERE status = 'searching_driver';
