//! The Lua scripts that keep positions and history consistent: each runs atomically in
//! Redis, so an event's offset, its history entries and its pub/sub message are one step.
//!
//! Keys (`P` is the configured prefix):
//! - `P meta` (hash): `e` the epoch, `o` the last offset given. Gone with an emptied Redis,
//!   so the next publish starts a new epoch and old positions are recognised as foreign.
//! - `P h:{topic}` (stream): the topic's recent events, entry id `{offset}-0`, fields `d`
//!   (the event body) and `t` (Redis time, ms). Trimmed to the history size; expires after
//!   the history TTL without a publish.
//! - `P t:{topic}` (hash): `top`, the offset of the topic's last event; `lost`, the highest
//!   offset known to be gone (its stream expired before). Kept longer than the stream
//!   (the meta TTL) so a client behind an expired stream learns it missed something.
//! - `P c:{topic}`: the pub/sub channel nodes subscribe to for the topic.

/// KEYS: meta, stream × n, top × n. ARGV: body, candidate epoch, history size, history
/// TTL ms, meta TTL ms, n, channel × n. Returns `{epoch, offset}`.
pub const PUBLISH: &str = r#"
local n = tonumber(ARGV[6])
local size = tonumber(ARGV[3])
redis.call('HSETNX', KEYS[1], 'e', ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'e')
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local message = '{"epoch":"' .. epoch .. '","offset":' .. offset .. ',' .. string.sub(ARGV[1], 2)
for i = 1, n do
  local stream = KEYS[1 + i]
  local top = KEYS[1 + n + i]
  if size > 0 then
    if redis.call('EXISTS', stream) == 0 then
      local previous = redis.call('HGET', top, 'top')
      if previous then
        redis.call('HSET', top, 'lost', previous)
      end
    end
    redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'd', ARGV[1], 't', now_ms)
    redis.call('PEXPIRE', stream, ARGV[4])
  end
  redis.call('HSET', top, 'top', offset)
  redis.call('PEXPIRE', top, ARGV[5])
  redis.call('PUBLISH', ARGV[6 + i], message)
end
return {epoch, offset}
"#;

/// KEYS: meta, stream × n, top × n. ARGV: epoch, since offset, limit, n, max age ms.
/// Returns `{epoch, offset, recovered (1|0), id, body, id, body, ...}`; the entries are
/// only meaningful when recovered is 1 (duplicates across topics are removed by the caller).
pub const RECOVER: &str = r#"
local n = tonumber(ARGV[4])
local since = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local epoch = redis.call('HGET', KEYS[1], 'e') or ''
local offset = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
if epoch ~= ARGV[1] or since > offset then
  return {epoch, offset, 0}
end
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[5])
local out = {epoch, offset, 1}
for i = 1, n do
  local stream = KEYS[1 + i]
  local meta = redis.call('HMGET', KEYS[1 + n + i], 'top', 'lost')
  local top = tonumber(meta[1] or '0')
  local lost = tonumber(meta[2] or '0')
  if top > since then
    if lost > since or redis.call('EXISTS', stream) == 0 then
      return {epoch, offset, 0}
    end
    local info = redis.call('XINFO', 'STREAM', stream)
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then
        local deleted = tonumber(string.match(info[j + 1], '^(%d+)'))
        if deleted > since then
          return {epoch, offset, 0}
        end
      end
    end
    local entries = redis.call('XRANGE', stream, '(' .. since .. '-0', '+', 'COUNT', limit + 1)
    if #entries > limit then
      return {epoch, offset, 0}
    end
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      local body, at = nil, 0
      for k = 1, #fields, 2 do
        if fields[k] == 'd' then body = fields[k + 1] end
        if fields[k] == 't' then at = tonumber(fields[k + 1]) end
      end
      if at < oldest then
        return {epoch, offset, 0}
      end
      table.insert(out, entry[1])
      table.insert(out, body)
    end
  end
end
return out
"#;

/// KEYS: lease. ARGV: node id, TTL ms. Takes or renews the lease; returns 1 if this
/// node holds it afterwards.
pub const LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;
