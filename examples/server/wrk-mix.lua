-- wrk-mix.lua -- the load script/demo sends to pqawait-server: 70 % item
-- reads, 20 % takes (one transaction each), 10 % /slow?ms=20 (a query that
-- holds its connection 20 ms, as a report or a lock wait would).
math.randomseed(os.time())

local json = { ["Content-Type"] = "application/json" }

request = function()
  local r = math.random(100)
  local id = math.random(10000)
  if r <= 70 then
    return wrk.format("GET", "/items/" .. id)
  elseif r <= 90 then
    return wrk.format("POST", "/items/" .. id .. "/take", json, '{"qty":1}')
  else
    return wrk.format("GET", "/slow?ms=20")
  end
end
