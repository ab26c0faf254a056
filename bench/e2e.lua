-- wrk script of the end-to-end scenario (bench/run.py): 90 % queries (GET a product's
-- details from the catalog read model), 10 % commands (POST a stock adjustment of +1, which
-- loads the product aggregate, appends an event and moves the projection), spread over the
-- seeded products. BENCH_IDS names a file of product ids, BENCH_TOKEN is the seller's token.
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do
  if #line > 0 then ids[#ids + 1] = line end
end
local auth = "Bearer " .. os.getenv("BENCH_TOKEN")
local command_headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }
local restock = '{"warehouse":"main","delta":1}'

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local id = ids[math.random(#ids)]
  if math.random(10) == 1 then
    return wrk.format("POST", "/v1/products/" .. id .. "/stock", command_headers, restock)
  end
  return wrk.format("GET", "/v1/products/" .. id)
end
