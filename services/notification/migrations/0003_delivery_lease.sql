-- A delivery worker claims rows by leasing them until `lease_until` and sends them outside
-- any transaction; another claim skips leased rows (also when it re-checks a row it waited
-- for), and a crashed worker's rows become claimable again when the lease ends.
ALTER TABLE deliveries ADD COLUMN lease_until timestamptz;
