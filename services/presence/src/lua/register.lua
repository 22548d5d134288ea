-- RegisterConnection. ARGV: prefix, user, connection, node, ttl_ms.
-- Returns {came_online (0/1), version, seen_ms}.
local user, conn, node, ttl = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local v = add(user, conn, node, now + ttl, now)
if v then
  return {1, v, now}
end
return {0, tonumber(redis.call('HGET', user_key(user), 'v')) or 0, now}
