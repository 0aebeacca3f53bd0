-- A stand-in for the parts of lua-nginx-module that roles/nginx/files/keelson_upstreams.lua
-- and roles/monitoring/files/keelson_edge.lua use, so that tests/unit/test_keelson_upstreams_lua.py
-- and test_keelson_edge_lua.py can run those files in LuaJIT (lupa) without nginx. Each
-- function follows lua-nginx-module's documented behaviour:
--   ngx.shared.DICT:get/set/incr/delete  values expire after their exptime (a fake clock,
--                                        moved by stub.advance); incr(key, n, init, init_ttl)
--                                        creates a missing key as init + n with init_ttl
--   ngx.shared.DICT:get_keys(max)        the live keys, at most max (0: all)
--   ngx.req.get_post_args(max)           form-encoded body: a repeated key gives a table of
--                                        values, a key without "=" gives true, past max
--                                        arguments the rest is dropped and err is "truncated"
--   ngx.exit(status)                     ends the handler (raised here, caught by stub.run)
--   ngx.balancer                         records set_current_peer and set_more_tries
local stub = {now = 0, logs = {}, peers = {}, more_tries = {}}

local EXIT = {}

local Dict = {}
Dict.__index = Dict

function Dict:_live(key)
    local item = self.items[key]
    if item and item.expires and item.expires <= stub.now then
        self.items[key] = nil
        return nil
    end
    return item
end

function Dict:get(key)
    local item = self:_live(key)
    if item then
        return item.value
    end
    return nil
end

function Dict:set(key, value, exptime)
    if value == nil then
        self.items[key] = nil
    else
        self.items[key] = {value = value, expires = (exptime and exptime > 0) and stub.now + exptime or nil}
    end
    return true, nil, false
end

function Dict:delete(key)
    self.items[key] = nil
end

function Dict:get_keys(max)
    local keys = {}
    for key in pairs(self.items) do
        if max and max > 0 and #keys == max then
            break
        end
        if self:_live(key) then
            keys[#keys + 1] = key
        end
    end
    return keys
end

function Dict:incr(key, value, init, init_ttl)
    if stub.on_incr then
        stub.on_incr(key)   -- lets a test act between a worker's two reads (another process)
    end
    local item = self:_live(key)
    if not item then
        if init == nil then
            return nil, "not found"
        end
        self:set(key, init + value, init_ttl)
        return init + value
    end
    if type(item.value) ~= "number" then
        return nil, "not a number"
    end
    item.value = item.value + value
    return item.value
end

local function unescape(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function post_args(body, max)
    local args, count = {}, 0
    for pair in body:gmatch("[^&]+") do
        if count == max then
            return args, "truncated"
        end
        count = count + 1
        local key, value = pair:match("^([^=]*)=(.*)$")
        if key then
            key, value = unescape(key), unescape(value)
        else
            key, value = unescape(pair), true
        end
        if key ~= "" then
            local old = args[key]
            if old == nil then
                args[key] = value
            elseif type(old) == "table" then
                old[#old + 1] = value
            else
                args[key] = {old, value}
            end
        end
    end
    return args
end

function stub.reset()
    stub.now = 0
    stub.logs = {}
    stub.peers = {}
    stub.more_tries = {}
    stub.on_incr = nil
    ngx.shared = {keelson_upstreams = stub.dict()}
end

-- A new, empty shared dict (declare it with ngx.shared.NAME = stub.dict()).
function stub.dict()
    return setmetatable({items = {}}, Dict)
end

-- One request: `fn` runs as a handler with a fresh ngx.ctx (or `ctx`, to go on with the
-- same request); returns the status given to ngx.exit (nil if it returned) and the body.
-- request.var adds nginx variables to ngx.var (strings, as nginx gives them).
function stub.run(fn, request, ctx)
    request = request or {}
    local out = {}
    ngx.ctx = ctx or {}
    ngx.status = 0
    ngx.header = {}
    ngx.var = {uri = request.uri, upstream_status = request.upstream_status}
    for name, value in pairs(request.var or {}) do
        ngx.var[name] = value
    end
    ngx.say = function(...)
        out[#out + 1] = table.concat({...})
    end
    ngx.print = function(...)
        out[#out + 1] = table.concat({...})
    end
    ngx.req = {
        get_method = function() return request.method or "GET" end,
        read_body = function() end,
        get_body_data = function() return not request.body_in_file and request.body or nil end,
        get_body_file = function() return request.body_in_file and "/tmp/client_body/0000000001" or nil end,
        get_post_args = function(max) return post_args(request.body or "", max or 100) end,
    }
    local ok, err = pcall(fn)
    if not ok then
        if type(err) == "table" and err[1] == EXIT then
            return err[2], table.concat(out, "\n"), ngx.ctx
        end
        error(err, 0)
    end
    return nil, table.concat(out, "\n"), ngx.ctx
end

function stub.advance(seconds)
    stub.now = stub.now + seconds
end

ngx = {
    shared = {},
    ERR = "error", WARN = "warn", NOTICE = "notice",
    log = function(level, ...)
        stub.logs[#stub.logs + 1] = level .. ": " .. table.concat({...})
    end,
    exit = function(status)
        error({EXIT, status}, 0)
    end,
}

package.loaded["ngx.balancer"] = {
    set_current_peer = function(host, port)
        stub.peers[#stub.peers + 1] = host .. ":" .. port
        return true
    end,
    set_more_tries = function(n)
        stub.more_tries[#stub.more_tries + 1] = n
        return true
    end,
}

stub.reset()
return stub
