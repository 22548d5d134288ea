-- Every message moves its channel's last_seq and the sender's read watermark: leave room
-- in each page so those updates stay HOT (no index change, pruned in place).
ALTER TABLE channels SET (fillfactor = 70);
ALTER TABLE members SET (fillfactor = 70);
