-- What the app needs to complete a gateway payment with the gateway's SDK (a Razorpay order
-- id and key id, a Stripe client secret), kept so a repeated checkout request answers the same.
ALTER TABLE payments ADD COLUMN checkout TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(checkout));
