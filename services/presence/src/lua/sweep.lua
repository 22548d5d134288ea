-- Sweeper. ARGV: prefix, batch, retention_ms.
-- Removes up to `batch` connections whose expiry has passed. Because the whole script is
-- atomic, a connection is claimed (ZREM) by exactly one caller even when every replica
-- sweeps at the same moment, and so is the OFFLINE transition it may cause.
-- Returns {expired, next_in_ms (-1: none), online_users, went_offline, now} where
-- went_offline holds {user, version, last_seen_ms}; last_seen is the moment the last
-- connection ended, i.e. its expiry.
local batch, retention = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', EXPIRIES, '-inf', now, 'WITHSCORES', 'LIMIT', 0, batch)
local went = {}
local expired = 0
for i = 1, #due - 1, 2 do
  local m, expires_at = due[i], tonumber(due[i + 1])
  redis.call('ZREM', EXPIRIES, m)
  expired = expired + 1
  local sp = string.find(m, ' ', 1, true)
  if sp then
    local user, conn = string.sub(m, 1, sp - 1), string.sub(m, sp + 1)
    local ck = conns_key(user)
    if redis.call('HDEL', ck, conn) == 1 and redis.call('HLEN', ck) == 0 then
      went[#went + 1] = {user, transition(user, false, expires_at, now, retention), expires_at}
    end
  end
end
local next_in = -1
local head = redis.call('ZRANGE', EXPIRIES, 0, 0, 'WITHSCORES')
if #head == 2 then
  next_in = math.max(0, tonumber(head[2]) - now)
end
return {expired, next_in, tonumber(redis.call('GET', ONLINE)) or 0, went, now}
