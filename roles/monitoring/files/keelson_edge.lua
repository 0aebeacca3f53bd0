-- The edge's request metrics (keelson.stack.monitoring), counted and served by nginx itself.
--
-- nginx allows one http-level log_by_lua, and keelson.stack.nginx owns it
-- (templates/upstreams.conf.j2): it calls log() for every request once the shared dict
-- `keelson_edge` exists, which /etc/nginx/keelson/extra/keelson_edge.conf declares along
-- with the server that calls serve() on the private address (Prometheus job `edge`).
--
-- A request is counted only when a site served it: each site's servers set $keelson_site
-- to the nginx_sites name, every other server leaves it empty (names no site declares,
-- the status and metrics servers). Label values are therefore the configured sites and
-- the status codes nginx answers, nothing a client can choose.
--
-- Shared dict keys (SITE = site name, LE = bucket bound as exposed, or +Inf):
--   r:SITE:CODE   requests answered with CODE
--   b:SITE:LE     requests whose $request_time fell in this bucket and not in a lower
--                 one; serve() adds them up into Prometheus' cumulative buckets, and
--                 _count is their total
--   s:SITE        sum of $request_time
-- Three incr per request. Keys are strings made once per worker and reused. The dict
-- survives reloads; after a change of buckets the keys of a removed bound are no longer
-- exposed (their requests leave _count: Prometheus sees a counter reset).
local settings = require("keelson_edge_settings")

local M = {}
local DICT_NAME = "keelson_edge"

local bounds, les = {}, {}
for i, bound in ipairs(settings.buckets) do
    bounds[i] = bound
    les[i] = string.format("%.14g", bound)
end
les[#bounds + 1] = "+Inf"
local nbounds = #bounds

local keys = {}   -- per worker: SITE -> {codes = {CODE -> key}, buckets = {i -> key}, sum = key}

local function site_keys(site)
    local k = keys[site]
    if not k then
        k = {codes = {}, buckets = {}, sum = "s:" .. site}
        for i, le in ipairs(les) do
            k.buckets[i] = "b:" .. site .. ":" .. le
        end
        keys[site] = k
    end
    return k
end

function M.log()
    local site = ngx.var.keelson_site
    if not site or site == "" then
        return
    end
    local dict = ngx.shared[DICT_NAME]
    local k = site_keys(site)
    local code = ngx.var.status
    local requests = k.codes[code]
    if not requests then
        requests = "r:" .. site .. ":" .. code
        k.codes[code] = requests
    end
    local t = tonumber(ngx.var.request_time) or 0
    local i = 1
    while i <= nbounds and t > bounds[i] do
        i = i + 1
    end
    dict:incr(requests, 1, 0)
    dict:incr(k.buckets[i], 1, 0)
    dict:incr(k.sum, t, 0)
end

-- The exposition ---------------------------------------------------------------------

local function label(value)
    return (value:gsub("[\\\"\n]", {["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n"}))
end

local function sorted_keys(t)
    local out = {}
    for key in pairs(t) do
        out[#out + 1] = key
    end
    table.sort(out)
    return out
end

-- The metrics in Prometheus' text format (one string), from the dict's current values.
function M.render()
    local dict = ngx.shared[DICT_NAME]
    local requests, buckets, sums, sites = {}, {}, {}, {}
    for _, key in ipairs(dict:get_keys(0)) do
        local value = dict:get(key)
        if type(value) == "number" then
            local kind = key:sub(1, 2)
            if kind == "r:" then
                local site, code = key:match("^r:(.*):(%d+)$")
                if site then
                    requests[site] = requests[site] or {}
                    requests[site][code] = value
                end
            elseif kind == "b:" then
                local site, le = key:match("^b:(.*):([^:]+)$")
                if site then
                    buckets[site] = buckets[site] or {}
                    buckets[site][le] = value
                    sites[site] = true
                end
            elseif kind == "s:" then
                sums[key:sub(3)] = value
            end
        end
    end

    local out = {
        "# HELP keelson_edge_requests_total Requests served by each site, by HTTP status code.\n",
        "# TYPE keelson_edge_requests_total counter\n",
    }
    for _, site in ipairs(sorted_keys(requests)) do
        local by_code = requests[site]
        for _, code in ipairs(sorted_keys(by_code)) do
            out[#out + 1] = string.format('keelson_edge_requests_total{site="%s",code="%s"} %d\n',
                                          label(site), code, by_code[code])
        end
    end
    out[#out + 1] = "# HELP keelson_edge_request_duration_seconds Request time ($request_time) by site.\n"
    out[#out + 1] = "# TYPE keelson_edge_request_duration_seconds histogram\n"
    for _, site in ipairs(sorted_keys(sites)) do
        local name, total = label(site), 0
        for _, le in ipairs(les) do
            total = total + (buckets[site][le] or 0)
            out[#out + 1] = string.format('keelson_edge_request_duration_seconds_bucket{site="%s",le="%s"} %d\n',
                                          name, le, total)
        end
        out[#out + 1] = string.format('keelson_edge_request_duration_seconds_sum{site="%s"} %.3f\n',
                                      name, sums[site] or 0)
        out[#out + 1] = string.format('keelson_edge_request_duration_seconds_count{site="%s"} %d\n', name, total)
    end
    return table.concat(out)
end

function M.serve()
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.print(M.render())
end

return M
