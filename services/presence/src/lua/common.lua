-- Shared head of every presence script (the Rust side prepends it).
--
-- ARGV[1] is the key prefix `<redis.prefix>presence:`. Keys are built here rather than
-- passed in KEYS because the sweeper only learns which users it touches inside the script;
-- the keyspace therefore lives on one Redis primary (see docs/presence.md).
--
--   <P>conns:<user>   hash  connection id -> node id of the user's live connections
--   <P>user:<user>    hash  v = version, seen = last seen (ms since the epoch, Redis clock)
--   <P>expiries       zset  "<user> <connection id>" scored by its expiry (ms)
--   <P>online         int   number of users with at least one live connection
--
-- A user is ONLINE exactly when `conns:<user>` is non-empty; every change to it happens in
-- these scripts, together with the matching `expiries` entry, so the two never disagree.
local P = ARGV[1]
local EXPIRIES = P .. 'expiries'
local ONLINE = P .. 'online'

local function now_ms()
  -- One clock for every replica: Redis's. Scripts may read TIME since Redis 5 (effects
  -- replication).
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

local function conns_key(user)
  return P .. 'conns:' .. user
end

local function user_key(user)
  return P .. 'user:' .. user
end

local function member(user, conn)
  return user .. ' ' .. conn
end

-- Records an ONLINE (online = true) or OFFLINE transition and returns the new version.
-- The version is max(previous + 1, now): strictly increasing per user, and still above
-- anything a reader holds if the record was lost (retention, Redis data loss).
local function transition(user, online, seen, now, retention_ms)
  local uk = user_key(user)
  local v = math.max((tonumber(redis.call('HGET', uk, 'v')) or 0) + 1, now)
  redis.call('HSET', uk, 'v', int(v), 'seen', int(seen))
  if online then
    redis.call('PERSIST', uk)
    redis.call('INCR', ONLINE)
  else
    redis.call('PEXPIRE', uk, retention_ms)
    redis.call('DECR', ONLINE)
  end
  return v
end

-- Renews (or creates) a connection's expiry and the user's last-seen time.
local function renew(user, conn, expires_at, now)
  redis.call('ZADD', EXPIRIES, expires_at, member(user, conn))
  redis.call('HSET', user_key(user), 'seen', int(now))
end

-- Adds a connection; returns the new version when it made the user ONLINE, else nil.
local function add(user, conn, node, expires_at, now)
  local ck = conns_key(user)
  local first = redis.call('HLEN', ck) == 0
  redis.call('HSET', ck, conn, node)
  renew(user, conn, expires_at, now)
  if first then
    return transition(user, true, now, now, 0)
  end
  return nil
end

