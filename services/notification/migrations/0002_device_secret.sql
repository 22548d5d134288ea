-- A signing secret per webhook device, returned to its owner at registration: a webhook
-- payload carries a timestamp and an HMAC-SHA256 of "<timestamp>.<body>" under this secret,
-- so a receiver can check it came from us, for this device, recently (no replays).
ALTER TABLE devices ADD COLUMN secret text;
UPDATE devices
   SET secret = replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
 WHERE platform = 4 AND secret IS NULL;
