-- An order a dispatcher stops with the parcel on board goes back to its pickup: 'returning'
-- (its pilot still carries it) and then 'returned' (ended, like delivered and cancelled).
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending', 'searching_driver', 'assigned', 'picked_up', 'in_transit',
                      'delivered', 'cancelled', 'returning', 'returned'));

-- A pilot bringing a parcel back carries that order: no other until it is back.
DROP INDEX orders_one_active_per_pilot;
CREATE UNIQUE INDEX orders_one_active_per_pilot ON orders (pilot_id)
    WHERE status IN ('assigned', 'picked_up', 'in_transit', 'returning');

-- A returned order is no longer open.
DROP INDEX orders_open_idx;
CREATE INDEX orders_open_idx ON orders (status, id) WHERE status NOT IN ('delivered', 'cancelled', 'returned');
DROP INDEX orders_customer_open_idx;
CREATE INDEX orders_customer_open_idx ON orders (customer_id)
    WHERE status NOT IN ('delivered', 'cancelled', 'returned');
