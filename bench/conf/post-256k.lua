-- wrk script for bench/run.sh scenario (u): every request a POST with a
-- 256 KiB body (Content-Length), which the origin reads and answers.
wrk.method = "POST"
wrk.body = string.rep("u", 256 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
