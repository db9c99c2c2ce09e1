//! A fleet: three ramp instances sharing one rollout state through a real etcd (Debian's
//! `etcd-server`, started here on free ports with its own data directory). A change at any
//! instance reaches the others at once; two operators racing never lose an update; with etcd
//! gone every instance keeps serving, refuses changes but applies a halt, and catches up when
//! etcd is back; a schedule step is applied once; and all instances agree on every user.
#![cfg_attr(not(ramp_tests_with_etcd), allow(dead_code, unused_imports))]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Client, Proxy};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real etcd on free loopback ports, with its own data directory.
struct Etcd {
    child: Option<Child>,
    client: u16,
    peer: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            client: free_port(),
            peer: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        e.run().await;
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Starts etcd (again) on the same ports and data, and waits until it answers.
    async fn run(&mut self) {
        let (c, p) = (self.client, self.peer);
        let child = Command::new("/usr/bin/etcd")
            .args([
                "--name",
                "default",
                "--data-dir",
                &self.dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{c}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{p}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{p}"),
                "--logger=zap",
                "--log-outputs=stderr",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.child = Some(child);
        let health = format!("{}/health", self.url());
        for _ in 0..300 {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                Client::http1().try_get(&health, &[]),
            )
            .await
                && r.body.contains("true")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not become healthy");
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) etcd: a member that hangs rather than dies.
    fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// etcd's data directory (while it is stopped: to wipe it, or to keep a copy).
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh etcd, and a stable and a canary backend.
async fn etcd_and_backends() -> (Etcd, Backend, Backend) {
    (
        Etcd::start().await,
        Backend::start("stable").await,
        Backend::start("canary").await,
    )
}

fn yaml(s: &Backend, c: &Backend, etcd: &str, name: &str, rollout: &str, cache: bool) -> String {
    let cache = if cache { "  file: cache.json\n" } else { "" };
    format!(
        "listen: 127.0.0.1:0\nworkers: 1\nsticky: {{header: x-user-id}}\npools: {{stable: ['{}'], canary: ['{}']}}\nrollout:\n{}\nadmin: {{socket: admin.sock}}\nmetrics: {{listen: '127.0.0.1:0'}}\nstate:\n{cache}  etcd: {{endpoints: ['{etcd}'], key: /ramp/rollouts/test, instance: {name}}}\n",
        s.addr,
        c.addr,
        rollout
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

struct Fleet {
    proxies: Vec<Proxy>,
}

impl Fleet {
    /// Once every instance is connected, etcd goes away, and every instance notices.
    async fn lose(&self, etcd: &mut Etcd) {
        self.all("connected", |v| v["fleet"]["connected"] == true)
            .await;
        etcd.kill();
        self.all("everyone notices", |v| v["fleet"]["connected"] == false)
            .await;
    }

    /// Like [`Fleet::all`], and gives the first instance's status that satisfied `done`.
    async fn all_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.all(what, &done).await;
        let st = self.proxies[0].admin("status");
        assert!(done(&st), "{what}: no longer: {st}");
        st
    }

    fn start(s: &Backend, c: &Backend, etcd: &str, rollout: &str) -> Fleet {
        let proxies = ["a", "b", "c"]
            .iter()
            .map(|n| Proxy::start(&yaml(s, c, etcd, n, rollout, true)))
            .collect();
        Fleet { proxies }
    }

    /// Waits (up to 30 s) until every instance's status satisfies `done`; gives how long it
    /// took. On failure, shows every instance's status.
    async fn all(&self, what: &str, done: impl Fn(&Value) -> bool) -> Duration {
        let start = Instant::now();
        for p in &self.proxies {
            let socket = p.socket();
            while !done(&support::admin_at(&socket, "status")) {
                if start.elapsed() > Duration::from_secs(30) {
                    let all: Vec<String> = self
                        .proxies
                        .iter()
                        .map(|p| {
                            let s = p.admin("status");
                            format!("{} {} {}", s["state"], s["percent"], s["fleet"])
                        })
                        .collect();
                    panic!("{what}: never happened; statuses:\n{}", all.join("\n"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        start.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_change_at_any_instance_reaches_every_instance_and_all_agree_on_every_user() {
    let (etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: fleet\npercent: 5");
    fleet
        .all("every instance sees the start", |v| {
            v["fleet"]["connected"] == true
        })
        .await;
    let mut worst = Duration::ZERO;
    for (i, (at, cmd, check)) in [
        (0, "set 20", ("running", 20.0)),
        (1, "halt", ("halted", 20.0)),
        (2, "resume", ("running", 20.0)),
        (0, "set 0.5", ("running", 0.5)),
    ]
    .into_iter()
    .enumerate()
    {
        let r = fleet.proxies[at].admin(cmd);
        assert_eq!(r["ok"], true, "{cmd}: {r}");
        let took = fleet
            .all(cmd, |v| {
                v["state"] == check.0 && v["percent"].as_f64() == Some(check.1)
            })
            .await;
        worst = worst.max(took);
        // The change is logged at the others with the instance that made it.
        let made_by = ["a", "b", "c"][at];
        let other = &fleet.proxies[(at + 1) % 3];
        let line = other.wait_log(&format!("fleet (instance {made_by})"));
        assert!(line.contains("rollout changed"), "{i}: {line}");
    }
    eprintln!("a change reached all three instances within {worst:?} (slowest of four)");
    // Another key in b's file waits for a restart, and says so: b stays in this fleet.
    let b = &fleet.proxies[1];
    let text = std::fs::read_to_string(&b.config_path).expect("config");
    std::fs::write(
        &b.config_path,
        text.replace("/ramp/rollouts/test", "/ramp/rollouts/other"),
    )
    .expect("write");
    let r = b.admin("reload");
    assert_eq!(
        r["restart_required"],
        serde_json::json!(["state.etcd"]),
        "{r}"
    );
    assert_eq!(r["applied"], serde_json::json!([]), "{r}");
    assert_eq!(b.admin("status")["fleet"]["key"], "/ramp/rollouts/test");
    let (_, out, _) = b.ctl(&["status"]);
    assert!(
        out.contains("fleet       /ramp/rollouts/test as b: etcd connected (revision "),
        "{out}"
    );
    assert_eq!(fleet.proxies[0].admin("set 3")["ok"], true);
    fleet
        .all("set 3 after b's reload", |v| {
            v["percent"].as_f64() == Some(3.0)
        })
        .await;
    // Identical answers for 1,500 users.
    for i in 0..1_500 {
        let line = format!("bucket user-{i}");
        let answers: Vec<Value> = fleet.proxies.iter().map(|p| p.admin(&line)).collect();
        assert_eq!(answers[0]["pool"], answers[1]["pool"], "user-{i}");
        assert_eq!(answers[0]["pool"], answers[2]["pool"], "user-{i}");
    }
    for p in &fleet.proxies {
        let r = Client::http1()
            .get(&p.url("/"), &[("x-user-id", "same-user")])
            .await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn two_operators_racing_never_lose_an_update() {
    let (etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: race\npercent: 1");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    let (a, b) = (fleet.proxies[0].socket(), fleet.proxies[1].socket());
    let mut ok_values = Vec::new();
    for round in 0..15 {
        let (x, y) = (10 + round, 50 + round);
        let (sa, sb) = (a.clone(), b.clone());
        let ta = std::thread::spawn(move || support::admin_at(&sa, &format!("set {x}")));
        let tb = std::thread::spawn(move || support::admin_at(&sb, &format!("set {y}")));
        let (ra, rb) = (ta.join().expect("a"), tb.join().expect("b"));
        for (r, v) in [(&ra, x), (&rb, y)] {
            if r["ok"] == true {
                ok_values.push((round, v));
            } else {
                let e = r["error"].as_str().expect("error");
                assert!(e.contains("changed meanwhile"), "a clear reply: {e}");
            }
        }
        assert!(
            ok_values.iter().any(|(r, _)| *r == round),
            "round {round}: neither change applied: {ra} {rb}"
        );
        // Every instance ends on a value some operator was told was applied.
        let end = fleet.proxies[0].wait_status("settled", |v| v["percent"].is_number());
        let percent = end["percent"].as_f64().expect("percent") as u64;
        assert!(
            ok_values.iter().any(|(r, v)| *r == round && *v == percent),
            "round {round}: {percent} was not acknowledged"
        );
        fleet
            .all("all agree", |v| {
                v["percent"].as_f64() == Some(percent as f64)
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn with_etcd_gone_instances_serve_apply_a_halt_locally_and_resync_when_it_is_back() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: outage\npercent: 50");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    let web = fleet.proxies[1].metrics_addr();
    etcd.kill();
    // Every instance keeps serving.
    for p in &fleet.proxies {
        for i in 0..20 {
            let r = Client::http1()
                .get(&p.url("/"), &[("x-user-id", &format!("u{i}"))])
                .await;
            assert_eq!(r.status, 200);
        }
    }
    let r = fleet.proxies[0].admin("set 10");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("etcd")),
        "{r}"
    );
    // A halt applies at once where it is typed, and says it waits for etcd.
    let r = fleet.proxies[1].admin("halt");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("written to the fleet as soon as etcd takes it")),
        "{r}"
    );
    assert_eq!(fleet.proxies[1].admin("status")["state"], "halted");
    fleet
        .all("everyone notices", |v| v["fleet"]["connected"] == false)
        .await;
    // `ramp ctl status` says it too, and what waits to be written.
    let (code, out, _) = fleet.proxies[1].ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("fleet       /ramp/rollouts/test as b: etcd unreachable")
            && out.contains("the halt made here is still to be written to etcd"),
        "{out}"
    );
    // Still ready: taken out of the load balancer, every instance at once, the fleet would serve
    // no one.
    let ready = Client::http1()
        .get(&format!("http://{web}/readyz"), &[])
        .await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(
        ready.body.contains("etcd does not answer"),
        "{}",
        ready.body
    );
    // etcd comes back: the halt reaches everyone.
    etcd.run().await;
    fleet
        .all("the halt reaches the fleet", |v| {
            v["state"] == "halted" && v["fleet"]["connected"] == true
        })
        .await;
    let ready = Client::http1()
        .get(&format!("http://{web}/readyz"), &[])
        .await;
    assert_eq!(ready.status, 200);
    // A restart while etcd is down serves the cached state; without a cache, everyone on stable.
    etcd.kill();
    let (dir, path) = fleet
        .proxies
        .into_iter()
        .next()
        .map(|p| p.kill9())
        .expect("a");
    let cached = Proxy::start_in(dir, path);
    assert_eq!(cached.admin("status")["state"], "halted");
    let bare = Proxy::start(&yaml(
        &s,
        &c,
        &etcd.url(),
        "d",
        "id: outage\npercent: 50",
        false,
    ));
    assert_eq!(bare.admin("status")["state"], "rolled_back");
    let r = Client::http1()
        .get(&bare.url("/"), &[("x-user-id", "u1")])
        .await;
    assert_eq!(r.body, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_schedule_step_is_applied_once_in_a_fleet() {
    let (etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(
        &s,
        &c,
        &etcd.url(),
        "id: steps\nsteps:\n  - {percent: 1, hold: 2s}\n  - {percent: 2, hold: 2s}\n  - {percent: 100}",
    );
    fleet.all("completed", |v| v["state"] == "completed").await;
    let advances: usize = fleet
        .proxies
        .iter()
        .map(|p| {
            p.admin("status")["changes"].as_array().map_or(0, |c| {
                c.iter().filter(|c| c["command"] == "advance").count()
            })
        })
        .sum();
    assert_eq!(
        advances, 2,
        "two steps, each applied by exactly one instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_config_edit_etcd_could_not_take_applies_when_etcd_answers_again() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: edits\npercent: 10");
    fleet.lose(&mut etcd).await;
    // The operator edits the file at one instance while etcd is away: the file watcher's reload
    // is refused first, then the operator's.
    let a = &fleet.proxies[0];
    edit_while_away(a, "percent: 10", "percent: 30").await;
    let said = "the config file is read again when etcd answers again";
    let r = a.admin("reload");
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| e.contains(said)), "{r}");
    let now = a.admin("status");
    assert_eq!(now["percent"], 10.0, "{now}");
    assert!(
        now["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains(said)),
        "{now}"
    );
    // etcd is back: the edit is applied, and reaches the fleet, without another edit or reload.
    etcd.run().await;
    fleet
        .all("the edit is applied everywhere", |v| {
            v["percent"] == 30.0 && v["fleet"]["connected"] == true
        })
        .await;
    let now = a.admin("status");
    assert!(now["last_reload_error"].is_null(), "{now}");
    assert_eq!(now["changes"][0]["source"], "file", "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_halt_typed_while_etcd_was_away_never_ends_at_an_edit_s_higher_percent() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: halted\npercent: 10");
    fleet.lose(&mut etcd).await;
    // At `a` the file is edited to 40%, which waits for etcd; at `b` an operator halts at 10%.
    edit_while_away(&fleet.proxies[0], "percent: 10", "percent: 40").await;
    let r = fleet.proxies[1].admin("halt");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("written to the fleet as soon as etcd takes it")),
        "{r}"
    );
    let by = fleet.proxies[1].admin("status")["stopped"]["by"].clone();
    assert!(by.as_str().is_some_and(|b| b.starts_with("admin")), "{by}");
    // etcd is back, and both go to the fleet, in whichever order: halted at 10%, never at the
    // edit's 40%, who halted it said everywhere, and the edit waiting for `resume`.
    etcd.run().await;
    fleet
        .all("the halt reaches the fleet, with who made it", |v| {
            v["state"] == "halted"
                && v["fleet"]["connected"] == true
                && v["fleet"]["pending"].is_null()
                && v["stopped"]["by"] == by
                && v["on_resume"]["percent"].as_f64() == Some(40.0)
        })
        .await;
    for p in &fleet.proxies {
        let st = p.admin("status");
        assert_eq!(
            (st["state"].as_str(), st["percent"].as_f64()),
            (Some("halted"), Some(10.0)),
            "{st}"
        );
    }
    assert_eq!(
        fleet.proxies[2].admin("resume")["percent"].as_f64(),
        Some(40.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn the_same_edit_pushed_to_every_instance_applies_at_every_instance() {
    let etcd = Etcd::start().await;
    let (s, c, c2) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
        Backend::start("canary").await,
    );
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: pushed\npercent: 10");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    // A new percent and a second canary upstream, written to every instance's file at once:
    // one of them writes the percent to etcd first; the others must still take the pool.
    let pools = format!("canary: ['{}']", c.addr);
    let both = format!("canary: ['{}', '{}']", c.addr, c2.addr);
    for p in &fleet.proxies {
        let text = std::fs::read_to_string(&p.config_path).expect("read config");
        assert!(text.contains(&pools), "{text}");
        support::replace_file(
            &p.config_path,
            &text
                .replace("percent: 10", "percent: 15")
                .replace(&pools, &both),
        );
    }
    fleet
        .all("the edit is in force everywhere", |v| {
            v["percent"].as_f64() == Some(15.0)
                && v["upstreams"]["canary"] == 2
                && v["last_reload_error"].is_null()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_edit_made_while_an_instance_and_etcd_were_down_applies_when_etcd_is_back() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: downtime\npercent: 10");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    etcd.kill();
    let mut proxies = fleet.proxies;
    let (dir, path) = proxies.remove(1).kill9();
    let text = std::fs::read_to_string(&path).expect("read config");
    support::replace_file(&path, &text.replace("percent: 10", "percent: 30"));
    let b = Proxy::start_in(dir, path);
    let st = b.admin("status");
    assert_eq!(st["percent"].as_f64(), Some(10.0), "{st}");
    assert!(
        st["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("read again when etcd answers again")),
        "{st}"
    );
    etcd.run().await;
    proxies.push(b);
    let fleet = Fleet { proxies };
    fleet
        .all("the edit reaches the fleet", |v| {
            v["percent"].as_f64() == Some(30.0) && v["last_reload_error"].is_null()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_edit_at_an_instance_that_also_stopped_the_rollout_applies_when_etcd_is_back() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: both\npercent: 10");
    fleet.lose(&mut etcd).await;
    // At `b`: the file edited to 50%, then a halt; at `c`, a rollback.
    let b = &fleet.proxies[1];
    edit_while_away(b, "percent: 10", "percent: 50").await;
    // (Each in force where it is typed; the reply says etcd has not taken it yet.)
    fleet.proxies[2].admin("rollback");
    b.admin("halt");
    assert_eq!(fleet.proxies[2].admin("status")["state"], "rolled_back");
    assert_eq!(b.admin("status")["state"], "halted");
    // A long outage: the watches wait up to 5 s between tries by then, so the halt's own write
    // (tried every second) is what first finds etcd back at `b`.
    tokio::time::sleep(Duration::from_secs(7)).await;
    etcd.run().await;
    // Rolled back everywhere, by c; b's edit read again and waiting for `resume`.
    fleet
        .all("the rollback and the edit reach the fleet", |v| {
            v["state"] == "rolled_back"
                && v["stopped"]["by"]
                    .as_str()
                    .is_some_and(|by| by.starts_with("admin"))
                && v["on_resume"]["percent"].as_f64() == Some(50.0)
                && v["last_reload_error"].is_null()
                && v["fleet"]["pending"].is_null()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_edit_of_the_pools_and_the_percent_during_an_outage_moves_the_pools_at_once() {
    let mut etcd = Etcd::start().await;
    let (s, c, moved) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
        Backend::start("stable2").await,
    );
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: pools\npercent: 10");
    fleet.lose(&mut etcd).await;
    // At `b`, the stable pool moves to another upstream (the old one is failing, say) in the
    // same edit as a new percent, which needs the fleet.
    let b = &fleet.proxies[1];
    let text = std::fs::read_to_string(&b.config_path).expect("read config");
    let edited = text
        .replace(&s.addr.to_string(), &moved.addr.to_string())
        .replace("percent: 10", "percent: 50");
    support::replace_file(&b.config_path, &edited);
    let st = b.wait_status("the rollout's part waits for etcd", |v| {
        v["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("applied but for the rollout"))
    });
    assert_eq!(st["percent"].as_f64(), Some(10.0), "{st}");
    // The pools are in force already: a stable user of `b` reaches the new upstream.
    let stable_user = (0..)
        .map(|i| format!("u{i}"))
        .find(|u| {
            let r = ramp::routing::Rollout::new("pools", 500_000, ramp::routing::State::Running);
            ramp::routing::assign(&r, u.as_bytes()) == ramp::routing::PoolName::Stable
        })
        .expect("a user on stable at 50%");
    let r = Client::http1()
        .get(&b.url("/"), &[("x-user-id", stable_user.as_str())])
        .await;
    assert_eq!(r.body, "stable2");
    etcd.run().await;
    fleet
        .all("the percent reaches the fleet", |v| {
            v["percent"].as_f64() == Some(50.0) && v["last_reload_error"].is_null()
        })
        .await;
    let r = Client::http1()
        .get(&b.url("/"), &[("x-user-id", stable_user.as_str())])
        .await;
    assert_eq!(r.body, "stable2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_halt_made_during_an_outage_that_finds_a_rollback_is_not_listed_as_rolling_back() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: both\npercent: 10");
    fleet.lose(&mut etcd).await;
    let (a, b) = (&fleet.proxies[0], &fleet.proxies[1]);
    b.admin("halt");
    // `b` sleeps through etcd's return, and meanwhile `a` rolls the fleet back.
    b.signal(19);
    etcd.run().await;
    a.wait_status("a reaches etcd again", |v| v["fleet"]["connected"] == true);
    assert_eq!(a.admin("rollback")["ok"], true);
    b.signal(18);
    fleet
        .all("rolled back everywhere, nothing pending", |v| {
            v["state"] == "rolled_back" && v["fleet"]["pending"].is_null()
        })
        .await;
    // At `b`, the rollback is the fleet's (a's), not its own halt's doing.
    let st = b.admin("status");
    let changes = st["changes"].as_array().expect("changes");
    let latest = &changes[0];
    assert_eq!(
        (latest["to_state"].as_str(), latest["command"].as_str()),
        (Some("rolled_back"), Some("fleet")),
        "{changes:?}"
    );
    assert!(
        !changes
            .iter()
            .any(|c| c["command"] == "halt" && c["to_state"] == "rolled_back"),
        "{changes:?}"
    );
    assert!(
        st["stopped"]["by"]
            .as_str()
            .is_some_and(|by| by.starts_with("admin")),
        "{st}"
    );
}

/// A port that takes connections and never answers: an etcd member that hangs.
async fn hung() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_instance_starting_behind_a_hung_first_endpoint_reads_the_fleet_s_state() {
    let (etcd, s, c) = etcd_and_backends().await;
    let a = Proxy::start(&yaml(
        &s,
        &c,
        &etcd.url(),
        "a",
        "id: hang\npercent: 10",
        true,
    ));
    assert_eq!(a.admin("set 30")["ok"], true);
    // `b` lists a member that hangs first, and has no cache: it must still start from the
    // fleet's state, not everyone on stable (nor, with a cache, an old state) until it catches up.
    let stuck = hung().await;
    let both = format!("http://{stuck}', '{}", etcd.url());
    let b = Proxy::start(&yaml(&s, &c, &both, "b", "id: hang\npercent: 10", false));
    let st = b.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["percent"].as_f64()),
        (Some("running"), Some(30.0)),
        "{st}"
    );
    assert!(st["state_file_error"].is_null(), "{st}");
}

/// A web server that answers every request 502 with an HTML page: a load balancer in front of
/// a dead etcd member, or the wrong port.
async fn not_etcd() -> std::net::SocketAddr {
    support::raw_upstream(|mut conn| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                return;
            }
            let page = "<html>bad gateway</html>";
            let reply = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
                page.len()
            );
            if conn.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_endpoint_that_answers_but_is_not_etcd_is_passed_over() {
    let (etcd, s, c) = etcd_and_backends().await;
    let bad = not_etcd().await;
    let both = format!("http://{bad}', '{}", etcd.url());
    let a = Proxy::start(&yaml(&s, &c, &both, "a", "id: lb\npercent: 10", true));
    let b = Proxy::start(&yaml(&s, &c, &etcd.url(), "b", "id: lb\npercent: 10", true));
    let fleet = Fleet {
        proxies: vec![a, b],
    };
    fleet
        .all("both connected", |v| v["fleet"]["connected"] == true)
        .await;
    assert_eq!(fleet.proxies[1].admin("rollback")["ok"], true);
    fleet
        .all(
            "the rollback reaches the instance behind the bad endpoint",
            |v| v["state"] == "rolled_back",
        )
        .await;
    assert_eq!(fleet.proxies[0].admin("resume")["ok"], true);
    fleet
        .all("and a change made there reaches the fleet", |v| {
            v["state"] == "running"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_step_due_while_etcd_is_away_says_why_it_waits() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let a = Proxy::start(&yaml(
        &s,
        &c,
        &etcd.url(),
        "a",
        "id: due\nsteps:\n  - {percent: 1, hold: 2s}\n  - {percent: 20}",
        true,
    ));
    let fleet = Fleet { proxies: vec![a] };
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    etcd.kill();
    let st = fleet
        .all_status("the step waits, saying why", |v| {
            v["schedule"]["held"]
                .as_str()
                .is_some_and(|h| h.contains("the next step is due but could not be saved"))
        })
        .await;
    assert_eq!(st["percent"].as_f64(), Some(1.0), "{st}");
    etcd.run().await;
    fleet
        .all("the step is taken when etcd is back", |v| {
            v["percent"].as_f64() == Some(20.0) && v["schedule"]["held"].is_null()
        })
        .await;
}

/// Edits `p`'s config file (`from` becomes `to`) while etcd is away, and waits until its reload
/// says it is read again when etcd answers.
async fn edit_while_away(p: &Proxy, from: &str, to: &str) {
    let text = std::fs::read_to_string(&p.config_path).expect("read config");
    support::replace_file(&p.config_path, &text.replace(from, to));
    support::eventually("the edit waits for etcd", || {
        p.admin("status")["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("read again when etcd answers again"))
    })
    .await;
}

/// Writes `value` into the fleet's key by hand (etcd's JSON gateway), or deletes the key.
async fn by_hand(etcd: &Etcd, value: Option<&str>) {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (path, body) = match value {
        Some(v) => (
            "/v3/kv/put",
            format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                b64("/ramp/rollouts/test"),
                b64(v)
            ),
        ),
        None => (
            "/v3/kv/deleterange",
            format!(r#"{{"key":"{}"}}"#, b64("/ramp/rollouts/test")),
        ),
    };
    let r = Client::http1()
        .send(
            http::Method::POST,
            &format!("{}{path}", etcd.url()),
            &[("content-type", "application/json")],
            bytes::Bytes::from(body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_key_written_by_hand_or_deleted_never_locks_the_fleet() {
    let (etcd, s, c) = etcd_and_backends().await;
    let mut fleet = Fleet::start(&s, &c, &etcd.url(), "id: hand\npercent: 10");
    fleet
        .all("every instance sees the start", |v| {
            v["fleet"]["connected"] == true && v["fleet"]["revision"].as_i64() > Some(0)
        })
        .await;
    // Something unreadable: the state in force stays, status says why, and the next change
    // (any command, not only a halt; even one that changes nothing) replaces it for every
    // instance.
    for (garbage, command, check) in [
        ("garbage{", "set 20", ("running", 20.0)),
        ("garbage{", "set 20", ("running", 20.0)),
        (
            r#"{"instance":"z","state":{"version":3}}"#,
            "halt",
            ("halted", 20.0),
        ),
    ] {
        by_hand(&etcd, Some(garbage)).await;
        fleet
            .all("the unreadable key is shown", |v| {
                v["state_file_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("holds something unreadable"))
            })
            .await;
        let r = fleet.proxies[1].admin(command);
        assert_eq!(r["ok"], true, "{command} after {garbage:?}: {r}");
        fleet
            .all(command, |v| {
                v["state"] == check.0
                    && v["percent"].as_f64() == Some(check.1)
                    && v["state_file_error"].is_null()
            })
            .await;
    }
    // Deleted: the next change writes it again.
    by_hand(&etcd, None).await;
    let r = fleet.proxies[2].admin("resume");
    assert_eq!(r["ok"], true, "resume after a delete: {r}");
    fleet
        .all("resume reaches every instance", |v| v["state"] == "running")
        .await;
    // A restart on an unreadable key serves the state the local cache holds, the last the fleet
    // held, as the instances that kept running do: the fleet does not split.
    by_hand(&etcd, Some("garbage{")).await;
    let (dir, path) = fleet.proxies.pop().expect("c").kill9();
    let c_again = Proxy::start_in(dir, path);
    let st = c_again.admin("status");
    assert_eq!(
        (st["rollout"].as_str(), st["state"].as_str()),
        (Some("hand"), Some("running")),
        "{st}"
    );
    assert!(
        st["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("/ramp/rollouts/test")),
        "{st}"
    );
    fleet.proxies.push(c_again);
    // Without a cache, a restart on the unreadable key starts on stable (it cannot know better),
    // and an operator's command there is not stuck behind it either.
    let restarted = Proxy::start(&yaml(
        &s,
        &c,
        &etcd.url(),
        "d",
        "id: hand\npercent: 10",
        true,
    ));
    assert_eq!(restarted.admin("status")["state"], "rolled_back");
    let r = restarted.admin("start again 30");
    assert_eq!(r["ok"], true, "{r}");
    fleet
        .all("the new rollout reaches every instance", |v| {
            v["rollout"] == "again" && v["percent"].as_f64() == Some(30.0)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_halt_waiting_for_a_hung_etcd_is_written_even_while_status_is_polled() {
    let (etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: hung\npercent: 50");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    etcd.pause(true);
    let r = fleet.proxies[0].admin("halt");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("written to the fleet as soon as etcd takes it")),
        "{r}"
    );
    // While etcd hangs, retrying the halt holds up neither status nor commands for long.
    for _ in 0..6 {
        let s = support::admin_within(&fleet.proxies[0].socket(), "status", Duration::from_secs(2));
        assert_eq!(s["fleet"]["pending"], "halt", "{s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    etcd.pause(false);
    // The status page polls every second, scrapers and scripts more often: the retry is not put
    // off by them.
    let at = &fleet.proxies[0];
    let mut written = false;
    for _ in 0..100 {
        if at.admin("status")["fleet"]["pending"].is_null() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(written, "the halt is still pending: {}", at.admin("status"));
    fleet
        .all("the halt reaches the fleet", |v| v["state"] == "halted")
        .await;
}

/// Copies a directory tree (etcd's data, while etcd is stopped).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let ok = Command::new("cp")
        .args(["-a", &from.display().to_string(), &to.display().to_string()])
        .status()
        .expect("cp");
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_etcd_wiped_or_restored_from_an_older_copy_never_splits_or_locks_the_fleet() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let fleet = Fleet::start(&s, &c, &etcd.url(), "id: reset\npercent: 10");
    let at = |percent: f64| move |v: &Value| v["percent"].as_f64() == Some(percent);
    assert_eq!(fleet.proxies[0].admin("set 40")["ok"], true);
    fleet.all("40% everywhere", at(40.0)).await;
    // A copy of etcd's data as it is now, for a restore later.
    etcd.kill();
    let copy = tempfile::tempdir().expect("tempdir");
    copy_tree(&etcd.data(), &copy.path().join("data"));
    etcd.run().await;
    assert_eq!(fleet.proxies[0].admin("set 41")["ok"], true);
    assert_eq!(fleet.proxies[0].admin("set 42")["ok"], true);
    fleet.all("42% everywhere", at(42.0)).await;
    // Restored from the older copy: the key says 40% at a revision the instances have passed.
    etcd.kill();
    std::fs::remove_dir_all(etcd.data()).expect("rm");
    copy_tree(&copy.path().join("data"), &etcd.data());
    etcd.run().await;
    // The newer state in force is written over it; no instance is left apart or locked.
    fleet
        .all("42% everywhere, connected", |v| {
            v["percent"].as_f64() == Some(42.0) && v["fleet"]["connected"] == true
        })
        .await;
    let r = fleet.proxies[2].admin("set 43");
    assert_eq!(r["ok"], true, "{r}");
    fleet.all("43% everywhere", at(43.0)).await;
    // Wiped: the key is gone and revisions start again from 1. A rollback made now reaches all.
    etcd.kill();
    std::fs::remove_dir_all(etcd.data()).expect("rm");
    etcd.run().await;
    let r = fleet.proxies[1].admin("rollback");
    assert_eq!(r["ok"], true, "{r}");
    fleet
        .all("rolled back everywhere", |v| v["state"] == "rolled_back")
        .await;
    let r = fleet.proxies[0].admin("resume");
    assert_eq!(r["ok"], true, "{r}");
    fleet
        .all("running again everywhere", |v| v["state"] == "running")
        .await;
    // Wiped again, and two operators at once: a halt at `a`, a `set` at `b` right after, which
    // knew nothing of the halt. The halt is not overwritten.
    etcd.kill();
    std::fs::remove_dir_all(etcd.data()).expect("rm");
    etcd.run().await;
    let r = fleet.proxies[0].admin("halt");
    assert_eq!(r["ok"], true, "{r}");
    let r = fleet.proxies[1].admin("set 50");
    assert_eq!(r["ok"], false, "a set overwrote a halt it never saw: {r}");
    fleet
        .all("halted everywhere", |v| v["state"] == "halted")
        .await;
}

/// A TCP relay to `to` that can be made to go silent without closing anything, as a member
/// behind a dropped route or a hung host does.
async fn relay(
    to: u16,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let silent = std::sync::Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let flag = std::sync::Arc::clone(&silent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut into, flag) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    std::sync::Arc::clone(&flag),
                ),
                (Box::new(sr), Box::new(cw), std::sync::Arc::clone(&flag)),
            ] {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if into.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, silent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_instance_whose_watch_goes_silent_still_takes_the_fleet_s_changes() {
    let (etcd, s, c) = etcd_and_backends().await;
    let (via, silent) = relay(etcd.client).await;
    // `a` reaches etcd through the relay first, then directly; `b` directly.
    let both = format!("http://{via}', '{}", etcd.url());
    let a = Proxy::start(&yaml(&s, &c, &both, "a", "id: quiet\npercent: 10", true));
    let b = Proxy::start(&yaml(
        &s,
        &c,
        &etcd.url(),
        "b",
        "id: quiet\npercent: 10",
        true,
    ));
    let fleet = Fleet {
        proxies: vec![a, b],
    };
    fleet
        .all("both connected", |v| v["fleet"]["connected"] == true)
        .await;
    silent.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fleet.proxies[1].admin("set 30")["ok"], true);
    fleet
        .all(
            "the change reaches the instance behind the silent relay",
            |v| v["percent"].as_f64() == Some(30.0),
        )
        .await;
    silent.store(false, std::sync::atomic::Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_restart_keeps_a_halt_etcd_never_took_and_gives_a_wiped_etcd_the_cached_state() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let mut fleet = Fleet::start(&s, &c, &etcd.url(), "id: keep\npercent: 30");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    // etcd goes away; a halt typed at `a` applies there and waits for etcd...
    etcd.kill();
    let r = fleet.proxies[0].admin("halt");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("as soon as etcd takes it")),
        "{r}"
    );
    // ...and `a` is restarted after etcd is back, once `b` has made a change there and stopped
    // with it in its cache.
    let (dir, path) = fleet.proxies.remove(0).kill9();
    etcd.run().await;
    fleet
        .all("b and c reconnect", |v| v["fleet"]["connected"] == true)
        .await;
    assert_eq!(fleet.proxies[0].admin("set 60")["ok"], true);
    let cache = fleet.proxies[0].dir.path().join("cache.json");
    support::eventually("b's cache holds 60%", || {
        std::fs::read_to_string(&cache).is_ok_and(|t| t.contains("\"percent_ppm\": 600000"))
    })
    .await;
    let (b_dir, b_path) = fleet.proxies.remove(0).kill9();
    let a = Proxy::start_in(dir, path);
    assert_eq!(a.admin("status")["state"], "halted", "the halt was lost");
    fleet.proxies.insert(0, a);
    fleet
        .all("the halt reaches the fleet", |v| {
            v["state"] == "halted" && v["fleet"]["pending"].is_null()
        })
        .await;
    // ...stamped with who typed it, not with the restart.
    for p in &fleet.proxies {
        let st = p.admin("status");
        assert_eq!(st["source"], "admin", "{st}");
    }
    // The key is deleted and `b` comes back, writing its cache (60%, before the halt) back: the
    // halt, a change made after it, stays.
    by_hand(&etcd, None).await;
    fleet.proxies.insert(1, Proxy::start_in(b_dir, b_path));
    fleet
        .all("still halted everywhere", |v| {
            v["state"] == "halted" && v["fleet"]["connected"] == true
        })
        .await;
    // etcd's data is wiped; `c` restarts and finds no key: its cache goes back into etcd.
    etcd.kill();
    std::fs::remove_dir_all(etcd.data()).expect("rm");
    etcd.run().await;
    let (dir, path) = fleet.proxies.remove(2).kill9();
    let c2 = Proxy::start_in(dir, path);
    assert_eq!(
        c2.admin("status")["state"],
        "halted",
        "started from the config"
    );
    fleet.proxies.push(c2);
    fleet
        .all("halted everywhere, connected", |v| {
            v["state"] == "halted" && v["fleet"]["connected"] == true
        })
        .await;
    assert_eq!(fleet.proxies[1].admin("resume")["ok"], true);
    fleet
        .all("running everywhere", |v| v["state"] == "running")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_stale_cache_written_back_never_undoes_a_later_change() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    let mut fleet = Fleet::start(&s, &c, &etcd.url(), "id: stale\npercent: 10");
    assert_eq!(fleet.proxies[0].admin("set 24")["ok"], true);
    fleet.all("24% everywhere", |v| v["percent"] == 24.0).await;
    // `c` stops with 24% in its cache; the fleet rolls back; the key is deleted by hand.
    let (c_dir, c_path) = fleet.proxies.remove(2).kill9();
    assert_eq!(fleet.proxies[0].admin("rollback")["ok"], true);
    fleet
        .all("rolled back", |v| v["state"] == "rolled_back")
        .await;
    by_hand(&etcd, None).await;
    // `c` starts, finds no key and writes its cache back: an older state, which must not win.
    fleet.proxies.push(Proxy::start_in(c_dir, c_path));
    fleet
        .all("still rolled back everywhere", |v| {
            v["state"] == "rolled_back" && v["fleet"]["connected"] == true
        })
        .await;
    // Two restarts after a wipe, the older cache first: the later change (resume) still wins.
    let (b_dir, b_path) = fleet.proxies.remove(1).kill9();
    assert_eq!(fleet.proxies[0].admin("resume")["ok"], true);
    let (a_dir, a_path) = fleet.proxies.remove(0).kill9();
    etcd.kill();
    std::fs::remove_dir_all(etcd.data()).expect("rm");
    etcd.run().await;
    let b = Proxy::start_in(b_dir, b_path);
    b.wait_status("b wrote its cache back", |v| {
        v["fleet"]["connected"] == true
    });
    let a = Proxy::start_in(a_dir, a_path);
    fleet.proxies.insert(0, a);
    fleet.proxies.insert(1, b);
    fleet
        .all("running (the resume) everywhere", |v| {
            v["state"] == "running" && v["percent"] == 24.0
        })
        .await;
    // A halt written by hand at the last generation any instance reads: taken, and the change
    // after it still reaches everyone.
    let cache = fleet.proxies[0].dir.path().join("cache.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).expect("cache")).expect("json");
    state["state"] = "halted".into();
    state["generation"] = 253_402_300_799_000u64.into();
    let envelope = serde_json::json!({"instance": "hand", "state": state});
    by_hand(&etcd, Some(&envelope.to_string())).await;
    fleet
        .all("halted by hand", |v| v["state"] == "halted")
        .await;
    assert_eq!(fleet.proxies[1].admin("resume")["ok"], true);
    fleet
        .all("the resume reaches everyone", |v| {
            v["state"] == "running" && v["state_file_error"].is_null()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_rollback_goes_before_a_change_waiting_for_a_hung_etcd_and_survives_kill_9() {
    let (etcd, s, c) = etcd_and_backends().await;
    let mut fleet = Fleet::start(&s, &c, &etcd.url(), "id: hung2\npercent: 50");
    fleet
        .all("connected", |v| v["fleet"]["connected"] == true)
        .await;
    // Users on canary at 50%.
    let on_canary: Vec<String> = (0..200)
        .map(|i| format!("u{i}"))
        .filter(|id| {
            let (_, out, _) =
                support::ramp(&["bucket", "--rollout", "hung2", "--percent", "50", id]);
            out.contains("canary")
        })
        .take(5)
        .collect();
    etcd.pause(true);
    // An operator's `set` waits for etcd, which hangs (seconds per endpoint)...
    let socket = fleet.proxies[0].socket();
    let set = std::thread::spawn(move || support::admin_at(&socket, "set 80"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...meanwhile status answers, with the state in force...
    let st = support::admin_within(&fleet.proxies[0].socket(), "status", Duration::from_secs(2));
    assert_eq!(st["percent"], 50.0, "{st}");
    assert!(!set.is_finished(), "etcd answered while stopped");
    // ...and a rollback goes first: in force at its reply, the `set` given up.
    let r = fleet.proxies[0].admin("rollback");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("as soon as etcd takes it")),
        "{r}"
    );
    for id in &on_canary {
        let got = Client::http1()
            .get(&fleet.proxies[0].url("/"), &[("x-user-id", id)])
            .await;
        assert_eq!(got.body, "stable", "{id} after the rollback's reply");
    }
    let set = set.join().expect("set");
    assert_eq!(set["ok"], false, "{set}");
    assert!(
        set["error"]
            .as_str()
            .is_some_and(|e| e.contains("went first")),
        "{set}"
    );
    // kill -9 before etcd ever answers: the rollback was kept in the local cache before its
    // reply, so the restart (still without etcd) starts rolled back...
    let (dir, path) = fleet.proxies.remove(0).kill9();
    let a = Proxy::start_in(dir, path);
    let st = a.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["fleet"]["pending"].as_str()),
        (Some("rolled_back"), Some("rollback")),
        "the rollback was lost: {st}"
    );
    fleet.proxies.insert(0, a);
    // ...and the whole fleet once etcd is back, at the percent it was rolled back at: the `set`
    // given up, which etcd may still take when it wakes, is not what `resume` goes back to.
    etcd.pause(false);
    fleet
        .all("the rollback reaches the fleet", |v| {
            v["state"] == "rolled_back" && v["fleet"]["pending"].is_null() && v["percent"] == 50.0
        })
        .await;
}

/// POSTs `body` to etcd's JSON gateway at `path` (with `token`, if any); the answer's JSON.
async fn gateway(etcd: &Etcd, path: &str, body: &str, token: Option<&str>) -> Value {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(t) = token {
        headers.push(("authorization", t));
    }
    let r = Client::http1()
        .send(
            http::Method::POST,
            &format!("{}{path}", etcd.url()),
            &headers,
            bytes::Bytes::from(body.to_owned()),
        )
        .await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn credentials_work_before_etcd_s_auth_is_turned_on_and_after_it_is_turned_off() {
    // The order a migration takes: every instance given its credentials first, then etcd's
    // auth turned on; and back.
    let (etcd, s, c) = etcd_and_backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("password");
    std::fs::write(&password, "pw\n").expect("write");
    let yaml = yaml(&s, &c, &etcd.url(), "a", "id: auth\npercent: 10", true).replace(
        "instance: a}",
        &format!(
            "instance: a, username: root, password_file: {}}}",
            password.display()
        ),
    );
    let proxy = Proxy::start(&yaml);
    let set = |percent: u32| {
        let r = proxy.admin(&format!("set {percent}"));
        assert_eq!(r["ok"], true, "set {percent}: {r}");
    };
    set(20);
    gateway(
        &etcd,
        "/v3/auth/user/add",
        r#"{"name":"root","password":"pw"}"#,
        None,
    )
    .await;
    gateway(
        &etcd,
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
        None,
    )
    .await;
    gateway(&etcd, "/v3/auth/enable", "{}", None).await;
    set(30);
    let token = gateway(
        &etcd,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        None,
    )
    .await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    gateway(&etcd, "/v3/auth/disable", "{}", Some(&token)).await;
    set(40);
    let st = proxy.admin("status");
    assert_eq!(st["fleet"]["connected"], true, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn an_instance_moved_to_another_fleet_s_key_never_writes_its_old_fleet_s_state_there() {
    let (etcd, s, c) = etcd_and_backends().await;
    // One fleet, on /ramp/rollouts/other, has pay-v3 halted at 5%...
    let other = |name, rollout| {
        yaml(&s, &c, &etcd.url(), name, rollout, true)
            .replace("/ramp/rollouts/test", "/ramp/rollouts/other")
    };
    let d = Proxy::start(&other("d", "id: pay-v3\npercent: 5"));
    d.wait_status("d connected", |v| v["fleet"]["connected"] == true);
    assert_eq!(d.admin("halt")["ok"], true);
    let changes = d.admin("status")["changes"].clone();
    // ...while `a` serves the fleet of /ramp/rollouts/test, where its cache comes to hold 35%, a
    // change made later than that halt.
    let a = Proxy::start(&yaml(&s, &c, &etcd.url(), "a", "id: r1\npercent: 5", true));
    assert_eq!(a.admin("set 35")["ok"], true);
    let cache = a.dir.path().join("cache.json");
    support::eventually("a's cache holds 35%", || {
        std::fs::read_to_string(&cache).is_ok_and(|t| t.contains("\"percent_ppm\": 350000"))
    })
    .await;
    // `a` is moved to the other fleet (given its config) and restarted.
    let (dir, path) = a.kill9();
    std::fs::write(&path, other("a", "id: pay-v3\npercent: 5")).expect("config");
    let a = Proxy::start_in(dir, path);
    let st = a.wait_status("a connected", |v| v["fleet"]["connected"] == true);
    let got = |st: &Value| {
        (
            st["rollout"].as_str().map(str::to_owned),
            st["state"].as_str().map(str::to_owned),
            st["percent"].as_f64(),
        )
    };
    let halted = (Some("pay-v3".into()), Some("halted".into()), Some(5.0));
    assert_eq!(got(&st), halted, "{st}");
    a.wait_log("the local cache holds the state of another fleet's key");
    // The other fleet's rollout is as it was, never changed by `a`; `a`'s cache is now of it.
    let st = d.admin("status");
    assert_eq!(got(&st), halted, "{st}");
    assert_eq!(st["changes"], changes, "{st}");
    support::eventually("a's cache holds the other fleet's state", || {
        std::fs::read_to_string(&cache)
            .is_ok_and(|t| t.contains("pay-v3") && t.contains("/ramp/rollouts/other"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_with_etcd),
    ignore = "needs etcd at /usr/bin/etcd (apt-get install etcd-server; .ci/run installs it)"
)]
async fn a_guard_s_rollback_made_during_an_outage_never_stops_a_rollout_begun_meanwhile() {
    let (mut etcd, s, c) = etcd_and_backends().await;
    c.set_failing(100);
    let fleet = Fleet::start(
        &s,
        &c,
        &etcd.url(),
        "id: r1\npercent: 50\nguard: {action: rollback}",
    );
    fleet.lose(&mut etcd).await;
    let (a, b) = (&fleet.proxies[0], &fleet.proxies[1]);
    // At `b`, the canary of r1 fails every request: its guard rolls r1 back there, to be
    // written when etcd answers.
    let client = Client::http1();
    for i in 0..1_500 {
        client
            .get(&b.url("/"), &[("x-user-id", &format!("u{i}"))])
            .await;
    }
    b.wait_status("b's guard acts", |v| {
        v["state"] == "rolled_back" && v["fleet"]["pending"] == "rollback"
    });
    // `b` sleeps through etcd's return, and meanwhile a fixed canary is started as r9 at `a`.
    b.signal(19);
    etcd.run().await;
    a.wait_status("a reaches etcd again", |v| v["fleet"]["connected"] == true);
    c.set_failing(0);
    assert_eq!(a.admin("start r9 5")["ok"], true);
    b.signal(18);
    // The verdict on r1 says nothing of r9: the fleet runs r9, `b` too.
    fleet
        .all("r9 runs everywhere, nothing pending", |v| {
            v["rollout"] == "r9" && v["fleet"]["pending"].is_null()
        })
        .await;
    for p in &fleet.proxies {
        let st = p.admin("status");
        assert_eq!(
            (st["state"].as_str(), st["percent"].as_f64()),
            (Some("running"), Some(5.0)),
            "{st}"
        );
    }
    b.wait_log("the guard's halt or rollback made here while etcd was away is not written");
}
