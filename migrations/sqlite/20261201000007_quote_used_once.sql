-- A quote is a signed price for one order: two orders under one quote would each get its
-- fare (a quote taken before a surge, reused after it). The second insert now fails.
CREATE UNIQUE INDEX orders_quote_once_idx ON orders (quote_id) WHERE quote_id IS NOT NULL;
