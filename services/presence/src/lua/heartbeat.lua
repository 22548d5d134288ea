-- Heartbeat. ARGV: prefix, node, ttl_ms, then user, connection pairs.
-- Returns {codes, came_online, now}: one code per pair (0 renewed, 1 restored, 2 live on
-- another node), and {user, version, seen_ms} for every user a restored connection made
-- ONLINE.
--
-- This is the hot path (every connection, every heartbeat interval), so renewals are
-- gathered into one variadic ZADD per 1,000 connections and `seen` is written once per user.
local node, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local expires_at = now + ttl
local codes, came = {}, {}
local zadd, renewed = {}, {}
for i = 4, #ARGV - 1, 2 do
  local user, conn = ARGV[i], ARGV[i + 1]
  local owner = redis.call('HGET', conns_key(user), conn)
  if owner == node then
    zadd[#zadd + 1] = expires_at
    zadd[#zadd + 1] = member(user, conn)
    renewed[user] = true
    codes[#codes + 1] = 0
  elseif owner then
    codes[#codes + 1] = 2
  else
    -- Expired and swept (or never registered, or Redis lost it): register it again.
    local v = add(user, conn, node, expires_at, now)
    if v then
      came[#came + 1] = {user, v, now}
    end
    codes[#codes + 1] = 1
  end
  if #zadd >= 2000 then
    redis.call('ZADD', EXPIRIES, unpack(zadd))
    zadd = {}
  end
end
if #zadd > 0 then
  redis.call('ZADD', EXPIRIES, unpack(zadd))
end
local seen = int(now)
for user in pairs(renewed) do
  redis.call('HSET', user_key(user), 'seen', seen)
end
return {codes, came, now}
