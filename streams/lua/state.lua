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
--   reg:cause        hash    cause -> id (1..max-1; 0 is "other")
--   reg:dim          hash    dimension -> id
--   reg:v:<dim id>   hash    value -> id (1..max-1; 0 is "other")
--   b:<res>:<start>  hash    event-time bucket: o, o:<d>:<v>, c:<c>, a:<c>:<d>:<v>, u:<c>:<n|f>, oc
--   outbox           stream  every counted contact's output record until Kafka has it (the
--                            worker deletes entries after the produce is acknowledged; entries
--                            left by a crashed worker are produced again by any worker)
--
-- ARGV: mode ("batch" | "expire"), now, fine res, coarse res, fine ttl, coarse ttl, then
--   batch:  grace, order ttl, contact ttl, max causes, max values, n dims, dim names...,
--           n orders, (order_id, time, n attrs, (dim index, value)...)...,
--           n contacts, (contact_id, time, cause, order_id or "")...
--   expire: limit
-- Returns { totals, attributed, unattributed, pending }:
--   totals       flat field, count pairs summed over the call (resolution independent), plus
--                "do" / "dc" for duplicate orders / contacts
--   attributed   flat (outbox id, contact_id, cause id, order_id, order time, contact time,
--                "d:v,d:v")
--   unattributed flat (outbox id, contact_id, cause id, reason "n" | "f", contact time)
--   pending      contacts that started waiting for their order in this call

local mode = ARGV[1]
local now = tonumber(ARGV[2])
local fine_res, coarse_res = tonumber(ARGV[3]), tonumber(ARGV[4])
local fine_ttl, coarse_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])

local increments = {}   -- bucket key -> field -> count
local bucket_ttl = {}   -- bucket key -> ttl
local totals = {}       -- field -> count
local attributed = {}
local unattributed = {}
local pending = 0

local function bucket(t, res, ttl)
  local key = 'cpo:b:' .. res .. ':' .. string.format('%d', math.floor(t / res) * res)
  if not increments[key] then
    increments[key] = {}
    bucket_ttl[key] = ttl
  end
  return increments[key]
end

local function add(t, field, n)
  local fine = bucket(t, fine_res, fine_ttl)
  local coarse = bucket(t, coarse_res, coarse_ttl)
  fine[field] = (fine[field] or 0) + n
  coarse[field] = (coarse[field] or 0) + n
  totals[field] = (totals[field] or 0) + n
end

local function count(field, n)
  totals[field] = (totals[field] or 0) + n
end

-- Attribute a contact to its order record; returns the record with the contacted flag set.
local function attribute(contact_id, cause, t, t_text, order_id, record)
  local order_time, attrs = string.match(record, '^.(%-?%d+),?(.*)$')
  for pair in string.gmatch(attrs, '[^,]+') do
    add(t, 'a:' .. cause .. ':' .. pair, 1)
  end
  if string.sub(record, 1, 1) == '0' then
    record = '1' .. string.sub(record, 2)
    redis.call('SET', 'cpo:o:' .. order_id, record, 'KEEPTTL')
    add(t, 'oc', 1)
  end
  local id = redis.call('XADD', 'cpo:outbox', '*', 'k', 'a', 'i', contact_id, 'c', cause,
                        'o', order_id, 'ot', order_time, 'ct', t_text, 'p', attrs)
  local n = #attributed
  attributed[n + 1] = id
  attributed[n + 2] = contact_id
  attributed[n + 3] = cause
  attributed[n + 4] = order_id
  attributed[n + 5] = order_time
  attributed[n + 6] = t_text
  attributed[n + 7] = attrs
  return record
end

local function unattribute(contact_id, cause, t, t_text, reason)
  add(t, 'u:' .. cause .. ':' .. reason, 1)
  local id = redis.call('XADD', 'cpo:outbox', '*', 'k', 'u', 'i', contact_id, 'c', cause,
                        'r', reason, 'ct', t_text)
  local n = #unattributed
  unattributed[n + 1] = id
  unattributed[n + 2] = contact_id
  unattributed[n + 3] = cause
  unattributed[n + 4] = reason
  unattributed[n + 5] = t_text
end

-- Bounded label registry: the first max-1 names get ids 1.., the rest fold into 0 ("other").
local registry_cache = {}
local function registry_id(key, name, max)
  local cache = registry_cache[key]
  if not cache then
    cache = {}
    registry_cache[key] = cache
  end
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
  local grace = tonumber(ARGV[7])
  local order_ttl, contact_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
  local max_causes, max_values = tonumber(ARGV[10]), tonumber(ARGV[11])
  local n_dims = tonumber(ARGV[12])
  local dim_ids = {}
  for d = 1, n_dims do
    dim_ids[d] = registry_id('cpo:reg:dim', ARGV[12 + d], 1e9)
  end
  local i = 13 + n_dims

  local n_orders = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n_orders do
    local order_id, t = ARGV[i], tonumber(ARGV[i + 1])
    local n_attrs = tonumber(ARGV[i + 2])
    i = i + 3
    local pairs_ = {}
    for a = 1, n_attrs do
      local dim = dim_ids[tonumber(ARGV[i])]
      local value = ARGV[i + 1]
      local value_id = 0
      if value ~= 'other' then
        value_id = registry_id('cpo:reg:v:' .. dim, value, max_values)
      end
      pairs_[a] = dim .. ':' .. value_id
      i = i + 2
    end
    local record = '0' .. string.format('%d', math.floor(t))
    if n_attrs > 0 then record = record .. ',' .. table.concat(pairs_, ',') end
    if redis.call('SET', 'cpo:o:' .. order_id, record, 'NX', 'EX', order_ttl) then
      add(t, 'o', 1)
      for a = 1, n_attrs do add(t, 'o:' .. pairs_[a], 1) end
      local waiting_key = 'cpo:po:' .. order_id
      local waiting = redis.call('SMEMBERS', waiting_key)
      for _, contact_id in ipairs(waiting) do
        local entry = redis.call('HGET', 'cpo:pc', contact_id)
        if entry then
          local cause, ct_text = string.match(entry, '^(%d+) (%S+) ')
          record = attribute(contact_id, cause, tonumber(ct_text), ct_text, order_id, record)
          redis.call('HDEL', 'cpo:pc', contact_id)
          redis.call('ZREM', 'cpo:pq', contact_id)
        end
      end
      if #waiting > 0 then redis.call('DEL', waiting_key) end
    else
      count('do', 1)
    end
  end

  local n_contacts = tonumber(ARGV[i]); i = i + 1
  for _ = 1, n_contacts do
    local contact_id, t_text, cause_name, order_id = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local t = tonumber(t_text)
    i = i + 4
    if redis.call('SET', 'cpo:c:' .. contact_id, '1', 'NX', 'EX', contact_ttl) then
      local cause = 0
      if cause_name ~= 'other' and cause_name ~= 'all' then
        cause = registry_id('cpo:reg:cause', cause_name, max_causes)
      end
      add(t, 'c:' .. cause, 1)
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
          pending = pending + 1
        end
      end
    else
      count('dc', 1)
    end
  end
end

-- Contacts whose join grace has passed are counted as unattributed (order_not_found).
local function expire_pending()
  local limit = tonumber(ARGV[7])
  local due = redis.call('ZRANGEBYSCORE', 'cpo:pq', '-inf', now, 'LIMIT', 0, limit)
  for _, contact_id in ipairs(due) do
    local entry = redis.call('HGET', 'cpo:pc', contact_id)
    if entry then
      local cause, ct_text, order_id = string.match(entry, '^(%d+) (%S+) (.*)$')
      unattribute(contact_id, cause, tonumber(ct_text), ct_text, 'f')
      redis.call('SREM', 'cpo:po:' .. order_id, contact_id)
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

for key, fields in pairs(increments) do
  for field, n in pairs(fields) do
    redis.call('HINCRBY', key, field, n)
  end
  redis.call('EXPIRE', key, bucket_ttl[key])
end

local flat_totals = {}
for field, n in pairs(totals) do
  flat_totals[#flat_totals + 1] = field
  flat_totals[#flat_totals + 1] = tostring(n)
end
return { flat_totals, attributed, unattributed, pending }
