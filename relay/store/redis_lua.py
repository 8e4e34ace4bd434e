"""The Lua function library the Redis store runs (one FCALL per store operation).

Every operation that reads and then writes (quota checks, de-dup, one-time prekey pops,
spool accounting) is one function, so Redis runs it atomically: relays sharing one Redis
never race each other between the check and the write. Keys are built from the prefix
(ARGV[1]) inside the functions, so the library assumes one Redis (not Redis Cluster).

Key layout (P is the prefix, R a recipient handle, F a file-stream frame id = the stream's
16 bytes followed by the frame's seq as 8 big-endian bytes):
  P.seq            INCRBY counter: blocks of envelope numbers reserved by relays
  P.h              hash handle -> identity
  P.q:R            stream: R's queued envelopes (fields q seq, s sender, m msg, b body, t ts),
                   consumer group "relay"; acked entries are XACKed and XDELed
  P.ix:R           hash seq -> "entry-id size sender" (find an entry by its seq)
  P.qs:R           hash n, b (queued count and bytes), n:S, b:S (what sender S holds)
  P.d:S\\0M         de-dup memory of (sender S, msg M): the seq, expires after the TTL
  P.exp            zset R\\0seq scored by ts (TTL expiry of queued envelopes)
  P.total          hash n (queued envelopes), b (bytes held: bodies and frames), sp (spool)
  P.b:H, P.ot:H    bundle hash (identity, signed, sig); zset of packed one-time prekeys
  P.fs:ID          hash a, b, created, expires of a file stream
  P.fsx, P.fo:A    zsets stream -> expires (all streams; streams A opened)
  P.fsf:ID         set R\\0F of the stream's spooled frames
  P.sp:R           zset F scored by row; P.spd:R hash F -> data; P.spm:R F -> "row exp sender"
  P.spx            zset R\\0F scored by expiry; P.sq:R hash b, b:S (spooled bytes)
  P.sprow          INCR counter of spool rows
  P.on:R           set of the relays (consumer names) that have a session of R right now
  P.live:C         set of the handles relay C has put in P.on:* (reset when C starts again)

Cost: a write command inside a function costs Redis about three times a read (it is also
appended to the AOF, MULTI/EXEC-wrapped) and each call that writes costs one fsync under
`appendfsync always`. So the functions keep writes per envelope few: counters are read with
HMGET and written back with one HSET/HDEL, P.total is read once and written once per call
(`ledger`), the P.exp index gets one ZADD and one ZREM per call (`index_later`), an ack is
one XACK, XDEL and HDEL for all its seqs; de-dup is SET NX (EXISTS only on a refusal, so a
resend of a stored envelope is still a duplicate, not a quota refusal). About 10 commands
per envelope sent and acked (28 before), same keys and fields as before (no migration).

Wake-ups: a write that queues something for R (an envelope, a spooled file frame) publishes
on P.wake:R, in the same atomic step, when a relay other than the writer's holds a session
of R. The message is one kind byte, the writer's name (a relay ignores its own: it delivered
to its sessions directly) and, for 'e' (an envelope), NUL and the envelope itself: seq, ts,
sender, msg and body separated by NUL (the body last: it may hold NUL), so the relay holding
R's session delivers it at once, as the writer's relay does for its own sessions; 's' (a
spooled file frame) carries nothing more: that relay reads the spool.
"""


LIBRARY = r"""#!lua name=qsecret_relay_v1

local function num(v) if v then return tonumber(v) or 0 end return 0 end

local function shrink(key, field, by)
  local left = redis.call('HINCRBY', key, field, -by)
  if left <= 0 then redis.call('HDEL', key, field) end
end

-- One command over a list of arguments of any length (Lua's unpack has a stack limit).
local function over(command, key, head, list)
  for first = 1, #list, 1000 do
    local args = {key}
    for _, v in ipairs(head) do args[#args + 1] = v end
    for i = first, math.min(first + 999, #list) do args[#args + 1] = list[i] end
    redis.call(command, unpack(args))
  end
end

-- Lower the counters of hash `key` by `changes` (field -> amount); fields at zero go.
-- One read and at most two writes, however many fields: a write inside a function costs
-- Redis about three times a read (it is also appended to the AOF).
local function shrink_all(key, changes)
  local fields = {}
  for field in pairs(changes) do fields[#fields + 1] = field end
  local held = redis.call('HMGET', key, unpack(fields))
  local left, gone = {}, {}
  for i, field in ipairs(fields) do
    local value = num(held[i]) - changes[field]
    if value > 0 then
      left[#left + 1] = field
      left[#left + 1] = value
    else
      gone[#gone + 1] = field
    end
  end
  if #left > 0 then redis.call('HSET', key, unpack(left)) end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
end

-- The expiry index P.exp (R\0seq scored by ts) gets one ZADD and one ZREM per call
-- (`call` below flushes them; `expire` first), not one each per envelope.
local index_add, index_drop = {}, {}

local function flush_index()
  for P, list in pairs(index_add) do over('ZADD', P .. 'exp', {}, list) end
  for P, list in pairs(index_drop) do over('ZREM', P .. 'exp', {}, list) end
  index_add, index_drop = {}, {}
end

local function index_later(into, P, ...)
  local list = into[P]
  if not list then
    list = {}
    into[P] = list
  end
  for _, v in ipairs({...}) do list[#list + 1] = v end
end

-- The P.total hash (n queued envelopes, b bytes held, sp spooled bytes) is read once and
-- written once per call, however many operations of the call change it: the call is
-- atomic anyway, and those were three commands per envelope. `ledgers` is reset by
-- `call` (below), which wraps every registered function.
local ledgers = {}

local function ledger(P)
  local l = ledgers[P]
  if not l then
    local t = redis.call('HMGET', P .. 'total', 'n', 'b', 'sp')
    l = {base = {n = num(t[1]), b = num(t[2]), sp = num(t[3])}, delta = {n = 0, b = 0, sp = 0}}
    ledgers[P] = l
  end
  return l
end

local function total_of(P, field)
  local l = ledger(P)
  return l.base[field] + l.delta[field]
end

local function total_add(P, field, by)
  local l = ledger(P)
  l.delta[field] = l.delta[field] + by
end

local function settle_totals()
  for P, l in pairs(ledgers) do
    for field, by in pairs(l.delta) do
      if by ~= 0 then redis.call('HINCRBY', P .. 'total', field, by) end
    end
  end
  ledgers = {}
end

-- A registered function: its operation, then the totals it changed written back (also
-- when it failed half-way: what it wrote stays written, so its counts must too).
local function call(fn)
  return function(keys, a)
    ledgers, index_add, index_drop = {}, {}, {}
    local ok, res = pcall(fn, keys, a)
    settle_totals()
    flush_index()
    if not ok then error(res, 0) end
    return res
  end
end

-- Tell the other relays holding a session of `rcpt` that something is queued for it.
local function announce(P, rcpt, me, message)
  for _, relay in ipairs(redis.call('SMEMBERS', P .. 'on:' .. rcpt)) do
    if relay ~= me then
      redis.call('PUBLISH', P .. 'wake:' .. rcpt, message())
      return
    end
  end
end

local function presence(keys, a)
  local P, me, handle, on = a[1], a[2], a[3], a[4]
  if on == '1' then
    redis.call('SADD', P .. 'on:' .. handle, me)
    redis.call('SADD', P .. 'live:' .. me, handle)
  else
    redis.call('SREM', P .. 'on:' .. handle, me)
    redis.call('SREM', P .. 'live:' .. me, handle)
  end
  return 1
end

-- A relay (re)starting under its name: the sessions it had are gone.
local function presence_reset(keys, a)
  local P, me = a[1], a[2]
  local handles = redis.call('SMEMBERS', P .. 'live:' .. me)
  for _, handle in ipairs(handles) do redis.call('SREM', P .. 'on:' .. handle, me) end
  redis.call('DEL', P .. 'live:' .. me)
  return #handles
end

-- ------------------------------------------------------------ identities

local function bind(keys, a)
  local P, handle, identity = a[1], a[2], a[3]
  if redis.call('HSETNX', P .. 'h', handle, identity) == 1 then return 'new' end
  if redis.call('HGET', P .. 'h', handle) == identity then return 'match' end
  return 'mismatch'
end

-- ------------------------------------------------------------ envelopes

local function enqueue(keys, a)
  local P, rcpt, sender, msg, body, seq, ts, ttl_ms = a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]
  local quota, quota_bytes, share, share_bytes, cap, me =
    tonumber(a[9]), tonumber(a[10]), tonumber(a[11]), tonumber(a[12]), tonumber(a[13]), a[14]
  if redis.call('HEXISTS', P .. 'h', rcpt) == 0 then return {'unknown_recipient'} end
  local dk = P .. 'd:' .. sender .. '\0' .. msg
  local qs = P .. 'qs:' .. rcpt
  local size = #body
  local held = redis.call('HMGET', qs, 'n', 'b', 'n:' .. sender, 'b:' .. sender)
  local refused = nil
  if num(held[1]) + 1 > quota or num(held[2]) + size > quota_bytes then
    refused = 'quota_exceeded'
  elseif num(held[3]) + 1 > share or num(held[4]) + size > share_bytes then
    refused = 'share_exceeded'
  elseif cap > 0 and total_of(P, 'b') + size > cap then
    refused = 'store_full'
  end
  -- A resent envelope that is stored already is a duplicate, even when a limit is hit now.
  if refused then
    if redis.call('EXISTS', dk) == 1 then return {'duplicate'} end
    return {refused}
  end
  if not redis.call('SET', dk, seq, 'NX', 'PX', ttl_ms) then return {'duplicate'} end
  local q = P .. 'q:' .. rcpt
  local id = redis.call('XADD', q, 'NOMKSTREAM', '*', 'q', seq, 's', sender, 'm', msg,
                        'b', body, 't', ts)
  if not id then  -- R's first envelope ever: its stream and consumer group
    redis.call('XGROUP', 'CREATE', q, 'relay', '0', 'MKSTREAM')
    id = redis.call('XADD', q, '*', 'q', seq, 's', sender, 'm', msg, 'b', body, 't', ts)
  end
  redis.call('HSET', P .. 'ix:' .. rcpt, seq, id .. ' ' .. size .. ' ' .. sender)
  redis.call('HSET', qs, 'n', num(held[1]) + 1, 'b', num(held[2]) + size,
             'n:' .. sender, num(held[3]) + 1, 'b:' .. sender, num(held[4]) + size)
  index_later(index_add, P, ts, rcpt .. '\0' .. seq)
  total_add(P, 'b', size)
  total_add(P, 'n', 1)
  announce(P, rcpt, me, function()
    return 'e' .. me .. '\0' .. seq .. '\0' .. ts .. '\0' .. sender .. '\0' .. msg .. '\0' .. body
  end)
  return {'stored', total_of(P, 'n')}
end

-- Remove queued envelopes of R (acked or expired), each command once for all of them;
-- how many were there.
local function unqueue(P, rcpt, seqs)
  local ix = P .. 'ix:' .. rcpt
  local ids, found, members, seen = {}, {}, {}, {}
  local changes = {n = 0, b = 0}
  for first = 1, #seqs, 1000 do
    local chunk = {}
    for i = first, math.min(first + 999, #seqs) do chunk[#chunk + 1] = seqs[i] end
    local rows = redis.call('HMGET', ix, unpack(chunk))
    for i, v in ipairs(rows) do
      local seq = chunk[i]
      if v and not seen[seq] then
        seen[seq] = true
        local id, size, sender = string.match(v, '^(%S+) (%d+) (.*)$')
        size = tonumber(size)
        ids[#ids + 1] = id
        found[#found + 1] = seq
        members[#members + 1] = rcpt .. '\0' .. seq
        changes.n = changes.n + 1
        changes.b = changes.b + size
        changes['n:' .. sender] = (changes['n:' .. sender] or 0) + 1
        changes['b:' .. sender] = (changes['b:' .. sender] or 0) + size
      end
    end
  end
  if #ids == 0 then return 0 end
  local q = P .. 'q:' .. rcpt
  over('XACK', q, {'relay'}, ids)
  over('XDEL', q, {}, ids)
  over('HDEL', ix, {}, found)
  for _, member in ipairs(members) do index_later(index_drop, P, member) end
  shrink_all(P .. 'qs:' .. rcpt, changes)
  total_add(P, 'n', -changes.n)
  total_add(P, 'b', -changes.b)
  return #ids
end

local function ack(keys, a)
  local P, rcpt = a[1], a[2]
  local seqs = {}
  for i = 3, #a do seqs[#seqs + 1] = a[i] end
  return {unqueue(P, rcpt, seqs), total_of(P, 'n')}
end

-- The oldest `limit` queued envelopes: deliveries still pending in the consumer group
-- (this relay's own, or a dead relay's: XAUTOCLAIM takes them over), then new ones
-- (XREADGROUP '>'). Stream order is arrival order.
local function pending(keys, a)
  local P, rcpt, me, limit = a[1], a[2], a[3], tonumber(a[4])
  local q = P .. 'q:' .. rcpt
  if redis.call('EXISTS', q) == 0 then return {} end
  local claimed = redis.call('XAUTOCLAIM', q, 'relay', me, 0, '0-0', 'COUNT', limit)
  local out = claimed[2]
  if #out < limit and claimed[1] == '0-0' then
    local fresh = redis.call('XREADGROUP', 'GROUP', 'relay', me, 'COUNT', limit - #out,
                             'STREAMS', q, '>')
    if fresh and fresh[1] then
      for _, entry in ipairs(fresh[1][2]) do table.insert(out, entry) end
    end
  end
  return out
end

local function envelopes(keys, a)
  local P, rcpt = a[1], a[2]
  local ix, q = P .. 'ix:' .. rcpt, P .. 'q:' .. rcpt
  local out = {}
  for i = 3, #a do
    local v = redis.call('HGET', ix, a[i])
    if v then
      local id = string.match(v, '^(%S+) ')
      local entry = redis.call('XRANGE', q, id, id)
      if entry[1] then table.insert(out, entry[1]) end
    end
  end
  return out
end

local function expire(keys, a)
  local P, cutoff, scan = a[1], a[2], tonumber(a[3])
  flush_index()  -- the envelopes queued earlier in this call
  local gone = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', '(' .. cutoff, 'LIMIT', 0, scan)
  local by_rcpt, order = {}, {}
  for _, member in ipairs(gone) do
    local rcpt, seq = string.match(member, '^(.-)%z(.*)$')
    if not by_rcpt[rcpt] then
      by_rcpt[rcpt] = {}
      order[#order + 1] = rcpt
    end
    table.insert(by_rcpt[rcpt], seq)
  end
  local dropped = 0
  for _, rcpt in ipairs(order) do dropped = dropped + unqueue(P, rcpt, by_rcpt[rcpt]) end
  over('ZREM', P .. 'exp', {}, gone)  -- also members whose envelope was gone already
  return {dropped, total_of(P, 'n')}
end

-- ------------------------------------------------------------ prekeys

local function put_bundle(keys, a)
  local P, handle, identity, signed, sig, now = a[1], a[2], a[3], a[4], a[5], a[6]
  redis.call('HSET', P .. 'b:' .. handle, 'identity', identity, 'signed', signed, 'sig', sig,
             'updated', now)
  local ot = P .. 'ot:' .. handle
  redis.call('DEL', ot)
  for i = 7, #a, 2 do redis.call('ZADD', ot, a[i], a[i + 1]) end
  return redis.call('ZCARD', ot)
end

local function take_bundle(keys, a)
  local P, handle = a[1], a[2]
  local b = redis.call('HMGET', P .. 'b:' .. handle, 'identity', 'signed', 'sig')
  if not b[1] then return false end
  local ot = P .. 'ot:' .. handle
  local popped = redis.call('ZPOPMIN', ot)
  local key = false
  if popped[1] then key = popped[1] end
  return {b[1], b[2], b[3], key, redis.call('ZCARD', ot)}
end

-- ------------------------------------------------------------ file streams and spool

local function unspool(P, rcpt, fid)
  local spd = P .. 'spd:' .. rcpt
  local size = redis.call('HSTRLEN', spd, fid)
  local meta = redis.call('HGET', P .. 'spm:' .. rcpt, fid)
  if not meta then return false end
  local sender = string.match(meta, '^%S+ %S+ (.*)$')
  local stream = string.sub(fid, 1, 16)
  redis.call('HDEL', spd, fid)
  redis.call('HDEL', P .. 'spm:' .. rcpt, fid)
  redis.call('ZREM', P .. 'sp:' .. rcpt, fid)
  redis.call('ZREM', P .. 'spx', rcpt .. '\0' .. fid)
  redis.call('SREM', P .. 'fsf:' .. stream, rcpt .. '\0' .. fid)
  local sq = P .. 'sq:' .. rcpt
  shrink(sq, 'b', size)
  shrink(sq, 'b:' .. sender, size)
  total_add(P, 'b', -size)
  total_add(P, 'sp', -size)
  return true
end

local function close(P, stream)
  local fk = P .. 'fs:' .. stream
  local opener = redis.call('HGET', fk, 'a')
  redis.call('DEL', fk)
  redis.call('ZREM', P .. 'fsx', stream)
  if opener then redis.call('ZREM', P .. 'fo:' .. opener, stream) end
  local count = 0
  for _, member in ipairs(redis.call('SMEMBERS', P .. 'fsf:' .. stream)) do
    local rcpt, fid = string.match(member, '^(.-)%z(.*)$')
    if unspool(P, rcpt, fid) then count = count + 1 end
  end
  redis.call('DEL', P .. 'fsf:' .. stream)
  return count
end

local function extend(P, stream, opener, expires)
  local fk = P .. 'fs:' .. stream
  redis.call('HSET', fk, 'expires', expires)
  redis.call('ZADD', P .. 'fsx', expires, stream)
  -- fo:<opener> holds the streams that count toward the opener's open streams: not an
  -- ended group upload (see end_upload)
  if redis.call('HEXISTS', fk, 'ended') == 0 then
    redis.call('ZADD', P .. 'fo:' .. opener, expires, stream)
  end
end

-- An ended group upload's registration goes with its last spooled copy.
local function drop_if_drained(P, stream)
  if redis.call('HEXISTS', P .. 'fs:' .. stream, 'ended') == 1
      and redis.call('SCARD', P .. 'fsf:' .. stream) == 0 then
    close(P, stream)
    return 1
  end
  return 0
end

local function register_stream(keys, a)
  local P, stream, ea, eb, now, expires, max = a[1], a[2], a[3], a[4], tonumber(a[5]),
    tonumber(a[6]), tonumber(a[7])
  local fk = P .. 'fs:' .. stream
  local st = redis.call('HMGET', fk, 'a', 'b', 'expires')
  if st[1] then
    if tonumber(st[3]) > now then
      if st[1] ~= ea or st[2] ~= eb then return 'taken' end
      redis.call('HDEL', fk, 'ended')  -- opened again (a resumed upload): it counts again
      extend(P, stream, ea, math.max(expires, tonumber(st[3])))
      return 'same'
    end
    close(P, stream)
  end
  if redis.call('ZCOUNT', P .. 'fo:' .. ea, '(' .. now, '+inf') >= max then return 'too_many' end
  redis.call('HSET', fk, 'a', ea, 'b', eb, 'created', now, 'expires', expires)
  extend(P, stream, ea, expires)
  return 'new'
end

local function file_stream(keys, a)
  local P, stream, now = a[1], a[2], tonumber(a[3])
  local st = redis.call('HMGET', P .. 'fs:' .. stream, 'a', 'b', 'created', 'expires')
  if not st[1] or tonumber(st[4]) <= now then return false end
  return st
end

local function file_streams(keys, a)
  local P, now = a[1], a[2]
  local out = {}
  for _, stream in ipairs(redis.call('ZRANGEBYSCORE', P .. 'fsx', '(' .. now, '+inf')) do
    local st = redis.call('HMGET', P .. 'fs:' .. stream, 'a', 'b', 'created', 'expires')
    if st[1] then
      table.insert(out, {stream, st[1], st[2], st[3], st[4]})
    end
  end
  return out
end

local function end_upload(keys, a)
  local P, stream = a[1], a[2]
  local fk = P .. 'fs:' .. stream
  local opener = redis.call('HGET', fk, 'a')
  if not opener then return 0 end
  redis.call('HSET', fk, 'ended', 1)
  redis.call('ZREM', P .. 'fo:' .. opener, stream)
  return drop_if_drained(P, stream)
end

local function close_stream(keys, a)
  local P = a[1]
  local count = close(P, a[2])
  return {count, total_of(P, 'sp')}
end

local function spool(keys, a)
  local P, rcpt, stream, fid, data = a[1], a[2], a[3], a[4], a[5]
  local now, expires, quota_bytes, share_bytes, cap, me =
    tonumber(a[6]), tonumber(a[7]), tonumber(a[8]), tonumber(a[9]), tonumber(a[10]), a[11]
  local fk = P .. 'fs:' .. stream
  local st = redis.call('HMGET', fk, 'a', 'b', 'expires')
  if not st[1] or tonumber(st[3]) <= now then return {'unknown_stream'} end
  if expires > tonumber(st[3]) then extend(P, stream, st[1], expires) end
  local sender = st[1]
  if st[1] == rcpt then sender = st[2] end
  if redis.call('HEXISTS', P .. 'spm:' .. rcpt, fid) == 1 then return {'duplicate'} end
  local sq = P .. 'sq:' .. rcpt
  local size = #data
  local held = redis.call('HMGET', sq, 'b', 'b:' .. sender)
  if num(held[1]) + size > quota_bytes then return {'quota_exceeded'} end
  if num(held[2]) + size > share_bytes then return {'share_exceeded'} end
  if cap > 0 and total_of(P, 'b') + size > cap then return {'store_full'} end
  local row = redis.call('INCR', P .. 'sprow')
  redis.call('ZADD', P .. 'sp:' .. rcpt, row, fid)
  redis.call('HSET', P .. 'spd:' .. rcpt, fid, data)
  redis.call('HSET', P .. 'spm:' .. rcpt, fid, row .. ' ' .. expires .. ' ' .. sender)
  redis.call('ZADD', P .. 'spx', expires, rcpt .. '\0' .. fid)
  redis.call('SADD', P .. 'fsf:' .. stream, rcpt .. '\0' .. fid)
  redis.call('HINCRBY', sq, 'b', size)
  redis.call('HINCRBY', sq, 'b:' .. sender, size)
  total_add(P, 'b', size)
  total_add(P, 'sp', size)
  announce(P, rcpt, me, function() return 's' .. me end)
  return {'stored', row, total_of(P, 'sp')}
end

-- Frames after row `after` not yet expired, in row order; `top` is the last row handed out
-- (read in the same atomic step, so a short page holds every row up to it).
local function spool_page(keys, a)
  local P, rcpt, after, limit, now = a[1], a[2], a[3], tonumber(a[4]), tonumber(a[5])
  local sp, spd, spm = P .. 'sp:' .. rcpt, P .. 'spd:' .. rcpt, P .. 'spm:' .. rcpt
  local out = {}
  local cursor = '(' .. after
  while #out < limit do
    local rows = redis.call('ZRANGEBYSCORE', sp, cursor, '+inf', 'WITHSCORES', 'LIMIT', 0, limit)
    if #rows == 0 then break end
    for i = 1, #rows, 2 do
      local fid, row = rows[i], rows[i + 1]
      cursor = '(' .. row
      local meta = redis.call('HGET', spm, fid)
      local exp = tonumber(string.match(meta, '^%S+ (%S+) '))
      if exp > now and #out < limit then
        table.insert(out, {row, fid, redis.call('HGET', spd, fid)})
      end
    end
  end
  return {num(redis.call('GET', P .. 'sprow')), out}
end

local function spool_ack(keys, a)
  local P, rcpt = a[1], a[2]
  local count = 0
  for i = 3, #a do
    if unspool(P, rcpt, a[i]) then count = count + 1 end
  end
  if count > 0 then drop_if_drained(P, string.sub(a[3], 1, 16)) end
  return {count, total_of(P, 'sp')}
end

local function expire_spool(keys, a)
  local P, now, scan = a[1], a[2], tonumber(a[3])
  local dropped = 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', P .. 'spx', '-inf', now,
                                     'LIMIT', 0, scan)) do
    local rcpt, fid = string.match(member, '^(.-)%z(.*)$')
    if unspool(P, rcpt, fid) then dropped = dropped + 1 end
    redis.call('ZREM', P .. 'spx', member)
  end
  local gone = redis.call('ZRANGEBYSCORE', P .. 'fsx', '-inf', now, 'LIMIT', 0, scan)
  for _, stream in ipairs(gone) do dropped = dropped + close(P, stream) end
  return {dropped, gone, total_of(P, 'sp')}
end

local function totals(keys, a)
  return {total_of(a[1], 'n'), total_of(a[1], 'sp')}
end

-- Many operations in one call (the store's pipeline: one fsync and one reply for all):
-- ARGV is name, argc, args... per operation; the reply has one entry per operation, an
-- error entry for one that failed (the others still run, in order).
local OPERATIONS = {
  qs_bind = bind, qs_enqueue = enqueue, qs_ack = ack, qs_pending = pending,
  qs_envelopes = envelopes, qs_expire = expire, qs_put_bundle = put_bundle,
  qs_take_bundle = take_bundle, qs_register_stream = register_stream,
  qs_file_streams = file_streams, qs_file_stream = file_stream, qs_close_stream = close_stream,
  qs_end_upload = end_upload,
  qs_spool = spool, qs_spool_page = spool_page, qs_spool_ack = spool_ack,
  qs_expire_spool = expire_spool, qs_totals = totals, qs_presence = presence,
  qs_presence_reset = presence_reset,
}

local function batch(keys, a)
  local out = {}
  local i, n = 1, 0
  while i <= #a do
    local fn, argc = OPERATIONS[a[i]], tonumber(a[i + 1])
    local args = {}
    for j = 1, argc do args[j] = a[i + 1 + j] end
    n = n + 1
    if not fn then
      out[n] = {err = 'ERR unknown relay operation ' .. a[i]}
    else
      local ok, res = pcall(fn, keys, args)
      if ok then
        out[n] = res
      elseif type(res) == 'table' and res.err then
        out[n] = res
      else
        out[n] = {err = 'ERR ' .. tostring(res)}
      end
    end
    i = i + 2 + argc
  end
  return out
end

redis.register_function('qs_batch', call(batch))
redis.register_function('qs_bind', call(bind))
redis.register_function('qs_enqueue', call(enqueue))
redis.register_function('qs_ack', call(ack))
redis.register_function('qs_pending', call(pending))
redis.register_function('qs_envelopes', call(envelopes))
redis.register_function('qs_expire', call(expire))
redis.register_function('qs_put_bundle', call(put_bundle))
redis.register_function('qs_take_bundle', call(take_bundle))
redis.register_function('qs_register_stream', call(register_stream))
redis.register_function('qs_file_streams', call(file_streams))
redis.register_function('qs_file_stream', call(file_stream))
redis.register_function('qs_close_stream', call(close_stream))
redis.register_function('qs_end_upload', call(end_upload))
redis.register_function('qs_spool', call(spool))
redis.register_function('qs_spool_page', call(spool_page))
redis.register_function('qs_spool_ack', call(spool_ack))
redis.register_function('qs_expire_spool', call(expire_spool))
redis.register_function('qs_totals', call(totals))
redis.register_function('qs_presence', call(presence))
redis.register_function('qs_presence_reset', call(presence_reset))
"""
