-- The code the customer gives the pilot at the door (orders.delivery_otp): four digits, shown
-- only in the customer's view of the order. Wrong codes are counted; at five, delivery is
-- locked until a dispatcher unlocks it (which sets the count back to zero). Orders placed
-- before this, or with the code turned off, have none.
ALTER TABLE orders ADD COLUMN delivery_otp text CHECK (delivery_otp IS NULL OR length(delivery_otp) = 4);
ALTER TABLE orders ADD COLUMN delivery_otp_failures integer NOT NULL DEFAULT 0 CHECK (delivery_otp_failures >= 0);
