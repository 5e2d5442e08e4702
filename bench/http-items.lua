-- http-items.lua -- script/bench's HTTP load: GET /items/ID of a random one
-- of the 10,000 seeded items (one point select per request, connection from
-- the pool); every answer must be 200, so wrk's "Non-2xx" count is a failure.
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/items/" .. math.random(10000))
end
