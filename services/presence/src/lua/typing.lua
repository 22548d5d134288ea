-- Typing. ARGV: prefix, channel, user, throttle_ms, payload.
-- Publishes the payload on `<P>channel:<channel>` unless the (user, channel) pair already
-- did within the throttle window. Returns 1 when published, 0 when throttled.
local channel, user = ARGV[2], ARGV[3]
if redis.call('SET', P .. 'typing:' .. channel .. ':' .. user, '1', 'NX', 'PX', ARGV[4]) then
  redis.call('PUBLISH', P .. 'channel:' .. channel, ARGV[5])
  return 1
end
return 0
