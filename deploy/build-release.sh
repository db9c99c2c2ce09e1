#!/usr/bin/env bash
# Build ramp's release binary the way the image ships it: with profile-guided optimisation.
#
#   deploy/build-release.sh          # prints the binary's path when done
#
# 1. build an instrumented binary (-Cprofile-generate);
# 2. train it: run it as a proxy in front of two `ramp demo-upstream` backends, everything
#    switched on (metrics, analysis with a goal, guard, admin socket, state file, id minting,
#    header hiding, health checks), and put the traffic a proxy sees through it with wrk and
#    h2load: HTTP/1.1 keep-alive and new connections, with and without a user id, uploads,
#    cleartext HTTP/2, and all of these over TLS; one proxy on the single-threaded runtime
#    (workers: 1), one on the multi-threaded one (workers: 2);
# 3. merge the profiles (llvm-profdata) and build again with -Cprofile-use.
#
# Both builds name the host target explicitly, so the flags reach ramp and its dependencies but
# not build scripts or proc macros (which would otherwise write profiles of their own). The
# binary is target/<host>/release/ramp; the merged profile stays in target/pgo/ramp.profdata.
# Needs wrk, h2load and openssl (Debian: apt-get install wrk nghttp2-client openssl) and
# llvm-profdata from the toolchain (rustup component add llvm-tools). The training binds
# 127.0.0.1 ports from RAMP_PGO_PORT (default 18400) to RAMP_PGO_PORT+5; takes ~1 minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

work=
die() {
  echo "build-release.sh: $*" >&2
  if [ -n "$work" ]; then
    for log in "$work"/*.log; do
      [ -s "$log" ] && { echo "--- ${log##*/}"; tail -n 5 "$log"; } >&2
    done
  fi
  exit 1
}
for tool in wrk h2load openssl; do
  command -v "$tool" > /dev/null || die "$tool is not installed (Debian: apt-get install wrk nghttp2-client openssl)"
done
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
[ -x "$profdata" ] || die "llvm-profdata is missing: rustup component add llvm-tools"

base=${RAMP_PGO_PORT:-18400}
[[ $base =~ ^[0-9]+$ ]] && [ "$base" -ge 1024 ] && [ "$base" -le 65530 ] \
  || die "RAMP_PGO_PORT must be a port number from 1024 to 65530, not '$base'"
stable=$base canary=$((base + 1)) plain=$((base + 2)) tls=$((base + 3))
for port in $(seq "$base" $((base + 5))); do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    die "127.0.0.1:$port is taken; set RAMP_PGO_PORT to a free range of 6 ports"
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ramp-pgo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== 1/3 instrumented build"
# The profiles' place is given again at run time (LLVM_PROFILE_FILE); a fixed one here lets cargo
# reuse this build when the sources have not changed.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$repo/target/pgo/raw" \
  cargo build --release --locked --bin ramp --target "$host" --target-dir target/pgo-train
trainee=target/pgo-train/$host/release/ramp

echo "== 2/3 training"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2> /dev/null
proxy_config() { # PORT METRICS_PORT WORKERS [TLS LINE]
  cat << EOF
listen: 127.0.0.1:$1
workers: $3
sticky: {cookie: uid, header: x-user-id}
pools: {stable: [127.0.0.1:$stable], canary: [127.0.0.1:$canary]}
rollout: {id: train, percent: 5, guard: {action: halt}}
hide_response_headers: [x-app-version]
health: {path: /, interval: 1s}
analysis:
  goals: [{name: purchase, method: POST, path: /checkout/done}]
admin: {socket: $work/admin-$1.sock}
state: {file: $work/state-$1.json}
metrics: {listen: 127.0.0.1:$2}
${4:-}
EOF
}
proxy_config "$plain" $((base + 4)) 1 > "$work/plain.yaml"
proxy_config "$tls" $((base + 5)) 2 "tls: {cert: $work/cert.pem, key: $work/key.pem}" > "$work/tls.yaml"
head -c 65536 /dev/zero | tr '\0' x > "$work/upload"
cat > "$work/post.lua" << 'EOF'
local n = 0
function request()
  n = n + 1
  local headers = { ["Cookie"] = "uid=user" .. (n % 10000), ["Content-Type"] = "text/plain" }
  return wrk.format("POST", "/checkout/done", headers, string.rep("x", n % 2000))
end
EOF

wait_port() { # PORT: listening, with every process started so far still running
  for _ in $(seq 100); do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2> /dev/null || die "a training process exited early"; done
    (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$1"
}
# The backends' own profiles go elsewhere: only the proxy's paths are trained.
for pool in stable canary; do
  port=${!pool}
  LLVM_PROFILE_FILE="$work/backend/%p.profraw" "$trainee" demo-upstream --name "$pool" \
    --listen "127.0.0.1:$port" > "$work/$pool.log" 2>&1 &
  pids+=($!)
done
LLVM_PROFILE_FILE="$work/raw/%p.profraw" "$trainee" serve --config "$work/plain.yaml" > "$work/plain.log" 2>&1 &
proxies=($!)
LLVM_PROFILE_FILE="$work/raw/%p.profraw" "$trainee" serve --config "$work/tls.yaml" > "$work/tls.log" 2>&1 &
proxies+=($!)
pids+=("${proxies[@]}")
for port in "$stable" "$canary" "$plain" "$tls"; do wait_port "$port"; done

load() { # WHAT COMMAND...: fails the build unless every answer was a 2xx
  echo "   $1"
  shift
  out=$("$@" 2>&1) || die "training load failed: $*: $out"
  if grep -qE "Non-2xx|Socket errors|[1-9][0-9]* errored|status codes: 0 2xx" <<< "$out"; then
    die "training load got errors: $*: $out"
  fi
}
split=benches/split.lua
for scheme in http https; do
  port=$plain
  [ "$scheme" = https ] && port=$tls
  url=$scheme://127.0.0.1:$port/
  load "$scheme HTTP/1.1 keep-alive" wrk -t1 -c64 -d3s -s "$split" "$url"
  load "$scheme HTTP/1.1 new connections" wrk -t1 -c8 -d2s -s "$split" "$url" -- close
  load "$scheme HTTP/1.1 without a user id" wrk -t1 -c16 -d1s "$url"
  load "$scheme HTTP/1.1 uploads" wrk -t1 -c16 -d2s -s "$work/post.lua" "${url}checkout/done"
  load "$scheme HTTP/2" h2load -c10 -m10 -D 3 -H "cookie: uid=user42" "$url"
  load "$scheme HTTP/2 uploads" h2load -c4 -m4 -D 1 -d "$work/upload" -H "cookie: uid=user7" "${url}checkout/done"
done
load "metrics" wrk -t1 -c2 -d1s "http://127.0.0.1:$((base + 4))/metrics"
"$trainee" ctl --socket "$work/admin-$plain.sock" status > /dev/null

kill -TERM "${proxies[@]}"
for pid in "${proxies[@]}"; do wait "$pid" || die "the trained proxy did not stop cleanly"; done
kill "${pids[@]}" 2> /dev/null || true
wait 2> /dev/null || true
pids=()
ls "$work"/raw/*.profraw > /dev/null 2>&1 || die "the training wrote no profile"

echo "== 3/3 optimised build"
mkdir -p target/pgo
"$profdata" merge -o target/pgo/ramp.profdata "$work"/raw/*.profraw
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$repo/target/pgo/ramp.profdata" \
  cargo build --release --locked --bin ramp --target "$host"
echo "built $repo/target/$host/release/ramp"
