//! What an unlucky operator or a hostile local user can do around ramp: start a second one on the
//! same port, restart with metrics on, crowd the admin socket, point it at a FIFO, rewrite the
//! config slowly, mistype commands, and read status when the config is broken.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use support::{Backend, CONTROL, Proxy, config, ramp, write};

fn yaml(s: &Backend, c: &Backend, rollout: &str, extra: &str) -> String {
    config(
        &[s],
        &[c],
        rollout,
        &format!("sticky:\n  header: x-user-id\n{CONTROL}{extra}"),
    )
}

/// Pins `127.0.0.1:0` in the proxy's file to the address it got, as an operator's file has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ramp_on_a_busy_port_is_an_error_unless_it_takes_over() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let first = Proxy::start(&yaml(&s, &c, "id: a\npercent: 0", ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let other = config(&[&s], &[&c], "id: b\npercent: 100", "")
        .replace("127.0.0.1:0", &first.addr.to_string());
    let path = write(dir.path(), "other.yaml", &other);
    let out = std::process::Command::new(support::RAMP)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&first.addr.to_string()) && err.contains("in use"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_recipe_works_with_metrics_on() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let mut old = Proxy::start(&yaml(
        &s,
        &c,
        "id: m\npercent: 0",
        "metrics: {listen: '127.0.0.1:0'}\n",
    ));
    old.pin_port();
    // Pin the metrics port as well.
    let metrics = old.metrics_addr().to_string();
    let text = std::fs::read_to_string(&old.config_path).expect("config");
    std::fs::write(&old.config_path, text.replace("127.0.0.1:0", &metrics)).expect("pin");
    let new = old.start_successor();
    assert_eq!(new.addr, old.addr);
    new.wait_log("metrics at /metrics");
    old.signal(15);
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    let body = support::Client::http1()
        .get(&format!("http://{metrics}/metrics"), &[])
        .await
        .body;
    assert!(body.contains("ramp_rollout_percent"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_connections_cannot_lock_out_a_halt() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: lock\npercent: 50", ""));
    // Far more connections than any limit, sending nothing, from the operator's own uid.
    let idle: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(proxy.socket()).expect("connect"))
        .collect();
    let socket = proxy.socket();
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"halt\n").expect("write");
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .expect("a reply in time");
        line
    })
    .await
    .expect("halt");
    let v: serde_json::Value = serde_json::from_str(&reply).expect("json");
    assert_eq!(
        (v["ok"].as_bool(), v["state"].as_str()),
        (Some(true), Some("halted"))
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_device_where_a_file_should_be_never_hangs_ramp() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("ramp.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    for args in [["check", "--config"], ["serve", "--config"]] {
        let mut cmd = std::process::Command::new(support::RAMP);
        let out = cmd.args(args).arg(&fifo).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a regular file"), "{args:?}: {err}");
    }
    // The state file: a FIFO, then /dev/zero. ramp starts, everyone on stable, and says why.
    for bad in ["fifo", "zero"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.json");
        match bad {
            "fifo" => nix::unistd::mkfifo(&state, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo"),
            _ => std::os::unix::fs::symlink("/dev/zero", &state).expect("symlink"),
        }
        let path = write(
            dir.path(),
            "ramp.yaml",
            &yaml(&s, &c, "id: f\npercent: 100", ""),
        );
        // `check` says so before any start, with what serve would do about it.
        let (code, _, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{bad}: {err}");
        assert!(
            err.contains("state.file: ")
                && err.contains("serve would start with everyone on stable"),
            "{bad}: {err}"
        );
        let mut proxy = Proxy::start_in(dir, path);
        let st = proxy.admin("status");
        assert_eq!(st["state"], "rolled_back", "{bad}: {st}");
        assert!(
            st["state_file_error"]
                .as_str()
                .is_some_and(|e| e.contains("not a regular file")),
            "{bad}: {st}"
        );
        let r = support::Client::http1()
            .get(&proxy.url("/"), &[("x-user-id", "u")])
            .await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
        proxy.signal(15);
        assert_eq!(proxy.wait_exit(Duration::from_secs(20)), Some(0), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_in_place_rewrite_never_undoes_a_rollback() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let full = yaml(&s, &c, "percent: 50\nid: adv-test", "");
    let proxy = Proxy::start(&full);
    assert_eq!(proxy.admin("rollback")["state"], "rolled_back");
    // An editor writes in place and pauses half way, after `id: adv-te`: a valid file, for a
    // moment, naming another rollout.
    let cut = full.find("id: adv-test").expect("id") + "id: adv-te".len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&proxy.config_path)
        .expect("open");
    f.write_all(&full.as_bytes()[..cut]).expect("first half");
    f.flush().expect("flush");
    proxy.wait_status("the half-written file is read", |v| {
        v["file_plan_pending"] == true
    });
    let st = proxy.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["rollout"].as_str()),
        (Some("rolled_back"), Some("adv-test")),
        "{st}"
    );
    f.write_all(&full.as_bytes()[cut..]).expect("second half");
    drop(f);
    // The half file lacked the admin and state sections (kept, "restart required"); the whole
    // file has them again.
    proxy.wait_status("the whole file is read", |v| {
        v["restart_required"]
            .as_array()
            .is_some_and(|r| r.is_empty())
    });
    let r = support::Client::http1()
        .get(&proxy.url("/"), &[("x-user-id", "anyone")])
        .await;
    assert_eq!(r.body, "stable");
    assert_eq!(proxy.admin("status")["state"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_works_while_the_config_is_broken_and_says_what_a_typo_means() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: ctl\npercent: 5", ""));
    // Break the file: bad values and an unknown key; admin.socket is still there.
    let broken = std::fs::read_to_string(&proxy.config_path)
        .expect("config")
        .replace("percent: 5", "percent: 500\n  colour: blue");
    std::fs::write(&proxy.config_path, broken).expect("write");
    let path = proxy.config_path.to_str().expect("utf-8").to_owned();
    let (code, out, err) = ramp(&["ctl", "--config", &path, "status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rollout     ctl"), "{out}");
    // RAMP_SOCKET names the socket too.
    let out = std::process::Command::new(support::RAMP)
        .args(["ctl", "set", "abc"])
        .env("RAMP_SOCKET", proxy.socket())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("not a number"), "{text}");
    assert!(!text.contains("NaN"), "{text}");
    // ...but a --config typed on the command line wins over a RAMP_SOCKET left set for another
    // ramp.
    let out = std::process::Command::new(support::RAMP)
        .args(["ctl", "--config", &path, "status"])
        .env("RAMP_SOCKET", "/nonexistent/other-ramp.sock")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("rollout     ctl"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_after_a_rollback_shows_the_share_users_get_and_the_plan_apart() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: eff\npercent: 5", ""));
    let st = proxy.admin("rollback");
    assert_eq!(
        (st["percent"].as_f64(), st["effective_percent"].as_f64()),
        (Some(5.0), Some(0.0))
    );
    let (code, out, _) = proxy.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("percent     0% now (rolled back)\n")
            && out.contains("resume      goes to 5%\n"),
        "{out}"
    );
    // No canary answer can come: the verdicts say why, not "300 more requests" (once the
    // analysis, which looks once a second, has seen the rollback).
    proxy.wait_status("the verdicts say why no data comes", |v| {
        v["analysis"]["errors"]["text"]
            == "not enough data: everyone is on stable (rolled back): no canary answers come until a `resume`"
    });
    let (_, out, _) = proxy.ctl(&["bucket", "u1"]);
    assert!(
        out.contains("pool stable (rollout eff rolled back from 5%: everyone on stable)"),
        "{out}"
    );
    let st = proxy.admin("promote");
    assert_eq!(st["effective_percent"].as_f64(), Some(100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_resume_does_when_the_file_s_steps_changed_meanwhile() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let steps = "id: st\nsteps:\n  - {percent: 30, hold: 1h}\n  - {percent: 100}";
    let proxy = Proxy::start(&yaml(&s, &c, steps, ""));
    assert_eq!(proxy.admin("rollback")["ok"], true);
    // The steps change while rolled back: 30% is no longer a step, and resume does not raise
    // exposure past it: it goes to the last step below, 10%.
    let edited = steps.replace(
        "  - {percent: 30, hold: 1h}",
        "  - {percent: 10, hold: 1h}\n  - {percent: 40, hold: 1h}",
    );
    std::fs::write(&proxy.config_path, yaml(&s, &c, &edited, "")).expect("edit");
    let st = proxy.admin("reload");
    assert_eq!(st["file_plan_pending"], true, "{st}");
    assert_eq!(
        st["on_resume"],
        serde_json::json!({"rollout": "st", "state": "running", "percent": 10.0, "step": 1, "steps": 3}),
        "{st}"
    );
    // The position in the steps the edit replaced is not shown as if it were in the new ones.
    assert_eq!(st["schedule"], Value::Null, "{st}");
    let (_, out, _) = proxy.ctl(&["status"]);
    assert!(
        out.contains("file plan   changed while rolled back; resume applies it\n")
            && out.contains("resume      goes to 10%, step 1 of 3\n")
            // The edit is the last change; who rolled back still shows.
            && out.contains(" rollback by admin (uid ")
            && out.contains("running 30% → rolled_back 30%"),
        "{out}"
    );
    let st = proxy.admin("resume");
    assert_eq!(
        (st["percent"].as_f64(), &st["on_resume"]),
        (Some(10.0), &Value::Null),
        "{st}"
    );
    assert_eq!(st["schedule"]["step"], 1, "{st}");
}

#[test]
fn check_names_every_unknown_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "typos.yaml",
        "listen: 127.0.0.1:8080\nlisten_port: 1\npools:\n  stable: [127.0.0.1:1]\n  canary: [127.0.0.1:2]\n  backup: []\nrollout:\n  id: r\n  precent: 5\nlimits:\n  max_conections: 5\n",
    );
    let (code, out, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    for (at, key) in [
        ("2:1", "listen_port"),
        ("6:3", "pools.backup"),
        ("9:3", "rollout.precent"),
        ("11:3", "limits.max_conections"),
    ] {
        assert!(
            err.contains(&format!("{at}: {key}: unknown key")),
            "{key} at {at}:\n{err}"
        );
    }
}

#[test]
fn the_demo_prints_commands_that_work_as_typed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut demo = std::process::Command::new(support::RAMP)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("demo");
    let stdout = demo.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ctl = loop {
        let line = lines.next().expect("the banner").expect("text");
        if let Some(i) = line.find("Drive the rollout: ") {
            let cmd = &line[i + "Drive the rollout: ".len()..];
            break cmd.split("   ").next().expect("command").trim().to_owned();
        }
    };
    let mut ok = false;
    for _ in 0..100 {
        let out = std::process::Command::new("sh")
            .args(["-c", &ctl])
            .output()
            .expect("sh");
        if out.status.success() {
            ok = String::from_utf8_lossy(&out.stdout).contains("rollout     demo");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(ok, "`{ctl}` did not work as typed");
}

#[test]
fn check_reports_unknown_keys_duplicates_and_bad_values_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "messy.yaml",
        "listen: 127.0.0.1:8080\nlisen: 1\npools:\n  stable: [127.0.0.1:1]\n  canary: [127.0.0.1:2]\nrollout:\n  id: r\n  percent: 200\nlimits:\n  max_header_bytes: 0\n  max_conections: 5\n",
    );
    let (code, _, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    for want in [
        "2:1: lisen: unknown key",
        "8:12: rollout.percent: must be between 0 and 100",
        "10:21: limits.max_header_bytes",
        "11:3: limits.max_conections: unknown key",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    let dup = write(
        dir.path(),
        "dup.yaml",
        "listen: 127.0.0.1:8080\nlisten: 127.0.0.1:8081\nlisen: 1\npools:\n  stable: [127.0.0.1:1]\n  canary: [127.0.0.1:2]\nrollout: {id: r, percent: 5}\n",
    );
    let (_, _, err) = ramp(&["check", "--config", dup.to_str().expect("utf-8")]);
    assert!(err.contains("lisen: unknown key"), "{err}");
    assert!(err.contains("duplicate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_finds_the_socket_even_in_a_file_that_is_not_yaml_any_more() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: y\npercent: 5", ""));
    let good = std::fs::read_to_string(&proxy.config_path).expect("config");
    let path = proxy.config_path.to_str().expect("utf-8").to_owned();
    for broken in [
        good.replace("percent: 5", "percent: 5\n  percent: 6"),
        good.replace("id: y", "id: 'y"),
        format!("{good}\npools: [unclosed\n"),
        // The admin section in flow style, and the file broken below it.
        format!(
            "{}\npools: [unclosed\n",
            good.replace(
                "admin:\n  socket: admin.sock\n",
                "admin: {socket: admin.sock, mode: \"0600\"}\n"
            )
        ),
    ] {
        std::fs::write(&proxy.config_path, &broken).expect("write");
        let (code, out, err) = ramp(&["ctl", "--config", &path, "status"]);
        assert_eq!(code, 0, "{broken}\n{out}{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_at_the_state_path_is_never_replaced() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    nix::unistd::mkfifo(&state, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &yaml(&s, &c, "id: keep\npercent: 5", ""),
    );
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["state"], "rolled_back");
    let r = proxy.admin("resume");
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("refusing to replace it")),
        "{r}"
    );
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(proxy.state_file()).expect("still there");
    assert!(kind.file_type().is_fifo(), "the FIFO was replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_the_old_process_changes_nothing_before_its_sigterm() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    // A schedule that would step twice in the minutes a restart takes.
    let old = Proxy::start(&yaml(
        &s,
        &c,
        "id: t\nsteps:\n  - {percent: 1, hold: 2s}\n  - {percent: 50, hold: 2s}\n  - {percent: 100}",
        "",
    ));
    old.pin_port();
    let new = old.start_successor();
    new.wait_status("the successor answers", |v| {
        v["pid"].as_u64() == Some(u64::from(new.pid()))
    });
    old.wait_log("a newer ramp has taken the admin socket over");
    // The operator rolls back at the new process, before the old one's SIGTERM.
    assert_eq!(new.admin("rollback")["ok"], true);
    // Past both of the old schedule's holds: the file still holds the rollback.
    std::thread::sleep(Duration::from_millis(5_000));
    let text = std::fs::read_to_string(new.state_file()).expect("state");
    assert!(text.contains("\"state\": \"rolled_back\""), "{text}");
    drop(old);
    let (dir, path) = new.kill9();
    let again = Proxy::start_in(dir, path);
    assert_eq!(again.admin("status")["state"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_takeover_every_new_scrape_reaches_the_successor() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let old = Proxy::start(&yaml(
        &s,
        &c,
        "id: m\npercent: 5",
        "metrics: {listen: '127.0.0.1:0'}\n",
    ));
    old.pin_port();
    let metrics = old.metrics_addr();
    let text = std::fs::read_to_string(&old.config_path).expect("config");
    std::fs::write(
        &old.config_path,
        text.replace("127.0.0.1:0", &metrics.to_string()),
    )
    .expect("pin the metrics port");
    let pid_of = |reply: &str| {
        let at = reply.find("\"pid\":").map(|i| i + 6);
        at.map(|i| {
            reply[i..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
    };
    let scrape = || {
        let mut s = std::net::TcpStream::connect(metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        pid_of(&out)
    };
    // Scraped all through the handover, as a scraper may: the old process's counters are never
    // read after the new one's (which would look like a reset and a jump). Both could listen on
    // the address (SO_REUSEPORT), and a new connection reach either.
    let new = old.start_successor();
    let (old_pid, new_pid) = (old.pid().to_string(), new.pid().to_string());
    let mut seen = Vec::new();
    let start = std::time::Instant::now();
    while !old
        .logs()
        .iter()
        .any(|l| l.contains("a newer ramp has taken the admin socket over"))
        || seen.last() != Some(&new_pid)
    {
        assert!(start.elapsed() < Duration::from_secs(20), "{seen:?}");
        if let Some(pid) = scrape()
            && seen.last() != Some(&pid)
        {
            assert!(
                !seen.contains(&pid),
                "old {old_pid}, new {new_pid}: {seen:?} then {pid}"
            );
            seen.push(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    new.wait_status("the successor answers", |v| {
        v["pid"].as_u64() == Some(u64::from(new.pid()))
    });
    // Only the successor answers now.
    for _ in 0..20 {
        let reply = support::raw(
            metrics,
            b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            pid_of(&reply),
            Some(new.pid().to_string()),
            "old {}: {reply}",
            old.pid()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_of_the_logs_stops_neither_the_proxy_nor_a_halt() {
    // journald on a hung disk, a blocking log driver, a stopped `| tee`: once the pipe is full,
    // a process that writes its logs there itself waits with it.
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &yaml(
            &s,
            &c,
            "id: logs\npercent: 100",
            "metrics: {listen: '127.0.0.1:0'}\n",
        ),
    );
    let mut child = std::process::Command::new(support::RAMP)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info,mio=trace")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ramp");
    // Read until ramp listens, then never again (the pipe stays open).
    let mut stalled = BufReader::new(child.stderr.take().expect("stderr"));
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let (mut proxy, mut metrics) = (None, None);
    while proxy.is_none() {
        let mut line = String::new();
        if stalled.read_line(&mut line).expect("a log line") == 0 {
            panic!("ramp ended before it listened");
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
        match v["fields"]["message"].as_str() {
            Some("metrics at /metrics") => metrics = addr,
            Some("listening") => proxy = addr,
            _ => {}
        }
    }
    let (proxy, metrics): (std::net::SocketAddr, std::net::SocketAddr) =
        (proxy.expect("proxy"), metrics.expect("metrics"));
    // mio traced, each connection writes a few lines: far more than a pipe holds (64 KiB), until
    // lines are dropped rather than waited for. Before, the first full pipe stopped everything.
    let client = support::Client::http1();
    let dropped = || async {
        let text = client
            .get(&format!("http://{metrics}/metrics"), &[])
            .await
            .body;
        text.lines()
            .find_map(|l| l.strip_prefix("ramp_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let flood = async {
        for round in 0..60 {
            let answers = tokio::task::spawn_blocking(move || {
                (0..500)
                    .map(|_| {
                        support::status_of(&support::raw(
                            proxy,
                            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        ))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .expect("client");
            assert!(
                answers.iter().all(|&s| s == 200),
                "round {round}: {answers:?}"
            );
            if dropped().await > 0.0 {
                return;
            }
        }
        panic!("no log line was ever dropped");
    };
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the proxy stopped answering while its log reader stalled");
    let socket = dir.path().join("admin.sock");
    let halt = tokio::task::spawn_blocking(move || support::admin_at(&socket, "halt"));
    let reply = tokio::time::timeout(Duration::from_secs(10), halt)
        .await
        .expect("a halt got no reply while the log reader stalled")
        .expect("admin client");
    assert_eq!(reply["ok"], true, "{reply}");
    // The reader comes back: one line says how many were dropped, all of them.
    let said = std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            if stalled.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            if line.contains("log lines dropped") {
                let v: serde_json::Value = serde_json::from_str(&line).ok()?;
                return v["fields"]["dropped"].as_f64();
            }
        }
    });
    let said = tokio::task::spawn_blocking(move || said.join().expect("reader"))
        .await
        .expect("reader")
        .expect("a line saying how many were dropped");
    assert_eq!(said, dropped().await, "dropped lines said and counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_does_not_wait_for_a_large_config_file_to_be_parsed() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let good = yaml(&s, &c, "id: big\npercent: 50", "");
    let proxy = Proxy::start(&good);
    // 150,000 mistaken keys: seconds of parsing before the reload is refused.
    let typos: String = (0..150_000).map(|i| format!("typo_{i}: 1\n")).collect();
    std::fs::write(&proxy.config_path, format!("{good}{typos}")).expect("write");
    let socket = proxy.socket();
    let started = std::time::Instant::now();
    let reload = std::thread::spawn(move || {
        let reply = support::admin_at(&socket, "reload");
        (reply, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let halt = proxy.admin("halt");
    let halted_after = started.elapsed();
    assert_eq!(halt["ok"], true, "{halt}");
    let (reload, reloaded_after) = reload.join().expect("reload");
    assert_eq!(reload["ok"], false, "{reload}");
    assert!(
        halted_after < reloaded_after,
        "the halt ({halted_after:?}) waited for the reload ({reloaded_after:?})"
    );
    assert_eq!(proxy.admin("status")["state"], "halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_a_full_disk_refuses_are_counted_and_cost_no_request() {
    // stderr sent to a file on a full disk: every write fails with ENOSPC, as /dev/full's do.
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("no /dev/full here: skipped");
        return;
    };
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    // Nothing in the log says where ramp listens: free ports, picked here.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (proxy, metrics) = (free(), free());
    let dir = tempfile::tempdir().expect("tempdir");
    let text = yaml(
        &s,
        &c,
        "id: full\npercent: 0",
        &format!("metrics: {{listen: '{metrics}'}}\n"),
    )
    .replacen("127.0.0.1:0", &proxy.to_string(), 1);
    let path = write(dir.path(), "ramp.yaml", &text);
    let child = std::process::Command::new(support::RAMP)
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(full)
        .spawn()
        .expect("spawn ramp");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(metrics).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = support::Client::http1();
    let url = format!("http://{metrics}/metrics");
    let mut dropped = 0.0;
    for _ in 0..100 {
        let text = client.get(&url, &[]).await.body;
        dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("ramp_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // At least the start-up's lines (listening, metrics at, ...).
    assert!(dropped >= 2.0, "log lines lost to the full disk: {dropped}");
    let r = client
        .get(&format!("http://{proxy}/"), &[("x-user-id", "u")])
        .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "stable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_that_cannot_be_saved_is_in_force_and_ctl_tells_it_from_a_failure() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("st");
    std::fs::create_dir(&state_dir).expect("mkdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &config(
            &[&s],
            &[&c],
            "id: unsaved\npercent: 100",
            "sticky:\n  header: x-user-id\nadmin:\n  socket: admin.sock\nstate:\n  file: st/state.json\n",
        ),
    );
    let proxy = Proxy::start_in(dir, path);
    // The state file's directory goes away (a volume unmounted, a clean-up script).
    std::fs::remove_dir_all(&state_dir).expect("rm");
    let (code, out, err) = proxy.ctl(&["halt"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.starts_with("not saved: halt is in effect"), "{out}");
    let (code, out, _) = proxy.ctl(&["--json", "rollback"]);
    assert_eq!(code, 3, "{out}");
    let reply: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (&reply["ok"], &reply["in_effect"]),
        (&Value::Bool(false), &Value::Bool(true))
    );
    assert_eq!(proxy.admin("status")["state"], "rolled_back");
    let r = support::Client::http1()
        .get(&proxy.url("/"), &[("x-user-id", "u")])
        .await;
    assert_eq!(r.body, "stable");
    // A change that needs the save is refused, and that is a failure.
    let (code, out, _) = proxy.ctl(&["resume"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("error: "), "{out}");
}
