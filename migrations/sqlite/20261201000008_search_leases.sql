-- In a cluster, the node that follows an order's search holds a lease on it, renewed while
-- it runs; a search whose lease lapsed (its node crashed or stopped) is adopted by another.
ALTER TABLE orders ADD COLUMN search_node TEXT;
ALTER TABLE orders ADD COLUMN search_lease_until TEXT;
