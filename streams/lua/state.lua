-- All shared state changes of the pipeline, atomically, in one call per batch.
--
-- Redis runs a script to completion before anything else, and its effects are persisted and
-- replicated as one transaction, so a batch is either fully applied or not at all. Every change
-- is guarded by an identity (order_id, contact_id) recorded in the same call, which makes a
-- replayed batch a no-op: that is what makes counts exact under redelivery and concurrent
-- workers. Keys are computed here, so this needs a single Redis (not Redis Cluster).
--
-- Time is Redis's (TIME), not the caller's: join deadlines, identity arrival and sweeps,
-- and the fine-bucket horizon of contacts do not depend on a worker's clock. (Orders are
-- counted by the worker, at its Redis-corrected clock `tally now`: a duplicate's counts are
-- taken back by the same rule.)
--
-- Keys (prefix cpo:):
--   o:<shard>        hash    order_id -> <contacted 0|1><arrival, s>,<order time, s>[,<d>:<v>...]
--   c:<shard>        hash    contact_id -> <arrival, s> (dedup identity)
--                            Shard = crc32(id) mod the shard count (the worker computes it).
--                            Small hashes are listpacks, far smaller than a key per id; the
--                            sweep deletes entries older than their retention (arrival time).
--   sweep:<o|c>      hash    each kind's sweep: shard and HSCAN cursor it is at, when that
--                            shard was due
--   pq               zset    waiting contact -> join deadline (Redis time); the member is the
--                            JSON [contact_id, cause id, contact time text, order_id]
--   pw               hash    order_id -> how many of its contacts wait (one HMGET per batch
--                            finds the arriving orders that have some). Before 0.3 it held the
--                            members themselves, newline-joined: moved to w: when next touched
--   w:<order_id>     set     the pq members of the contacts waiting for that order: parking,
--                            expiring and joining cost O(1) per contact however many wait
--   reg:cause        hash    cause -> id (1..max-1; 0 is "other")
--   reg:dim          hash    dimension -> id
--   reg:v:<dim id>   hash    value -> id (1..max-1; 0 is "other")
--   reg:stamp        hash    v -> the registries' version, <n> -> token of version n. A call
--                            that registers a name adds a version with a new token (Redis
--                            time). Workers cache ids under a stamp (version, token); the
--                            stamp stays valid while the token of its version is unchanged, so
--                            a lost Redis (flush) or a rollback (a crash under appendfsync
--                            everysec, an RDB restore, a failover to a lagging replica) that
--                            lost registrations is detected, even when the lost ids were given
--                            to other names since
--   lane:<id>        string  the sequence number of a worker's last batch call applied: a
--                            worker's calls are applied in its order, never one before the one
--                            sent ahead of it (first event wins, per partition)
--   b:<res>:<start>  hash    event-time bucket: o, o:<d>:<v>, c:<c>, a:<c>:<d>:<v>, u:<c>:<n|f>, oc
--   pb:<res>:<start> hash    pairs of attribute values (coarse only): p:<d>:<v>:<d>:<v>,
--                            q:<c>:<d>:<v>:<d>:<v>, lower dimension id first
--   pbq              list    pair counts not yet in pb:*, one entry per batch: "<seq> <time>"
--                            then JSON lines {"p": {start: {field: count}}, "q": [start, cause
--                            id, "d:v,d:v", ...]} (q: one joined contact, its pairs not
--                            expanded). Pairs are many distinct fields per batch (about ten
--                            times the single-value ones), so a worker folds the entries of
--                            many batches at once (RedisState.fold_pairs): it reads them,
--                            merges and expands them, and the fold call applies the sums and
--                            drops the entries if the list still starts with the entry it read
--                            (the header's time tells an entry from one written after a
--                            rollback under the same seq). Pair buckets are up to a second or
--                            two behind the other counts.
--   pbq:seq          string  the entries' sequence number
--   outbox           stream  one entry per call holding its output records (JSON) and the
--                            stamp their ids belong to, until Kafka has them: the worker
--                            deletes the entry after the produce is acknowledged; entries left
--                            by a crashed worker are produced again by any worker
--
-- Orders are counted by the worker (streams/tally.py) as if every order of the batch were
-- new; this script records their identities and takes back the counts of each order that
-- turns out to be a duplicate. Contacts are counted here, since their counts need the join.
--
-- ARGV: mode ("register" | "batch" | "expire" | "fold"), fine res, coarse res, fine ttl,
--   coarse ttl, fine horizon (seconds before now beyond which fine buckets are not written),
--   pair ttl (0: pairs off), then
--   register: max values, stamp version, stamp token (the caller's, "" if none), n dims, dim
--             names..., JSON [order_id, shard, dim index, value, ...]
--             Registers the values of orders not already known (a duplicate takes no label
--             slot). Returns { version, token, caller's stamp valid 0|1, dim ids, flat (dim
--             index, value, value id), per dim index its whole registry (flat value, id) if it
--             is full, else empty }.
--   batch:    tally now, grace, max causes, stamp version, stamp token, lane, seq, first
--             (1: the lane starts here), JSON orders [order_id, shard, record, ...], JSON
--             contacts [contact_id, shard, time text, cause, order_id or "", order shard or "",
--             age (seconds since the worker fetched it: the join grace runs from there), ...],
--             JSON order counts [key, ttl, n, field, count, ...],
--             JSON order pair counts {start: {field: count}} or ""
--             Fails, changing nothing, with OUT_OF_ORDER if the lane's previous call is not
--             applied, or STALE_REGISTRY if the stamp is not valid any more.
--   expire:   limit, order retention, contact retention, shards, order sweep period, contact
--             sweep period
--   fold:     header of the first pbq entry read, entries read, JSON [start, n, field, count,
--             ...]. Returns the entries folded (0 if another worker folded them first).
-- batch and expire return { totals, attributed, unattributed, pending, outbox id or "",
--   stamp version, stamp token, Redis time }:
--   totals       flat field, count pairs of what this call counted, summed over coarse buckets
--                (the worker adds its order counts), plus "do" / "dc" for duplicate orders /
--                contacts
--   attributed   JSON flat (contact_id, cause id, order_id, order time, contact time,
--                "d:v,d:v"), or "" when the call counted no contact (an empty list is "{}")
--   unattributed JSON flat (contact_id, cause id, reason "n" | "f", contact time), or ""
--   pending      contacts that started waiting for their order in this call
--   stamp        of the registries after the call: every id in the reply is theirs
-- Hot path: field names are built once per call and cached, and every count goes to a
-- per-bucket Lua table first, so Redis sees one HINCRBY per distinct field and bucket.

local mode = ARGV[1]
local fine_res, coarse_res = tonumber(ARGV[2]), tonumber(ARGV[3])
local fine_ttl, coarse_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local fine_horizon = tonumber(ARGV[6])  -- older events are never read from fine buckets
local pair_ttl = tonumber(ARGV[7])  -- 0: attribute-value pairs are not counted
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local time_text = clock[1] .. '.' .. clock[2]
local fine_buckets, coarse_buckets = {}, {}  -- bucket start -> field -> count
local pair_buckets = {}  -- coarse bucket start -> pair field -> count
local joined_pairs = {}  -- flat (coarse bucket start, cause, 'd:v,...') of joined contacts
local discard = {}  -- the fine table of events older than the fine horizon: never written
local duplicates = {}
local attributed = {}
local unattributed = {}
local pending = 0
local floor = math.floor
local arrival = string.format('%d', now)
local STAMP = 'cpo:reg:stamp'
local SWEEP_ENTRIES = 5000  -- identities examined per call and kind ...
local SWEEP_SHARDS = 256  -- ... and identity shards visited: a sweep behind catches up over calls

-- t[k], created empty on first use.
local function table_at(t, k)
  local v = t[k]
  if not v then
    v = {}
    t[k] = v
  end
  return v
end

-- The fine and coarse count tables of event time t; `cut` is the time before which events
-- skip the fine buckets.
local function buckets(t, cut)
  local fine = discard
  if t >= cut then
    fine = table_at(fine_buckets, floor(t / fine_res) * fine_res)
  end
  return fine, table_at(coarse_buckets, floor(t / coarse_res) * coarse_res)
end
local fine_cut = now - fine_horizon

-- The start of t's coarse bucket, as text (the pair queue's JSON keys are strings).
local function coarse_start(t)
  return string.format('%d', floor(t / coarse_res) * coarse_res)
end

-- Counts per pair of attribute values (root-cause drill-down), in coarse buckets of their own:
-- 'p:<d>:<v>:<d>:<v>' for orders, 'q:<cause>:<d>:<v>:<d>:<v>' for joined contacts.
local pair_field_cache = {}
local function add_pairs(t, prefix, pairs_, n)
  local counts = table_at(pair_buckets, coarse_start(t))
  local cache = table_at(pair_field_cache, prefix)
  local size = #pairs_
  for a = 1, size - 1 do
    local first = pairs_[a]
    local by_first = table_at(cache, first)
    for b = a + 1, size do
      local name = by_first[pairs_[b]]
      if not name then
        name = prefix .. first .. ':' .. pairs_[b]
        by_first[pairs_[b]] = name
      end
      counts[name] = (counts[name] or 0) + n
    end
  end
end

local function add(fine, coarse, field, n)
  fine[field] = (fine[field] or 0) + n
  coarse[field] = (coarse[field] or 0) + n
end

-- Field names, cached so that no string is built per count: field('c:', cause) is
-- 'c:<cause>', field('u:', cause, 'f') 'u:<cause>:f', field('a:', cause, '<d>:<v>')
-- 'a:<cause>:<d>:<v>'.
local field_cache = {}
local function field(prefix, cause, suffix)
  local by_suffix = table_at(table_at(field_cache, prefix), cause)
  local key = suffix or ''
  local name = by_suffix[key]
  if not name then
    name = prefix .. cause .. (suffix and ':' .. suffix or '')
    by_suffix[key] = name
  end
  return name
end

-- An order record's event time and its 'd:v,d:v' text.
local function parse_order(record)
  return string.match(record, '^.%d+,(%-?%d+),?(.*)$')
end

-- Take back the worker's counts of an order that was already known: the worker counted it
-- at its clock `tally_now`, so the same rule decides which buckets.
local function uncount_order(record, tally_cut)
  local order_time, attrs = parse_order(record)
  local pairs_ = {}
  for pair in string.gmatch(attrs, '[^,]+') do pairs_[#pairs_ + 1] = pair end
  local t = tonumber(order_time)
  local fine, coarse = buckets(t, tally_cut)
  add(fine, coarse, 'o', -1)
  for _, pair in ipairs(pairs_) do add(fine, coarse, 'o:' .. pair, -1) end
  if pair_ttl > 0 then add_pairs(t, 'p:', pairs_, -1) end
end

-- Attribute a contact to its order record (stored at key, field order_id); returns the record
-- with the contacted flag set.
local function attribute(contact_id, cause, t, t_text, order_id, key, record)
  local fine, coarse = buckets(t, fine_cut)
  local order_time, attrs = parse_order(record)
  for pair in string.gmatch(attrs, '[^,]+') do add(fine, coarse, field('a:', cause, pair), 1) end
  if pair_ttl > 0 and string.find(attrs, ',', 1, true) then
    local n = #joined_pairs
    joined_pairs[n + 1] = coarse_start(t)
    joined_pairs[n + 2] = cause
    joined_pairs[n + 3] = attrs
  end
  if string.sub(record, 1, 1) == '0' then
    record = '1' .. string.sub(record, 2)
    redis.call('HSET', key, order_id, record)
    add(fine, coarse, 'oc', 1)
  end
  local n = #attributed
  attributed[n + 1] = contact_id
  attributed[n + 2] = cause
  attributed[n + 3] = order_id
  attributed[n + 4] = order_time
  attributed[n + 5] = t_text
  attributed[n + 6] = attrs
  return record
end

local function unattribute(contact_id, cause, t, t_text, reason)
  local fine, coarse = buckets(t, fine_cut)
  add(fine, coarse, field('u:', cause, reason), 1)
  local n = #unattributed
  unattributed[n + 1] = contact_id
  unattributed[n + 2] = cause
  unattributed[n + 3] = reason
  unattributed[n + 4] = t_text
end

local function lines(text)
  local list = {}
  for line in string.gmatch(text, '[^\n]+') do list[#list + 1] = line end
  return list
end

-- A command on one key with many arguments, in parts (Lua's unpack takes a few thousand values
-- at most); returns the parts' replies as one list.
local function in_parts(command, key, args)
  local replies = {}
  for first = 1, #args, 4000 do
    local part = redis.call(command, key, unpack(args, first, math.min(first + 3999, #args)))
    if type(part) == 'table' then
      for j = 1, #part do replies[first + j - 1] = part[j] end
    end
  end
  return replies
end

-- The registries' stamp: whether (version, token) is still theirs, and the current one (made,
-- at version 0, for new registries).
local function stamp_valid(version, token)
  return version ~= '' and redis.call('HGET', STAMP, version) == token
end
local function current_stamp()
  local version = redis.call('HGET', STAMP, 'v')
  if not version then
    redis.call('HSET', STAMP, 'v', 0, '0', time_text)
    return '0', time_text
  end
  return version, redis.call('HGET', STAMP, version)
end
local registered = false  -- whether this call gave a name an id: a new version at the end
local function bump_stamp()
  local version, token = current_stamp()
  if registered then
    version = tostring(redis.call('HINCRBY', STAMP, 'v', 1))
    token = time_text
    redis.call('HSET', STAMP, version, token)
  end
  return version, token
end

-- Bounded label registry: the first max-1 names get ids 1.., the rest fold into 0 ("other").
local registry_cache = {}
local function registry_id(key, name, max)
  local cache = table_at(registry_cache, key)
  local id = cache[name]
  if id then return id end
  id = redis.call('HGET', key, name)
  if id then
    id = tonumber(id)
  else
    local size = redis.call('HLEN', key)
    if size < max - 1 then
      id = size + 1
      redis.call('HSET', key, name, id)
      registered = true
    else
      id = 0
    end
  end
  cache[name] = id
  return id
end

local function register()
  local max_values = tonumber(ARGV[8])
  local valid = stamp_valid(ARGV[9], ARGV[10]) and 1 or 0
  local n_dims = tonumber(ARGV[11])
  local dim_ids = {}
  for d = 1, n_dims do dim_ids[d] = registry_id('cpo:reg:dim', ARGV[11 + d], 1e9) end
  local A = cjson.decode(ARGV[12 + n_dims])
  local ids = {}
  for i = 1, #A, 4 do
    if redis.call('HEXISTS', 'cpo:o:' .. A[i + 1], A[i]) == 0 then
      local dim = dim_ids[tonumber(A[i + 2])]
      local n = #ids
      ids[n + 1] = A[i + 2]
      ids[n + 2] = A[i + 3]
      ids[n + 3] = registry_id('cpo:reg:v:' .. dim, A[i + 3], max_values)
    end
  end
  local full = {}  -- a full registry goes whole: the worker then needs no entry per other value
  for d = 1, n_dims do
    local key = 'cpo:reg:v:' .. dim_ids[d]
    full[d] = redis.call('HLEN', key) >= max_values - 1 and redis.call('HGETALL', key) or {}
  end
  local version, token = bump_stamp()
  return { version, token, valid, dim_ids, ids, full }
end

-- Contacts waiting for one order: their number in cpo:pw, their pq members in cpo:w:<order_id>.
local function waiting_key(order_id) return 'cpo:w:' .. order_id end

-- The waiting count of `order_id` from its cpo:pw field `value`, moving a list an earlier
-- version left there (its members, newline-joined) into the order's set first.
local function waiting_count(order_id, value)
  if string.sub(value, 1, 1) ~= '[' then return tonumber(value) end
  local members = lines(value)
  in_parts('SADD', waiting_key(order_id), members)
  redis.call('HSET', 'cpo:pw', order_id, #members)
  return #members
end

local function apply_batch()
  local tally_now, grace, max_causes = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
  local lane, seq = 'cpo:lane:' .. ARGV[13], tonumber(ARGV[14])
  if ARGV[15] ~= '1' and seq > tonumber(redis.call('GET', lane) or '0') + 1 then
    return 'OUT_OF_ORDER the worker\'s previous batch is not applied'
  end
  if not stamp_valid(ARGV[11], ARGV[12]) then
    return 'STALE_REGISTRY the label registries were reset or rolled back'
  end
  local O, C = cjson.decode(ARGV[16]), cjson.decode(ARGV[17])
  local tally_cut = tally_now - fine_horizon

  local waiting = {}
  if #O > 0 and redis.call('EXISTS', 'cpo:pw') == 1 then
    local ids = {}
    for i = 1, #O, 3 do ids[#ids + 1] = O[i] end
    waiting = in_parts('HMGET', 'cpo:pw', ids)
  end
  for i = 1, #O, 3 do
    local order_id, key, record = O[i], 'cpo:o:' .. O[i + 1], O[i + 2]
    if redis.call('HSETNX', key, order_id, record) == 1 then
      local value = waiting[(i + 2) / 3]
      if value then
        local members
        if string.sub(value, 1, 1) == '[' then
          members = lines(value)
        else
          members = redis.call('SMEMBERS', waiting_key(order_id))
          redis.call('DEL', waiting_key(order_id))
        end
        for _, member in ipairs(members) do
          local c = cjson.decode(member)
          record = attribute(c[1], c[2], tonumber(c[3]), c[3], order_id, key, record)
        end
        in_parts('ZREM', 'cpo:pq', members)
        redis.call('HDEL', 'cpo:pw', order_id)
      end
    else
      duplicates['do'] = (duplicates['do'] or 0) + 1
      uncount_order(record, tally_cut)
    end
  end

  for i = 1, #C, 7 do
    local contact_id, t_text, cause_name, order_id = C[i], C[i + 2], C[i + 3], C[i + 4]
    local t = tonumber(t_text)
    if redis.call('HSETNX', 'cpo:c:' .. C[i + 1], contact_id, arrival) == 1 then
      local cause = 0
      if cause_name ~= 'other' and cause_name ~= 'all' then
        cause = registry_id('cpo:reg:cause', cause_name, max_causes)
      end
      local fine, coarse = buckets(t, fine_cut)
      add(fine, coarse, field('c:', cause), 1)
      if order_id == '' then
        unattribute(contact_id, cause, t, t_text, 'n')
      else
        local key = 'cpo:o:' .. C[i + 5]
        local record = redis.call('HGET', key, order_id)
        if record then
          attribute(contact_id, cause, t, t_text, order_id, key, record)
        else
          local member = cjson.encode({ contact_id, cause, t_text, order_id })
          redis.call('ZADD', 'cpo:pq', now + grace - tonumber(C[i + 6]), member)
          local value = redis.call('HGET', 'cpo:pw', order_id)
          if value then waiting_count(order_id, value) end
          redis.call('SADD', waiting_key(order_id), member)
          redis.call('HINCRBY', 'cpo:pw', order_id, 1)
          pending = pending + 1
        end
      end
    else
      duplicates['dc'] = (duplicates['dc'] or 0) + 1
    end
  end

  -- The worker's order counts, before the script's own (which may take some back).
  local D = cjson.decode(ARGV[18])
  local i = 1
  while i <= #D do
    local key, ttl, n = D[i], D[i + 1], D[i + 2]
    for j = i + 3, i + 2 + 2 * n, 2 do redis.call('HINCRBY', key, D[j], D[j + 1]) end
    redis.call('EXPIRE', key, ttl)
    i = i + 3 + 2 * n
  end
  if seq > tonumber(redis.call('GET', lane) or '0') then
    redis.call('SET', lane, seq, 'EX', 86400)
  end
  return nil
end

-- Add a worker's sums of the first `count` pbq entries, unless another worker did already.
local function fold_pairs()
  local head = redis.call('LINDEX', 'cpo:pbq', 0)
  if not head or string.match(head, '^[^\n]*') ~= ARGV[8] then return 0 end
  local count = tonumber(ARGV[9])
  redis.call('LTRIM', 'cpo:pbq', count, -1)
  local D = cjson.decode(ARGV[10])
  local i = 1
  while i <= #D do
    local key, n = 'cpo:pb:' .. coarse_res .. ':' .. D[i], D[i + 1]
    for j = i + 2, i + 1 + 2 * n, 2 do
      if redis.call('HINCRBY', key, D[j], D[j + 1]) == 0 then redis.call('HDEL', key, D[j]) end
    end
    redis.call('EXPIRE', key, pair_ttl)
    i = i + 2 + 2 * n
  end
  return count
end

-- One kind's identity sweep ('o' or 'c', entries whose arrival matches `pattern`): each shard
-- is visited once per `period`, page by page (HSCAN), whichever worker calls; an identity is
-- kept from its retention to its retention + the period. A sweep more than a period behind (no
-- worker called) owes one round, not several: its clock is moved to a period ago.
local function sweep(kind, pattern, retention, shards, period)
  local budget, keys = SWEEP_ENTRIES, SWEEP_SHARDS
  local state_key = 'cpo:sweep:' .. kind
  local state = redis.call('HMGET', state_key, 'shard', 'cursor', 'at')
  local shard, cursor, at = tonumber(state[1]), state[2], tonumber(state[3])
  if not at then
    redis.call('HSET', state_key, 'shard', 0, 'cursor', '0', 'at', now)
    return
  end
  at = math.max(at, now - period)
  local step = period / shards
  local cutoff = now - retention
  while budget > 0 and keys > 0 and now - at >= step do
    local key = 'cpo:' .. kind .. ':' .. shard
    local reply = redis.call('HSCAN', key, cursor, 'COUNT', math.min(budget, 1000))
    local entries, old = reply[2], {}
    for j = 1, #entries, 2 do
      if tonumber(string.match(entries[j + 1], pattern)) < cutoff then old[#old + 1] = entries[j] end
    end
    in_parts('HDEL', key, old)
    budget, keys, cursor = budget - #entries / 2, keys - 1, reply[1]
    if cursor == '0' then
      shard, at = (shard + 1) % shards, at + step
    end
  end
  redis.call('HSET', state_key, 'shard', shard, 'cursor', cursor, 'at', string.format('%.3f', at))
end

-- Contacts whose join grace has passed are counted as unattributed (order_not_found).
local function expire_pending()
  local limit, shards = tonumber(ARGV[8]), tonumber(ARGV[11])
  sweep('o', '^.(%d+)', tonumber(ARGV[9]), shards, tonumber(ARGV[12]))
  sweep('c', '^(%d+)', tonumber(ARGV[10]), shards, tonumber(ARGV[13]))
  local due = redis.call('ZRANGEBYSCORE', 'cpo:pq', '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    local c = cjson.decode(member)
    local order_id = c[4]
    unattribute(c[1], c[2], tonumber(c[3]), c[3], 'f')
    local value = redis.call('HGET', 'cpo:pw', order_id)
    if value then
      waiting_count(order_id, value)
      if redis.call('SREM', waiting_key(order_id), member) == 1
          and redis.call('HINCRBY', 'cpo:pw', order_id, -1) <= 0 then
        redis.call('HDEL', 'cpo:pw', order_id)
      end
    end
  end
  in_parts('ZREM', 'cpo:pq', due)
end

if mode == 'register' then
  return register()
elseif mode == 'fold' then
  return fold_pairs()
elseif mode == 'batch' then
  local refused = apply_batch()
  if refused then return redis.error_reply(refused) end
elseif mode == 'expire' then
  expire_pending()
else
  return redis.error_reply('unknown mode ' .. tostring(mode))
end

-- Every count is in exactly one coarse bucket, so their sum is the call's total. A count
-- taken back to zero is deleted: a duplicate leaves no trace.
local totals = duplicates
local function flush(tables, prefix, ttl, sum)
  for start, fields in pairs(tables) do
    local key = prefix .. string.format('%d', start)
    for name, n in pairs(fields) do
      if n > 0 then
        redis.call('HINCRBY', key, name, n)
      elseif n < 0 and redis.call('HINCRBY', key, name, n) == 0 then
        redis.call('HDEL', key, name)
      end
      if sum then totals[name] = (totals[name] or 0) + n end
    end
    redis.call('EXPIRE', key, ttl)
  end
end
flush(fine_buckets, 'cpo:b:' .. fine_res .. ':', fine_ttl, false)
flush(coarse_buckets, 'cpo:b:' .. coarse_res .. ':', coarse_ttl, true)
-- This call's pair counts: the worker's (ARGV[19], orders) and the script's (joined contacts,
-- duplicates taken back), as one pbq entry.
if mode == 'batch' then
  local own = {}
  if next(pair_buckets) ~= nil then own.p = pair_buckets end
  if #joined_pairs > 0 then own.q = joined_pairs end
  local entry = { '', ARGV[19] }
  if next(own) ~= nil then entry[3] = cjson.encode(own) end
  if entry[2] ~= '' or entry[3] then
    entry[1] = redis.call('INCR', 'cpo:pbq:seq') .. ' ' .. time_text
    redis.call('RPUSH', 'cpo:pbq', table.concat(entry, '\n'))
  end
end

-- The counted contacts go out as the JSON held in the outbox entry: one string each, parsed
-- by the worker in one call, not a reply element per value; with the stamp that names them.
local version, token = bump_stamp()
local outbox_id, attributed_json, unattributed_json = '', '', ''
if #attributed > 0 or #unattributed > 0 then
  attributed_json, unattributed_json = cjson.encode(attributed), cjson.encode(unattributed)
  outbox_id = redis.call('XADD', 'cpo:outbox', '*', 'a', attributed_json,
                         'u', unattributed_json, 's', version .. ' ' .. token)
end

local flat_totals = {}
for name, n in pairs(totals) do
  if n ~= 0 then
    flat_totals[#flat_totals + 1] = name
    flat_totals[#flat_totals + 1] = tostring(n)
  end
end
return { flat_totals, attributed_json, unattributed_json, pending, outbox_id, version, token,
         time_text }
