#!/bin/bash
# Where a running proxy's CPU goes per request: user space (the proxy's own code) against the
# kernel (its system calls and the TCP work they do), with how often it went to sleep waiting
# for work (voluntary context switches) and the TCP segments each request takes.
# Works for any proxy process, so ramp, nginx and HAProxy can be set side by side on the same
# backends (for example while ../shared/bench/compare.py's setup runs, or under the same cgroup
# CPU quota).
#
#   benches/cpu_split.sh PID URL [SECONDS] [CONNECTIONS]
#   taskset -c 1 benches/cpu_split.sh "$(pgrep -f 'ramp serve')" http://127.0.0.1:8083/ 8 64
#
# Counts every thread of PID from /proc (user and system ticks), and the machine's TCP segments
# from nstat: run nothing else meanwhile. Needs wrk and nstat (Debian: wrk, iproute2).
set -euo pipefail
pid=${1:?usage: cpu_split.sh PID URL [SECONDS] [CONNECTIONS]}
url=${2:?usage: cpu_split.sh PID URL [SECONDS] [CONNECTIONS]}
secs=${3:-8}
conns=${4:-64}
here=$(cd "$(dirname "$0")" && pwd)
[[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] || { echo "cpu_split.sh: no process $pid" >&2; exit 1; }
for tool in wrk nstat; do
  command -v "$tool" > /dev/null || { echo "cpu_split.sh: $tool is not installed" >&2; exit 1; }
done

# User and system clock ticks of all of pid's threads, and the times they went to sleep.
ticks() {
  local user=0 sys=0 sleeps=0 t f
  for t in /proc/"$pid"/task/*; do
    # Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    read -r -a f <<< "$(sed 's/.*) //' "$t/stat" 2> /dev/null || true)"
    ((${#f[@]} > 12)) || continue
    user=$((user + f[11])) sys=$((sys + f[12]))
    sleeps=$((sleeps + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status" 2> /dev/null || echo 0)))
  done
  echo "$user $sys $sleeps"
}

nstat -n > /dev/null
read -r user0 sys0 sleeps0 < <(ticks)
out=$(wrk -t1 -c"$conns" -d"${secs}s" -s "$here/split.lua" "$url")
read -r user1 sys1 sleeps1 < <(ticks)
segs=$(nstat -z TcpOutSegs | awk '$1 == "TcpOutSegs" { print $2 }')
answers=$(awk '/^ANSWERS/ { split($2, a, "="); print a[2] }' <<< "$out")
((answers > 0)) || { echo "cpu_split.sh: wrk got no answers:" >&2; echo "$out" >&2; exit 1; }
python3 - "$answers" "$((user1 - user0))" "$((sys1 - sys0))" "${segs:-0}" "$(getconf CLK_TCK)" \
  "$((sleeps1 - sleeps0))" <<'EOF'
import sys
n, user, sys_, segs, hz, sleeps = (int(x) for x in sys.argv[1:])
us = lambda ticks: ticks / hz * 1e6 / n
print(f"requests {n}  user {us(user):.1f} us/req  system {us(sys_):.1f} us/req  "
      f"total {us(user + sys_):.1f} us/req  kernel share {sys_ / max(1, user + sys_):.0%}  "
      f"sleeps {sleeps / n:.2f}/req  TCP segments sent {segs / n:.2f}/req (whole machine)")
EOF
grep -E "Requests/sec" <<< "$out"
