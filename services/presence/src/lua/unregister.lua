-- UnregisterConnections. ARGV: prefix, node, retention_ms, then user, connection pairs.
-- Returns {went_offline, now} with {user, version, seen_ms} for every user whose last
-- connection this removed. Connections not live on `node` are ignored.
local node, retention = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local went = {}
for i = 4, #ARGV - 1, 2 do
  local user, conn = ARGV[i], ARGV[i + 1]
  local ck = conns_key(user)
  if redis.call('HGET', ck, conn) == node then
    redis.call('HDEL', ck, conn)
    redis.call('ZREM', EXPIRIES, member(user, conn))
    if redis.call('HLEN', ck) == 0 then
      went[#went + 1] = {user, transition(user, false, now, now, retention), now}
    end
  end
end
return {went, now}
