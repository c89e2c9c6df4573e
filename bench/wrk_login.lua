-- wrk script: POST /api/v1/auth/login with the bench account (argon2id verify per request).
wrk.method = "POST"
wrk.path = "/api/v1/auth/login"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"login":"benchuser","password":"bench password 42"}'
dofile("bench/wrk_report.lua")
