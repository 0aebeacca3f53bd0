-- Runtime backend state for nginx upstreams (keelson.stack.nginx role).
--
-- The state file of each upstream, /etc/nginx/keelson/upstreams/NAME.conf, stays the
-- source of truth: its `server HOST:PORT [weight=N] max_fails=N fail_timeout=Ns [down];`
-- lines are loaded into the shared dict by init() whenever nginx reads its
-- configuration (start, reload, `nginx -t`, so a line it cannot read fails the
-- validation). keelson.stack.nginx_upstream rewrites the file first, then tells the
-- control endpoint (a unix socket only root can reach), which changes the dict: no
-- reload, no connection closed. Workers of every generation share the dict.
--
-- Shared dict keys (NAME = upstream, ADDR = HOST:PORT):
--   u:NAME          the backends, one "ADDR weight max_fails fail_timeout up|down" per line
--   v:NAME          version, bumped on every change (workers re-read u:NAME when it moves)
--   s:NAME:ADDR     up | down, read on every pick (after the in-flight count is raised)
--   i:NAME:ADDR     requests in flight to ADDR (raised before the pick is final, lowered
--                   when the attempt ends): the drain's proof
--   f:NAME:ADDR     failed attempts within fail_timeout (passive health, as max_fails)
--   x:NAME:ADDR     set for fail_timeout once max_fails attempts failed: skipped
local balancer = require("ngx.balancer")

local M = {}
local DICT_NAME = "keelson_upstreams"
local cache = {}        -- per worker: NAME -> {version, peers, current weights}
local failure_status = {}

local function dict()
    return ngx.shared[DICT_NAME]
end

local ADDR = "^(%d+%.%d+%.%d+%.%d+):(%d+)$"

-- Parses one state file. Returns a list of peers or nil, error.
function M.parse(text)
    local peers, seen = {}, {}
    local number = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        number = number + 1
        local body = line:gsub("#.*$", "")
        if body:match("%S") then
            local addr, params = body:match("^%s*server%s+(%S+)(.-);%s*$")
            if not addr then
                return nil, "line " .. number .. ": not a server line: " .. line
            end
            local host, port = addr:match(ADDR)
            if not host then
                return nil, "line " .. number .. ": the runtime balancer needs IPv4:PORT, got " .. addr
            end
            if seen[addr] then
                return nil, "line " .. number .. ": " .. addr .. " listed twice"
            end
            seen[addr] = true
            local peer = {addr = addr, host = host, port = tonumber(port), weight = 1, max_fails = 1,
                          fail_timeout = 10, state = "up"}
            for word in params:gmatch("%S+") do
                local key, value = word:match("^([%w_]+)=(%S+)$")
                if word == "down" then
                    peer.state = "down"
                elseif key == "weight" and value:match("^%d+$") then
                    peer.weight = tonumber(value)
                elseif key == "max_fails" and value:match("^%d+$") then
                    peer.max_fails = tonumber(value)
                elseif key == "fail_timeout" and value:match("^%d+s?$") then
                    peer.fail_timeout = tonumber((value:gsub("s$", "")))
                else
                    return nil, "line " .. number .. ": unknown parameter " .. word
                end
            end
            if peer.weight < 1 then
                return nil, "line " .. number .. ": weight must be at least 1"
            end
            peers[#peers + 1] = peer
        end
    end
    return peers
end

local function serialize(peers)
    local lines = {}
    for _, p in ipairs(peers) do
        lines[#lines + 1] = table.concat({p.addr, p.weight, p.max_fails, p.fail_timeout, p.state}, " ")
    end
    return table.concat(lines, "\n")
end

local function deserialize(text)
    local peers = {}
    for addr, weight, max_fails, fail_timeout, state in
            (text or ""):gmatch("(%S+) (%d+) (%d+) (%d+) (%a+)") do
        local host, port = addr:match(ADDR)
        peers[#peers + 1] = {addr = addr, host = host, port = tonumber(port), weight = tonumber(weight),
                             max_fails = tonumber(max_fails), fail_timeout = tonumber(fail_timeout),
                             state = state}
    end
    return peers
end

local function store(name, peers)
    local d = dict()
    assert(d:set("u:" .. name, serialize(peers)))
    for _, p in ipairs(peers) do
        assert(d:set("s:" .. name .. ":" .. p.addr, p.state))
    end
    d:incr("v:" .. name, 1, 0)
end

-- init_by_lua: load every runtime upstream's state file. Counters (in flight, failures)
-- are kept: after a reload, old workers still finish their requests.
function M.init(dir, names, statuses)
    for _, status in ipairs(statuses or {}) do
        failure_status[status] = true
    end
    for _, name in ipairs(names) do
        local path = dir .. "/" .. name .. ".conf"
        local handle, err = io.open(path, "r")
        if not handle then
            error("keelson upstream " .. name .. ": " .. tostring(err))
        end
        local text = handle:read("*a")
        handle:close()
        local peers, perr = M.parse(text)
        if not peers then
            error("keelson upstream " .. name .. ": " .. path .. " " .. perr)
        end
        store(name, peers)
    end
end

local function peers_of(name)
    local d = dict()
    local version = d:get("v:" .. name)
    local entry = cache[name]
    if not entry or entry.version ~= version then
        entry = {version = version, peers = deserialize(d:get("u:" .. name)), current = {}}
        cache[name] = entry
    end
    return entry
end

local function leave(st)
    if st.open then
        dict():incr("i:" .. st.name .. ":" .. st.open.addr, -1, 0)
        st.open = nil
    end
end

local function failed(name, peer)
    if peer.max_fails == 0 then
        return
    end
    local d = dict()
    local key = name .. ":" .. peer.addr
    local count = d:incr("f:" .. key, 1, 0, peer.fail_timeout)
    if count and count >= peer.max_fails then
        d:set("x:" .. key, true, peer.fail_timeout)
        d:delete("f:" .. key)
        ngx.log(ngx.WARN, "keelson upstream ", name, ": ", peer.addr, " failed ", count,
                " time(s), skipped for ", peer.fail_timeout, "s")
    end
end

-- Smooth weighted round robin (as nginx's own) over the peers that may take the request.
local function pick(entry, candidates)
    local total, best = 0, nil
    for _, p in ipairs(candidates) do
        local cw = (entry.current[p.addr] or 0) + p.weight
        entry.current[p.addr] = cw
        total = total + p.weight
        if not best or cw > entry.current[best.addr] then
            best = p
        end
    end
    entry.current[best.addr] = entry.current[best.addr] - total
    return best
end

-- balancer_by_lua: called for the first attempt and for every retry nginx decides on
-- (proxy_next_upstream, which never retries a non-idempotent request).
function M.balance(name, tries)
    local d = dict()
    local ctx = ngx.ctx
    local st = ctx.keelson_upstream
    if not st then
        st = {name = name, tried = {}, attempts = 0}
        ctx.keelson_upstream = st
    else
        -- a retry: the previous attempt ended in failure
        local previous = st.open
        leave(st)
        if previous then
            failed(name, previous)
        end
    end
    local entry = peers_of(name)
    for _ = 1, #entry.peers do
        local up, healthy = {}, {}
        for _, p in ipairs(entry.peers) do
            if not st.tried[p.addr] and d:get("s:" .. name .. ":" .. p.addr) == "up" then
                up[#up + 1] = p
                if not d:get("x:" .. name .. ":" .. p.addr) then
                    healthy[#healthy + 1] = p
                end
            end
        end
        -- as nginx: skip failed peers, unless every peer left has failed
        local candidates = #healthy > 0 and healthy or up
        if #candidates == 0 then
            ngx.log(ngx.ERR, "keelson upstream ", name, ": no backend is up")
            return ngx.exit(502)
        end
        local peer = pick(entry, candidates)
        -- Count the request in flight first, then check the state again: a drain sets
        -- `down` first and then reads the count, so one of the two sees the other.
        d:incr("i:" .. name .. ":" .. peer.addr, 1, 0)
        st.open = peer
        if d:get("s:" .. name .. ":" .. peer.addr) == "up" then
            st.tried[peer.addr] = true
            st.attempts = st.attempts + 1
            local ok, err = balancer.set_current_peer(peer.host, peer.port)
            if not ok then
                leave(st)
                ngx.log(ngx.ERR, "keelson upstream ", name, ": ", err)
                return ngx.exit(500)
            end
            if st.attempts == 1 then
                local more = #candidates - 1
                if tries > 0 and tries - 1 < more then
                    more = tries - 1
                end
                if more > 0 then
                    balancer.set_more_tries(more)
                end
            end
            return
        end
        leave(st)   -- drained between the two reads: pick again
    end
    ngx.log(ngx.ERR, "keelson upstream ", name, ": no backend is up")
    return ngx.exit(502)
end

-- log_by_lua: the last attempt has ended; count it as failed as nginx would.
function M.log()
    local st = ngx.ctx.keelson_upstream
    if not st or not st.open then
        return
    end
    local peer = st.open
    leave(st)
    local statuses = ngx.var.upstream_status or ""
    local last = statuses:match("(%d+)%s*$")
    if last and failure_status[tonumber(last)] then
        failed(st.name, peer)
    end
end

-- The control endpoint -------------------------------------------------------------

local function json_string(value)
    return '"' .. tostring(value):gsub('[%c"\\]', function(c)
        return string.format("\\u%04x", c:byte())
    end) .. '"'
end

local function describe(name)
    local d = dict()
    local items = {}
    for _, p in ipairs(deserialize(d:get("u:" .. name))) do
        local key = name .. ":" .. p.addr
        items[#items + 1] = string.format(
            '%s: {"state": %s, "weight": %d, "in_flight": %d, "failures": %d, "skipped": %s}',
            json_string(p.addr), json_string(d:get("s:" .. key) or p.state), p.weight,
            math.max(0, d:get("i:" .. key) or 0), d:get("f:" .. key) or 0,
            d:get("x:" .. key) and "true" or "false")
    end
    return string.format('{"upstream": %s, "version": %d, "backends": {%s}}',
                         json_string(name), d:get("v:" .. name) or 0, table.concat(items, ", "))
end

local function answer(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(body)
    return ngx.exit(status)
end

local function refuse(status, message)
    return answer(status, '{"error": ' .. json_string(message) .. '}')
end

-- GET  /upstreams/NAME                         the runtime state
-- POST /upstreams/NAME  backend=ADDR&state=up|down&weight=N (form-encoded, each but
--                       backend optional): change one backend, answer its new state
function M.control(max_weight)
    local name = ngx.var.uri:match("^/upstreams/([%w_%-]+)$")
    if not name then
        return refuse(404, "use /upstreams/NAME")
    end
    local d = dict()
    if not d:get("u:" .. name) then
        return refuse(404, "unknown upstream " .. name)
    end
    local method = ngx.req.get_method()
    if method == "GET" then
        return answer(200, describe(name))
    elseif method ~= "POST" then
        return refuse(405, "GET or POST")
    end
    ngx.req.read_body()
    if not ngx.req.get_body_data() and ngx.req.get_body_file() then
        return refuse(413, "body too large")
    end
    local args, err = ngx.req.get_post_args(8)
    if not args or err then
        return refuse(400, "form-encoded body expected (at most 8 fields): " .. tostring(err))
    end
    for key, value in pairs(args) do
        if (key ~= "backend" and key ~= "state" and key ~= "weight") or type(value) ~= "string" then
            return refuse(400, "unknown or repeated field " .. tostring(key))
        end
    end
    local addr, state, weight = args.backend, args.state, args.weight
    if not addr or not addr:match(ADDR) then
        return refuse(400, "backend=IPv4:PORT expected")
    end
    if state and state ~= "up" and state ~= "down" then
        return refuse(400, "state must be up or down")
    end
    if weight then
        if not weight:match("^%d+$") or tonumber(weight) < 1 or tonumber(weight) > max_weight then
            return refuse(400, "weight must be an integer from 1 to " .. max_weight)
        end
        weight = tonumber(weight)
    end
    local peers = deserialize(d:get("u:" .. name))
    local found
    for _, p in ipairs(peers) do
        if p.addr == addr then
            found = p
        end
    end
    if not found then
        return refuse(404, "backend " .. addr .. " is not in upstream " .. name)
    end
    found.state = state or d:get("s:" .. name .. ":" .. addr) or found.state
    found.weight = weight or found.weight
    store(name, peers)
    ngx.log(ngx.NOTICE, "keelson upstream ", name, ": ", addr, " set to ", found.state,
            " weight ", found.weight, " at runtime")
    return answer(200, describe(name))
end

return M
