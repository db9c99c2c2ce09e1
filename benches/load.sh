#!/bin/bash
# Load against a running ramp: HTTP/1.1 keep-alive with 10,000 distinct user ids (wrk), then
# HTTP/2 (h2load; cleartext with prior knowledge, or over TLS for an https:// URL).
#
#   benches/load.sh URL [SECONDS] [CONNECTIONS]
#   benches/load.sh http://127.0.0.1:8080/ 10 64
#
# Needs wrk and h2load (Debian: apt-get install wrk nghttp2-client). Run it from another machine
# (or other cores: taskset -c 1 benches/load.sh ...) so the load generator does not take the
# proxy's CPU. Watch ramp's side meanwhile: `ramp ctl status`, /metrics, the status page.
set -euo pipefail
url=${1:?usage: load.sh URL [SECONDS] [CONNECTIONS]}
secs=${2:-10}
conns=${3:-64}
here=$(cd "$(dirname "$0")" && pwd)
for tool in wrk h2load; do
  command -v "$tool" > /dev/null || { echo "load.sh: $tool is not installed" >&2; exit 1; }
done

echo "== HTTP/1.1 keep-alive: $conns connections, ${secs}s, 10,000 user ids"
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$here/split.lua" "$url" \
  | grep -E "Requests/sec|Latency  |50%|99%|ANSWERS|Socket errors"

echo "== HTTP/2: 10 connections x 10 streams, ${secs}s"
h2load -c 10 -m 10 -D "$secs" --warm-up-time 1 -H "cookie: uid=user42" "$url" \
  | grep -E "finished in|requests:|status codes|time for request"
