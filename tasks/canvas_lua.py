"""The Lua a child's publish script runs for its canvas (tasks/canvas.py explains).

Kept apart, with no imports, so tasks/events.py splices it in without importing the
canvas module.
"""

from __future__ import annotations

# The part every script that ends a canvas shares: each child not yet over is cancelled
# (waiting: now, its place in line given up; running: flagged, it stops at its next step).
END_CHILDREN_LUA = """
local function line_moved(base, jobid)
  local ticket = redis.call('ZSCORE', base .. 'queue', jobid)
  if not ticket then return end
  redis.call('ZREM', base .. 'queue', jobid)
  local version = redis.call('INCR', base .. 'queue:version')
  local avg = redis.call('HGET', base .. 'stats', 'avgMs') or '-'
  redis.call('PUBLISH', base .. 'queue', version .. ' ' .. ticket .. ' ' ..
    redis.call('ZCARD', base .. 'queue') .. ' ' .. redis.call('ZCARD', base .. 'running') .. ' ' .. avg)
end
local function end_children(pjob, pid, reason, now, maxlen, ttl)
  local n = tonumber(redis.call('HGET', pjob, 'children') or '0')
  for i = 0, n - 1 do
    local cjob = pjob .. '.' .. i
    local cstate = redis.call('HGET', cjob, 'state')
    if cstate == 'queued' then
      local data = '{"reason":"' .. reason .. '"}'
      local id = redis.call('XADD', cjob .. ':events', 'MAXLEN', '~', maxlen, '*',
        'phase', 'cancelled', 'data', data)
      redis.call('HSET', cjob, 'state', 'cancelled', 'finishedAt', now, 'updated', now,
        'lastEventId', id, 'last:cancelled', data)
      redis.call('EXPIRE', cjob, ttl)
      redis.call('EXPIRE', cjob .. ':events', ttl)
      redis.call('PUBLISH', cjob, frame(id, 'cancelled', data))
      redis.call('HSET', pjob, 'c:' .. i .. ':state', 'cancelled')
      local base = redis.call('HGET', pjob, 'c:' .. i .. ':line')
      if base then line_moved(base, pid .. '.' .. i) end
    elseif cstate == 'running' then
      redis.call('HSET', cjob, 'cancel', '1')
    end
  end
end
"""

# The parent's part of a child's publish (spliced into PUBLISH_LUA, tasks/events.py).
# Locals it uses there: phase, data, now, maxlen, ttl, jobid; KEYS[7] the parent hash,
# KEYS[8] its events; ARGV[14] the parent id, ARGV[15] the child's index.
PARENT_LUA = """
if KEYS[7] and builtin == '1' then
  local pjob, pevents, pid, ci = KEYS[7], KEYS[8], ARGV[14], ARGV[15]
  local pstate = redis.call('HGET', pjob, 'state')
  if pstate == 'queued' or pstate == 'running' then
    local c = 'c:' .. ci .. ':'
    local function pevent(pphase, pdata, keep)
      local pidd = redis.call('XADD', pevents, 'MAXLEN', '~', maxlen, '*', 'phase', pphase, 'data', pdata)
      local pf = {'updated', now, 'lastEventId', pidd}
      if keep then table.insert(pf, 'last:' .. pphase); table.insert(pf, pdata) end
      redis.call('HSET', pjob, unpack(pf))
      redis.call('EXPIRE', pjob, ttl)
      redis.call('EXPIRE', pevents, ttl)
      redis.call('PUBLISH', pjob, frame(pidd, pphase, pdata))
      if pphase == 'done' or pphase == 'failed' or pphase == 'cancelled' then
        local idem = redis.call('HGET', pjob, 'idem')  -- kept as long as the canvas
        if idem then redis.call('EXPIRE', idem, ttl) end
      end
    end
    local function with_child(d)
      if d == '{}' then return '{"child":"' .. jobid .. '"}' end
      return string.sub(d, 1, -2) .. ',"child":"' .. jobid .. '"}'
    end
    local function child_state(s)
      redis.call('HSET', pjob, c .. 'state', s)
      pevent('child', '{"child":"' .. jobid .. '","index":' .. ci .. ',"state":"' .. s .. '"}', false)
    end
    local function raise_to(pct)
      local old = tonumber(redis.call('HGET', pjob, c .. 'pct') or '0')
      if pct <= old then return end
      redis.call('HSET', pjob, c .. 'pct', pct)
      local w = tonumber(redis.call('HGET', pjob, c .. 'w') or '1')
      local sum = tonumber(redis.call('HINCRBY', pjob, 'sum', w * (pct - old)))
      local whole = math.floor(sum / tonumber(redis.call('HGET', pjob, 'wsum')))
      if whole > tonumber(redis.call('HGET', pjob, 'pct') or '0') then
        redis.call('HSET', pjob, 'pct', whole)
        pevent('progress', '{"percent":' .. whole .. ',"child":"' .. jobid .. '"}', true)
      end
    end
    if phase == 'started' then
      if pstate == 'queued' then
        redis.call('HSET', pjob, 'state', 'running', 'startedAt', now)
        pevent('started', '{"child":"' .. jobid .. '"}', true)
      end
      child_state('running')
    elseif phase == 'progress' then
      local ok, decoded = pcall(cjson.decode, data)
      local pct = ok and type(decoded) == 'table' and tonumber(decoded.percent)
      if pct then raise_to(math.max(0, math.min(100, math.floor(pct)))) end
    elseif phase == 'preview' then
      pevent('preview', with_child(data), true)
    elseif phase == 'done' then
      redis.call('HSET', pjob, c .. 'res', data)
      child_state('succeeded')
      raise_to(100)
      for d in string.gmatch(redis.call('HGET', pjob, c .. 'next') or '', '[0-9]+') do
        local dc = 'c:' .. d .. ':'
        if redis.call('HINCRBY', pjob, dc .. 'deps', -1) == 0 then
          -- The dependent's turn: into its line and onto its Celery queue, now.
          local djob, did = pjob .. '.' .. d, pid .. '.' .. d
          local base = redis.call('HGET', pjob, dc .. 'line')
          if redis.call('HGET', djob, 'state') == 'queued' then
            local t = redis.call('INCR', base .. 'queue:ticket')
            redis.call('ZADD', base .. 'queue', t, did)
            local pos = redis.call('ZRANK', base .. 'queue', did) + 1
            local qdata = '{"jobId":"' .. did .. '","position":' .. pos .. ',"queueLength":' ..
              redis.call('ZCARD', base .. 'queue') .. '}'
            local qid = redis.call('XADD', djob .. ':events', 'MAXLEN', '~', maxlen, '*',
              'phase', 'queued', 'data', qdata)
            redis.call('HSET', djob, 'ticket', t, 'updated', now, 'lastEventId', qid, 'last:queued', qdata)
            redis.call('EXPIRE', djob, ttl)
            redis.call('EXPIRE', djob .. ':events', ttl)
            redis.call('PUBLISH', djob, frame(qid, 'queued', qdata))
            redis.call('LPUSH', redis.call('HGET', pjob, dc .. 'list'), redis.call('HGET', pjob, dc .. 'msg'))
          end
        end
      end
      if redis.call('HINCRBY', pjob, 'left', -1) == 0 then
        local n = tonumber(redis.call('HGET', pjob, 'children'))
        local results, ids = {}, {}
        for i = 0, n - 1 do
          table.insert(results, redis.call('HGET', pjob, 'c:' .. i .. ':res') or 'null')
          table.insert(ids, '"' .. pid .. '.' .. i .. '"')
        end
        local ddata = '{"results":[' .. table.concat(results, ',') .. '],"children":[' ..
          table.concat(ids, ',') .. ']}'
        redis.call('HSET', pjob, 'state', 'succeeded', 'finishedAt', now)
        pevent('done', ddata, true)
      end
    elseif phase == 'failed' or phase == 'cancelled' then
      child_state(phase == 'failed' and 'failed' or 'cancelled')
      redis.call('HSET', pjob, 'state', phase, 'finishedAt', now)
      pevent(phase, with_child(data), true)
      local why = 'child ' .. jobid .. ' ' .. (phase == 'failed' and 'failed' or 'was cancelled')
      end_children(pjob, pid, why, now, maxlen, ttl)
    end
  end
end
"""
