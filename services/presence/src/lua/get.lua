-- GetPresence. ARGV: prefix, then user ids.
-- Returns, per user, {live connections, version or nil, seen_ms or nil}; one atomic read.
local out = {}
for i = 2, #ARGV do
  local user = ARGV[i]
  local r = redis.call('HMGET', user_key(user), 'v', 'seen')
  out[#out + 1] = {redis.call('HLEN', conns_key(user)), r[1], r[2]}
end
return out
