#!/usr/bin/env python3
"""HTTP/2 and TLS: ramp against nginx doing the same work, side by side.

Both proxies split 5% of users to the new pool by the cookie "uid" in front of the same two
backends (nginx on 127.0.0.1:9101 "stable" and :9102 "canary", with keep-alive upstream
connections), run one worker pinned to CPU 0 under the same cgroup CPU quota (default half a
core, as ../shared/bench/compare.py does), while the load generator and the backends share
CPU 1. ramp runs with everything on (benches/compare.yaml's settings: metrics, analysis and
guard, admin socket, state file, header hiding, health checks).

Cases:
  h2c       h2load, cleartext HTTP/2 with prior knowledge, 10 connections x 10 streams
  tls-h1    wrk, HTTP/1.1 over TLS, 64 keep-alive connections, 10,000 user ids
  tls-h2    h2load, HTTP/2 over TLS (ALPN), 10 connections x 10 streams
  tls-new   wrk, HTTP/1.1 over TLS with "Connection: close": a new TLS connection per request
            (wrk offers the session ticket of the last one, so each is a TLS 1.3 resumption
            with a fresh x25519 key exchange, as browsers reconnect)

Both proxies speak TLS 1.2 and 1.3 (nginx is told to: Debian's nginx 1.22 offers only TLS 1.2 by
default, where a resumed session skips the key exchange altogether). The script checks that
both negotiate the same version before measuring, and prints it.

Rounds alternate the two proxies; medians are printed, with ramp's figures as a ratio to
nginx's (requests/s: higher is better; CPU per request: lower is better).

Usage (from the repository, after cargo build --release; root, for the cgroup and packages):
  python3 benches/h2_tls.py [--rounds 3] [--duration 8] [--cpu-quota 0.5]
"""
import argparse, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

BACKEND = """worker_processes 1; daemon off; pid {d}/backend.pid; error_log {d}/backend.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:9101; location / {{ return 200 "stable\\n"; }} }}
  server {{ listen 127.0.0.1:9102; location / {{ return 200 "canary\\n"; }} }} }}
"""
NGINX = """worker_processes 1; daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream stable {{ server 127.0.0.1:9101; keepalive 64; }}
  upstream canary {{ server 127.0.0.1:9102; keepalive 64; }}
  split_clients "${{cookie_uid}}" $pool {{ 5% canary; * stable; }}
  server {{ listen 127.0.0.1:8091 http2;
    location / {{ proxy_pass http://$pool; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
  server {{ listen 127.0.0.1:8092 ssl http2;
    ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://$pool; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""
RAMP = """listen: 127.0.0.1:{port}
workers: 1
sticky: {{cookie: uid, header: x-user-id}}
pools: {{stable: [127.0.0.1:9101], canary: [127.0.0.1:9102]}}
rollout: {{id: bench, percent: 5, guard: {{action: halt}}}}
hide_response_headers: [x-app-version]
health: {{path: /, interval: 2s}}
analysis:
  goals: [{{name: purchase, method: POST, path: /checkout/done}}]
admin: {{socket: {d}/admin-{port}.sock}}
state: {{file: {d}/state-{port}.json}}
metrics: {{listen: 127.0.0.1:{metrics}}}
{tls}"""

CASES = ("h2c", "tls-h1", "tls-h2", "tls-new")


def ensure_tools():
    need = [p for b, p in (("wrk", "wrk"), ("h2load", "nghttp2-client"), ("nginx", "nginx-light"),
                           ("openssl", "openssl")) if not shutil.which(b) and not os.path.exists("/usr/sbin/" + b)]
    if need:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def pin(cpu):
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) > 1 else []


def cpu_ticks(pid):
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except OSError:
        pass
    return total


CGROUP = "/sys/fs/cgroup/cpu"


def throttle(pid, name, quota):
    path = f"{CGROUP}/h2tls-{name}-{os.getpid()}"
    try:
        os.makedirs(path, exist_ok=True)
        with open(f"{path}/cpu.cfs_period_us", "w") as f:
            f.write("10000")
        with open(f"{path}/cpu.cfs_quota_us", "w") as f:
            f.write(str(int(10000 * quota)))
        with open(f"{path}/cgroup.procs", "w") as f:
            f.write(str(pid))
        return path
    except OSError as e:
        print(f"warning: no CPU quota for {name} ({e})", file=sys.stderr)
        return None


def release(path):
    try:
        with open(f"{path}/cgroup.procs") as f:
            left = f.read().split()
        for p in left:
            with open(f"{CGROUP}/cgroup.procs", "w") as f:
                f.write(p)
        os.rmdir(path)
    except OSError:
        pass


def tls_version(port):
    """The protocol a default TLS client negotiates with 127.0.0.1:port."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.version()


def run(case, port, secs):
    """Runs one case against a port; gives (requests/s, requests answered)."""
    scheme = "http" if case == "h2c" else "https"
    url = f"{scheme}://127.0.0.1:{port}/"
    if case in ("h2c", "tls-h2"):
        out = subprocess.run([*pin(1), "h2load", "-c", "10", "-m", "10", "-D", str(secs),
                              "-H", "cookie: uid=user42", url], capture_output=True, text=True).stdout
        rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
        done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
        if not rps or not done or int(done.group(1)) == 0:
            raise SystemExit(f"h2load failed on {case} ({url}):\n{out}")
        return float(rps.group(1)), int(done.group(1))
    conns = "64" if case == "tls-h1" else "16"
    extra = ["--", "close"] if case == "tls-new" else []
    out = subprocess.run([*pin(1), "wrk", "-t1", f"-c{conns}", f"-d{secs}s", "-s", os.path.join(HERE, "split.lua"),
                          url, *extra], capture_output=True, text=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"ANSWERS total=(\d+) non200=(\d+)", out)
    if not rps or not done or int(done.group(1)) == 0 or int(done.group(2)) > 0:
        raise SystemExit(f"wrk failed on {case} ({url}):\n{out}")
    return float(rps.group(1)), int(done.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ramp", default=os.path.join(REPO, "target/release/ramp"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--cpu-quota", type=float, default=0.5, help="share of a core per proxy (0: none)")
    ap.add_argument("--cases", default=",".join(CASES), help="which cases, comma-separated")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if not cases or any(c not in CASES for c in cases):
        raise SystemExit(f"--cases: choose from {', '.join(CASES)}")
    ensure_tools()
    if not os.path.exists(args.ramp):
        raise SystemExit(f"{args.ramp} not found: cargo build --release first")
    d = tempfile.mkdtemp(prefix="h2tls-")
    procs, groups = [], []

    def start(cmd, cpu, port):
        p = subprocess.Popen([*pin(cpu), *cmd], stdout=subprocess.DEVNULL,
                             stderr=open(f"{d}/{port}.log", "w"), start_new_session=True)
        procs.append(p)
        wait_port(port)
        return p

    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        for name, text in (("backend.conf", BACKEND), ("nginx.conf", NGINX)):
            with open(f"{d}/{name}", "w") as f:
                f.write(text.format(d=d))
        for port, metrics, tls in ((8093, 9193, ""), (8094, 9194, f"tls: {{cert: {d}/cert.pem, key: {d}/key.pem}}\n")):
            with open(f"{d}/ramp-{port}.yaml", "w") as f:
                f.write(RAMP.format(port=port, metrics=metrics, d=d, tls=tls))
        start(["nginx", "-c", f"{d}/backend.conf"], 1, 9102)
        nginx = start(["nginx", "-c", f"{d}/nginx.conf"], 0, 8092)
        ramp_h2c = start([args.ramp, "serve", "--config", f"{d}/ramp-8093.yaml"], 0, 8093)
        ramp_tls = start([args.ramp, "serve", "--config", f"{d}/ramp-8094.yaml"], 0, 8094)
        time.sleep(0.5)
        versions = {who: tls_version(port) for who, port in (("nginx", 8092), ("ramp", 8094))}
        if len(set(versions.values())) != 1:
            raise SystemExit(f"the proxies negotiate different TLS versions: {versions}")
        print(f"both proxies negotiate {versions['ramp']}")
        if args.cpu_quota > 0:
            for name, p in (("nginx", nginx), ("ramp-h2c", ramp_h2c), ("ramp-tls", ramp_tls)):
                g = throttle(p.pid, name, args.cpu_quota)
                if g:
                    groups.append(g)
            print(f"each proxy limited to {args.cpu_quota:g} of a core (cgroup CPU quota)")
        where = {"nginx": {c: (nginx, 8091 if c == "h2c" else 8092) for c in CASES},
                 "ramp": {c: (ramp_h2c, 8093) if c == "h2c" else (ramp_tls, 8094) for c in CASES}}
        results = {(who, c): [] for who in where for c in cases}
        for _ in range(args.rounds):
            for case in cases:
                for who in ("nginx", "ramp"):
                    proc, port = where[who][case]
                    before = cpu_ticks(proc.pid)
                    rps, n = run(case, port, args.duration)
                    cpu = (cpu_ticks(proc.pid) - before) / os.sysconf("SC_CLK_TCK") * 1e6 / n
                    results[(who, case)].append((rps, cpu))
        print(f"{'case':9} {'nginx req/s':>12} {'ramp req/s':>11} {'ratio':>6}   "
              f"{'nginx cpu us/req':>16} {'ramp cpu us/req':>15} {'ratio':>6}")
        for case in cases:
            (nr, nc), (rr, rc) = ((statistics.median(x[0] for x in results[(w, case)]),
                                   statistics.median(x[1] for x in results[(w, case)])) for w in ("nginx", "ramp"))
            print(f"{case:9} {nr:12.0f} {rr:11.0f} {rr / nr:6.2f}   {nc:16.1f} {rc:15.1f} {rc / nc:6.2f}")
    finally:
        for g in groups:
            release(g)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
