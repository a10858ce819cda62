#!lua name=cache_reconciler_2
--[[
cache-reconciler cache protocol, version 2 (SPEC section 2).

An entry is a hash: `v` = the row's version (decimal), `d` = the payload. A fence is a
hash with `v` and no `d`; it is a cache miss that stops older data from being written
back, and always carries a TTL.

Versions are compared exactly as decimal strings (leading zeros stripped, then length,
then lexicographic order), never as Lua numbers: doubles lose precision above 2^53 and
the delete fence is 2^63-1.

Anything else found under a key (a non-hash value, a hash without a valid `v`) is
treated as stale data of unknown version: replaced or removed, never trusted.

Fence lifetime. Once a change at version V of a key has been applied, a write below V
is refused for at least fence_ttl from that moment, whatever the change found:
- a new fence (absent, repaired, delete) gets fence_ttl;
- a fence the change meets (its duplicate, an older change replayed, the row
  re-inserted under a delete fence; one raised to V, or by a delete to 2^63-1, in
  place) keeps the longer of its remaining TTL and fence_ttl. Version 1 reset the TTL
  only of a fence it raised, so a delete fence met by the re-inserted row's next
  update just before it expired let a slow reader of the previous version write it
  back a moment later, for good;
- data at or above V ("fresh") is what refuses older writes now: a TTL shorter than
  fence_ttl is raised to it; data without a TTL keeps none.
The reconciler never shortens the TTL of what it keeps, and never sets one beyond
fence_ttl from the key's last change: once fence_ttl has passed since a key's last
change, its current version is cacheable again. `PEXPIRE key ttl GT` is "at least ttl"
for a key with a TTL and does nothing to one without (GT counts no TTL as infinite):
right for data, wrong for a key just created (a plain PEXPIRE) or a fence found without
a TTL (written behind the protocol's back: `PEXPIRE ... NX` gives it fence_ttl). With
PEXPIRE alone, apply calls no command version 1 did not (the reconciler's ACL is
unchanged).

set_if_newer replacing an entry, asked for a TTL, keeps at least the TTL left on what it
replaces, and none if that had none: otherwise data written at V over a fence at V with
a short TTL of its own would end the fence's protection early (fence at V for 60 s, data
V for 1 s, then a slow reader's V-1 accepted at 2 s), and so would data written over
data without a TTL that a change met as fresh (which refuses older writes for as long
as it lives). With ttl_ms = 0 it writes no TTL. This reads the TTL
with PTTL: the writer's ACL user needs +pttl.

The names carry the protocol version (library cache_reconciler_2, cr2_*): a rolling
upgrade loads the new library beside the old one, so a worker of either version always
runs the code of its own version; version 1 differed in the fence lifetime above.

Uses only redis.call / redis.pcall so that the library also loads on Redis 7.
]]

local MAX_VERSION = '9223372036854775807'  -- 2^63-1, the delete fence

-- a < b for canonical version strings. Byte by byte rather than with `<` on strings,
-- which goes through strcoll() and so depends on the server's locale.
local function less(a, b)
  local la, lb = #a, #b
  if la ~= lb then
    return la < lb
  end
  if a == b then
    return false
  end
  for i = 1, la do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return false
end

-- The canonical form of a version string, or nil if it is not a decimal integer in
-- [0, 2^63-1].
local function canonical(s)
  if type(s) ~= 'string' or not string.find(s, '^[0-9]+$') then
    return nil
  end
  s = string.gsub(s, '^0+', '')
  if s == '' then
    return '0'
  end
  local n = #s
  if n > 19 or (n == 19 and less(MAX_VERSION, s)) then
    return nil
  end
  return s
end

-- What the key holds: 'absent', 'fence' (with its version), 'data' (with its version),
-- or 'stale' (something that is not a valid entry: treated as data older than anything).
local function classify(key)
  local v = redis.pcall('HGET', key, 'v')
  if type(v) == 'table' then
    if string.find(v.err, 'WRONGTYPE', 1, true) then
      return 'stale'  -- a non-hash value
    end
    error(v)  -- anything else (an ACL refusal...) fails the call, as redis.call would
  end
  if v == false then
    if redis.call('EXISTS', key) == 0 then
      return 'absent'
    end
    return 'stale'
  end
  local version = canonical(v)
  if version == nil then
    return 'stale'
  end
  if redis.call('HEXISTS', key, 'd') == 1 then
    return 'data', version
  end
  return 'fence', version
end

-- A new fence at `version` with a TTL of ttl_ms (`clear`: remove what the key held).
local function new_fence(key, version, ttl_ms, clear)
  if clear then
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 'v', version)
  redis.call('PEXPIRE', key, ttl_ms)
end

-- An existing fence lives at least ttl_ms more: GT extends a shorter TTL and leaves a
-- longer one; a fence found without a TTL (GT leaves it so) gets ttl_ms with NX.
local function hold_fence(key, ttl_ms)
  if redis.call('PEXPIRE', key, ttl_ms, 'GT') == 0 then
    redis.call('PEXPIRE', key, ttl_ms, 'NX')
  end
end

local function bad(fn, what)
  return redis.error_reply('ERR ' .. fn .. ': ' .. what)
end

-- A versioned change (op 'v') or snapshot read (op 's', fence_absent=false) at V.
local function versioned(key, version, ttl_ms, fence_absent)
  local kind, current = classify(key)
  if kind == 'absent' then
    if fence_absent then
      new_fence(key, version, ttl_ms, false)
    end
    return 'absent'
  end
  if kind == 'data' then
    if not less(current, version) then
      redis.call('PEXPIRE', key, ttl_ms, 'GT')  -- a shorter TTL raised; none left none
      return 'fresh'
    end
    new_fence(key, version, ttl_ms, true)
    return 'repaired'
  end
  if kind == 'fence' then
    if less(current, version) then
      redis.call('HSET', key, 'v', version)
    end
    hold_fence(key, ttl_ms)
    return 'fenced'
  end
  new_fence(key, version, ttl_ms, true)  -- stale
  return 'repaired'
end

-- FCALL cr2_apply numkeys k1..kn fence_ttl_ms op1 ver1 ... opn vern
-- ops: v (versioned change), s (snapshot read), d (delete), u (unversioned delete).
-- Returns one result per key: repaired | fresh | absent | fenced.
local function apply(keys, args)
  local n = #keys
  if #args ~= 1 + 2 * n then
    return bad('cr2_apply', 'expected ' .. (1 + 2 * n) .. ' arguments after the ' .. n
      .. ' keys (fence_ttl_ms, then an op and a version per key), got ' .. #args)
  end
  local ttl_ms = args[1]
  if not string.find(ttl_ms, '^[0-9]+$') or #ttl_ms > 15 or tonumber(ttl_ms) <= 0 then
    return bad('cr2_apply', 'fence_ttl_ms must be a positive integer, got "' .. ttl_ms .. '"')
  end
  local versions = {}
  for i = 1, n do
    local op = args[2 * i]
    if op == 'v' or op == 's' then
      local version = canonical(args[2 * i + 1])
      if version == nil then
        return bad('cr2_apply', 'version for key #' .. i .. ' ("' .. keys[i]
          .. '") must be a decimal integer in [0, ' .. MAX_VERSION .. '], got "'
          .. args[2 * i + 1] .. '"')
      end
      versions[i] = version
    elseif op ~= 'd' and op ~= 'u' then
      return bad('cr2_apply', 'op for key #' .. i .. ' ("' .. keys[i]
        .. '") must be one of v, s, d, u, got "' .. op .. '"')
    end
  end
  local results = {}
  for i = 1, n do
    local key, op = keys[i], args[2 * i]
    if op == 'v' then
      results[i] = versioned(key, versions[i], ttl_ms, true)
    elseif op == 's' then
      results[i] = versioned(key, versions[i], ttl_ms, false)
    elseif op == 'd' then
      local kind = classify(key)
      if kind == 'fence' then
        redis.call('HSET', key, 'v', MAX_VERSION)
        hold_fence(key, ttl_ms)
        results[i] = 'absent'
      else
        new_fence(key, MAX_VERSION, ttl_ms, kind ~= 'absent')
        results[i] = kind == 'absent' and 'absent' or 'repaired'
      end
    else
      if redis.call('DEL', key) == 1 then
        results[i] = 'repaired'
      else
        results[i] = 'absent'
      end
    end
  end
  return results
end

-- FCALL cr2_set_if_newer 1 key version payload ttl_ms
-- Writes v=version and d=payload only if there is no entry, the entry is data with
-- v < version, or a fence with v <= version. ttl_ms > 0: the new entry expires after
-- ttl_ms, or after the TTL left on the entry it replaces if that is longer, never if
-- that has none; ttl_ms = 0: no TTL. Returns 1 if written, 0 if not.
local function set_if_newer(keys, args)
  if #keys ~= 1 or #args ~= 3 then
    return bad('cr2_set_if_newer', 'expected 1 key and 3 arguments (version, payload, '
      .. 'ttl_ms), got ' .. #keys .. ' keys and ' .. #args .. ' arguments')
  end
  local key = keys[1]
  local version = canonical(args[1])
  if version == nil then
    return bad('cr2_set_if_newer', 'version must be a decimal integer in [0, '
      .. MAX_VERSION .. '], got "' .. args[1] .. '"')
  end
  local ttl_ms = args[3]
  if not string.find(ttl_ms, '^[0-9]+$') or #ttl_ms > 15 then
    return bad('cr2_set_if_newer', 'ttl_ms must be a non-negative integer (0 = no TTL), got "'
      .. ttl_ms .. '"')
  end
  local kind, current = classify(key)
  if kind == 'data' and not less(current, version) then
    return 0
  end
  if kind == 'fence' and less(version, current) then
    return 0
  end
  local ttl = tonumber(ttl_ms)
  if kind ~= 'absent' then
    if ttl > 0 then
      local left = redis.call('PTTL', key)  -- -1: no TTL
      if left == -1 then
        ttl = 0  -- what it replaces never expires: neither does the new entry
      elseif left > ttl then
        ttl_ms = string.format('%d', left)
      end
    end
    redis.call('DEL', key)
  end
  redis.call('HSET', key, 'v', version, 'd', args[2])
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl_ms)
  end
  return 1
end

-- allow-oom: invalidation must go on when the cache is full (it mostly frees memory);
-- the writer's set_if_newer is refused under OOM like any other write.
redis.register_function{function_name = 'cr2_apply', callback = apply, flags = {'allow-oom'}}
redis.register_function('cr2_set_if_newer', set_if_newer)
