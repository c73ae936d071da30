-- All shared state changes of the pipeline, atomically, in one call per batch.
--
-- Redis runs a script to completion before anything else, and its effects are persisted and
-- replicated as one transaction, so a batch is either fully applied or not at all. Every change
-- is guarded by an identity (order_id, contact_id) recorded in the same call, which makes a
-- replayed batch a no-op: that is what makes counts exact under redelivery and concurrent
-- workers. Keys are computed here, so this needs a single Redis (not Redis Cluster).
--
-- Keys (prefix cpo:):
--   o:<order_id>     string  <contacted 0|1><order time, s>[,<dim id>:<value id>...]  TTL order
--   c:<contact_id>   string  "1" (dedup identity)                                    TTL contact
--   pq               zset    contact_id -> join deadline (wall clock)
--   pc               hash    contact_id -> "<cause id> <contact time> <order_id>"
--   po:<order_id>    set     contact_ids waiting for that order
--   pending_orders   set     order_ids that have contacts waiting (one SMISMEMBER per batch)
--   reg:cause        hash    cause -> id (1..max-1; 0 is "other")
--   reg:dim          hash    dimension -> id
--   reg:v:<dim id>   hash    value -> id (1..max-1; 0 is "other")
--   b:<res>:<start>  hash    event-time bucket: o, o:<d>:<v>, c:<c>, a:<c>:<d>:<v>, u:<c>:<n|f>, oc
--   pb:<res>:<start> hash    pairs of attribute values (coarse only): p:<d>:<v>:<d>:<v>,
--                            q:<c>:<d>:<v>:<d>:<v>
--   outbox           stream  one entry per call holding its output records (JSON), until
--                            Kafka has them: the worker deletes the entry after the produce
--                            is acknowledged; entries left by a crashed worker are produced
--                            again by any worker
--
-- ARGV: mode ("batch" | "expire"), now, fine res, coarse res, fine ttl, coarse ttl,
--   fine horizon (seconds before now beyond which fine buckets are not written),
--   pair ttl (0: pairs off), then
--   batch:  grace, order ttl, contact ttl, max causes, max values, n dims, dim names...,
--           events as one JSON array (see apply_batch)
--   expire: limit
-- Returns { totals, attributed, unattributed, pending, outbox id or "" }:
--   totals       flat field, count pairs summed over the call (resolution independent), plus
--                "do" / "dc" for duplicate orders / contacts
--   attributed   flat (contact_id, cause id, order_id, order time, contact time, "d:v,d:v")
--   unattributed flat (contact_id, cause id, reason "n" | "f", contact time)
-- Hot path: field names are built once per call and cached, and every count goes to a
-- per-bucket Lua table first, so Redis sees one HINCRBY per distinct field and bucket.
--   pending      contacts that started waiting for their order in this call

local mode = ARGV[1]
local now = tonumber(ARGV[2])
local fine_res, coarse_res = tonumber(ARGV[3]), tonumber(ARGV[4])
local fine_ttl, coarse_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])

local fine_horizon = tonumber(ARGV[7])  -- older events are never read from fine buckets
local pair_ttl = tonumber(ARGV[8])  -- 0: attribute-value pairs are not counted
local fine_buckets, coarse_buckets = {}, {}  -- bucket start -> field -> count
local pair_buckets = {}  -- coarse bucket start -> pair field -> count
local discard = {}  -- the fine table of events older than the fine horizon: never written
local duplicates = {}
local attributed = {}
local unattributed = {}
local pending = 0
local floor = math.floor

-- t[k], created empty on first use.
local function table_at(t, k)
  local v = t[k]
  if not v then
    v = {}
    t[k] = v
  end
  return v
end

-- The fine and coarse count tables of event time t.
local function buckets(t)
  local fine = discard
  if t >= now - fine_horizon then
    fine = table_at(fine_buckets, floor(t / fine_res) * fine_res)
  end
  return fine, table_at(coarse_buckets, floor(t / coarse_res) * coarse_res)
end

-- Counts per pair of attribute values (root-cause drill-down), in coarse buckets of their own:
-- 'p:<d>:<v>:<d>:<v>' for orders, 'q:<cause>:<d>:<v>:<d>:<v>' for joined contacts.
local pair_field_cache = {}
local function add_pairs(t, prefix, pairs_)
  local counts = table_at(pair_buckets, floor(t / coarse_res) * coarse_res)
  local cache = table_at(pair_field_cache, prefix)
  local n = #pairs_
  for a = 1, n - 1 do
    local first = pairs_[a]
    local by_first = table_at(cache, first)
    for b = a + 1, n do
      local name = by_first[pairs_[b]]
      if not name then
        name = prefix .. first .. ':' .. pairs_[b]
        by_first[pairs_[b]] = name
      end
      counts[name] = (counts[name] or 0) + 1
    end
  end
end

local function add(fine, coarse, field)
  fine[field] = (fine[field] or 0) + 1
  coarse[field] = (coarse[field] or 0) + 1
end

-- Cached field names: 'a:<cause>:<d>:<v>' per cause and pair, 'c:<cause>', 'u:<cause>:<r>'.
local field_cache = {}
local function field(prefix, cause, suffix)
  local by_cause = table_at(field_cache, prefix .. cause)
  local name = by_cause[suffix]
  if not name then
    name = prefix .. cause .. suffix
    by_cause[suffix] = name
  end
  return name
end

-- Attribute a contact to its order record; returns the record with the contacted flag set.
local function attribute(contact_id, cause, t, t_text, order_id, record)
  local fine, coarse = buckets(t)
  local order_time, attrs = string.match(record, '^.(%-?%d+),?(.*)$')
  local pairs_ = {}
  for pair in string.gmatch(attrs, '[^,]+') do
    add(fine, coarse, field('a:', cause, ':' .. pair))
    pairs_[#pairs_ + 1] = pair
  end
  if pair_ttl > 0 then add_pairs(t, 'q:' .. cause .. ':', pairs_) end
  if string.sub(record, 1, 1) == '0' then
    record = '1' .. string.sub(record, 2)
    redis.call('SET', 'cpo:o:' .. order_id, record, 'KEEPTTL')
    add(fine, coarse, 'oc')
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
  local fine, coarse = buckets(t)
  add(fine, coarse, field('u:', cause, ':' .. reason))
  local n = #unattributed
  unattributed[n + 1] = contact_id
  unattributed[n + 2] = cause
  unattributed[n + 3] = reason
  unattributed[n + 4] = t_text
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
    else
      id = 0
    end
  end
  cache[name] = id
  return id
end

local function apply_batch()
  local grace = tonumber(ARGV[9])
  local order_ttl, contact_ttl = tonumber(ARGV[10]), tonumber(ARGV[11])
  local max_causes, max_values = tonumber(ARGV[12]), tonumber(ARGV[13])
  local n_dims = tonumber(ARGV[14])
  local dim_ids = {}
  for d = 1, n_dims do
    dim_ids[d] = registry_id('cpo:reg:dim', ARGV[14 + d], 1e9)
  end
  -- The events, as one JSON array: n orders, (order_id, time, n attrs, (dim index, value)...)...,
  -- n contacts, (contact_id, time text, cause, order_id or "")...
  local A = cjson.decode(ARGV[15 + n_dims])
  local i = 1

  -- (dimension index, value) -> 'd:v' with registry ids, and 'd:v' -> 'o:d:v', built once.
  local pair_cache, order_field = {}, {}
  local function pair_of(dim_index, value)
    local by_value = table_at(pair_cache, dim_index)
    local pair = by_value[value]
    if not pair then
      local dim = dim_ids[tonumber(dim_index)]
      local value_id = 0
      if value ~= 'other' then
        value_id = registry_id('cpo:reg:v:' .. dim, value, max_values)
      end
      pair = dim .. ':' .. value_id
      by_value[value] = pair
      order_field[pair] = 'o:' .. pair
    end
    return pair
  end

  local n_orders = tonumber(A[i]); i = i + 1
  local waiting = {}
  if n_orders > 0 and redis.call('EXISTS', 'cpo:pending_orders') == 1 then
    local ids, j = {}, i
    for k = 1, n_orders do
      ids[k] = A[j]
      j = j + 3 + 2 * tonumber(A[j + 2])
    end
    waiting = redis.call('SMISMEMBER', 'cpo:pending_orders', unpack(ids))
  end
  for k = 1, n_orders do
    local order_id, t = A[i], tonumber(A[i + 1])
    local n_attrs = tonumber(A[i + 2])
    local first_attr = i + 3
    i = first_attr + 2 * n_attrs
    local key = 'cpo:o:' .. order_id
    -- The identity first: a duplicate's attributes are ignored, so they take no label slot.
    if redis.call('EXISTS', key) == 0 then
      local pairs_ = {}
      for a = 1, n_attrs do
        local at = first_attr + 2 * (a - 1)
        pairs_[a] = pair_of(A[at], A[at + 1])
      end
      local record = '0' .. string.format('%d', floor(t))
      if n_attrs > 0 then record = record .. ',' .. table.concat(pairs_, ',') end
      redis.call('SET', key, record, 'EX', order_ttl)
      local fine, coarse = buckets(t)
      add(fine, coarse, 'o')
      for a = 1, n_attrs do add(fine, coarse, order_field[pairs_[a]]) end
      if pair_ttl > 0 then add_pairs(t, 'p:', pairs_) end
      if waiting[k] == 1 then
        local waiting_key = 'cpo:po:' .. order_id
        for _, contact_id in ipairs(redis.call('SMEMBERS', waiting_key)) do
          local entry = redis.call('HGET', 'cpo:pc', contact_id)
          if entry then
            local cause, ct_text = string.match(entry, '^(%d+) (%S+) ')
            record = attribute(contact_id, cause, tonumber(ct_text), ct_text, order_id, record)
            redis.call('HDEL', 'cpo:pc', contact_id)
            redis.call('ZREM', 'cpo:pq', contact_id)
          end
        end
        redis.call('DEL', waiting_key)
        redis.call('SREM', 'cpo:pending_orders', order_id)
      end
    else
      duplicates['do'] = (duplicates['do'] or 0) + 1
    end
  end

  local n_contacts = tonumber(A[i]); i = i + 1
  for _ = 1, n_contacts do
    local contact_id, t_text, cause_name, order_id = A[i], A[i + 1], A[i + 2], A[i + 3]
    local t = tonumber(t_text)
    i = i + 4
    if redis.call('SET', 'cpo:c:' .. contact_id, '1', 'NX', 'EX', contact_ttl) then
      local cause = 0
      if cause_name ~= 'other' and cause_name ~= 'all' then
        cause = registry_id('cpo:reg:cause', cause_name, max_causes)
      end
      local fine, coarse = buckets(t)
      add(fine, coarse, field('c:', cause, ''))
      if order_id == '' then
        unattribute(contact_id, cause, t, t_text, 'n')
      else
        local record = redis.call('GET', 'cpo:o:' .. order_id)
        if record then
          attribute(contact_id, cause, t, t_text, order_id, record)
        else
          redis.call('ZADD', 'cpo:pq', now + grace, contact_id)
          redis.call('HSET', 'cpo:pc', contact_id, cause .. ' ' .. t_text .. ' ' .. order_id)
          redis.call('SADD', 'cpo:po:' .. order_id, contact_id)
          redis.call('SADD', 'cpo:pending_orders', order_id)
          pending = pending + 1
        end
      end
    else
      duplicates['dc'] = (duplicates['dc'] or 0) + 1
    end
  end
end

-- Contacts whose join grace has passed are counted as unattributed (order_not_found).
local function expire_pending()
  local limit = tonumber(ARGV[9])
  local due = redis.call('ZRANGEBYSCORE', 'cpo:pq', '-inf', now, 'LIMIT', 0, limit)
  for _, contact_id in ipairs(due) do
    local entry = redis.call('HGET', 'cpo:pc', contact_id)
    if entry then
      local cause, ct_text, order_id = string.match(entry, '^(%d+) (%S+) (.*)$')
      unattribute(contact_id, cause, tonumber(ct_text), ct_text, 'f')
      local waiting_key = 'cpo:po:' .. order_id
      redis.call('SREM', waiting_key, contact_id)
      if redis.call('SCARD', waiting_key) == 0 then
        redis.call('SREM', 'cpo:pending_orders', order_id)
      end
      redis.call('HDEL', 'cpo:pc', contact_id)
    end
    redis.call('ZREM', 'cpo:pq', contact_id)
  end
end

if mode == 'batch' then
  apply_batch()
elseif mode == 'expire' then
  expire_pending()
else
  return redis.error_reply('unknown mode ' .. tostring(mode))
end

-- Every count is in exactly one coarse bucket, so their sum is the call's total.
local totals = duplicates
local function flush(tables, res, ttl, sum)
  for start, fields in pairs(tables) do
    local key = 'cpo:b:' .. res .. ':' .. string.format('%d', start)
    for name, n in pairs(fields) do
      redis.call('HINCRBY', key, name, n)
      if sum then totals[name] = (totals[name] or 0) + n end
    end
    redis.call('EXPIRE', key, ttl)
  end
end
flush(fine_buckets, fine_res, fine_ttl, false)
flush(coarse_buckets, coarse_res, coarse_ttl, true)
for start, fields in pairs(pair_buckets) do
  local key = 'cpo:pb:' .. coarse_res .. ':' .. string.format('%d', start)
  for name, n in pairs(fields) do redis.call('HINCRBY', key, name, n) end
  redis.call('EXPIRE', key, pair_ttl)
end

local outbox_id = ''
if #attributed > 0 or #unattributed > 0 then
  outbox_id = redis.call('XADD', 'cpo:outbox', '*', 'a', cjson.encode(attributed),
                         'u', cjson.encode(unattributed))
end

local flat_totals = {}
for name, n in pairs(totals) do
  flat_totals[#flat_totals + 1] = name
  flat_totals[#flat_totals + 1] = tostring(n)
end
return { flat_totals, attributed, unattributed, pending, outbox_id }
