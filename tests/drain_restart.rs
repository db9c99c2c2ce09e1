//! Stopping and restarting ramp under load: SIGTERM drains, and a second ramp on the same port
//! (SO_REUSEPORT) takes over without a failed request.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::load::{Ids, Load};
use support::{Backend, CONTROL, Proxy, config, eventually};

/// The old ramp of a restart drains and exits 0, the new one answers `after` more of `load`'s
/// requests, and not one of them failed, before or after.
async fn drained_and_nothing_failed(old: &mut Proxy, load: Load, after: usize) {
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the old ramp did not drain and exit"
    );
    load.mark_after();
    load.wait("answers from the new ramp", |t| t.after.ok() >= after)
        .await;
    let tally = load.finish().await;
    let mut failed = tally.before.failed();
    failed.extend(tally.after.failed());
    assert!(
        failed.is_empty(),
        "{} failed requests during the restart: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let b = Backend::start("stable").await;
    let mut proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: d\npercent: 0",
        "shutdown_grace: 10s\n",
    ));
    let addr = proxy.addr;
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    // An idle keep-alive connection too.
    let mut idle = std::net::TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 1024];
    assert!(idle.read(&mut buf).expect("answer") > 0);
    eventually("the slow request reaches the upstream", || {
        b.in_flight() == 1
    })
    .await;
    proxy.signal(15);
    // The listening socket closes: new connections are refused (while the slow one goes on).
    eventually("the listener closes", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    let reply = slow.await.expect("slow");
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the in-flight request was cut: {reply:?}"
    );
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "the idle connection was not closed"
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_by_the_recipe_under_load_fails_no_request() {
    let b = Backend::start("stable").await;
    let extra = format!("sticky:\n  header: x-user-id\nshutdown_grace: 10s\n{CONTROL}");
    let mut old = Proxy::start(&config(&[&b], &[&b], "id: r\npercent: 0", &extra));
    old.pin_port();
    let load = Load::start(old.url("/"), 16, Ids::Distinct);
    load.wait("500 answers", |t| t.before.ok() >= 500).await;
    // The recipe: start the new ramp on the same address, then SIGTERM the old one.
    let new = old.start_successor();
    assert_eq!(new.addr, old.addr);
    old.signal(15);
    drained_and_nothing_failed(&mut old, load, 1000).await;
    let status = new.admin("status");
    assert_eq!(
        status["pid"].as_u64(),
        Some(u64::from(new.pid())),
        "the admin socket belongs to the new ramp"
    );
    assert!(
        new.socket().exists(),
        "the old ramp removed the new one's socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_taken_over_drains_and_exits_by_itself_and_its_stop_cuts_nothing() {
    let b = Backend::start("stable").await;
    let extra = format!("sticky:\n  header: x-user-id\nshutdown_grace: 20s\n{CONTROL}");
    let mut old = Proxy::start(&config(&[&b], &[&b], "id: r\npercent: 0", &extra));
    old.pin_port();
    let load = Load::start(old.url("/"), 8, Ids::Distinct);
    load.wait("200 answers", |t| t.before.ok() >= 200).await;
    // A request in flight at the old process when it is taken over.
    let addr = old.addr;
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /slow/4000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    eventually("the slow request reaches the upstream", || {
        b.in_flight() >= 1
    })
    .await;
    let new = old.start_successor();
    old.wait_log("a newer ramp has taken the admin socket over");
    old.wait_log("draining");
    // systemd's stop (or the recipe's SIGTERM) reaches a process draining already: it is no
    // second signal, and cuts nothing.
    old.signal(15);
    let reply = slow.await.expect("slow");
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the in-flight request was cut: {reply:?}"
    );
    drained_and_nothing_failed(&mut old, load, 500).await;
    assert_eq!(
        new.admin("status")["pid"].as_u64(),
        Some(u64::from(new.pid()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_while_draining_stops_at_once() {
    let b = Backend::start("stable").await;
    let mut proxy = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: d2\npercent: 0",
        "shutdown_grace: 60s\n",
    ));
    let addr = proxy.addr;
    let _slow = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /slow/30000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    });
    eventually("the slow request reaches the upstream", || {
        b.in_flight() == 1
    })
    .await;
    proxy.signal(15);
    proxy.wait_log("shutting down");
    // Draining: it would wait for the slow request, up to the 60 s grace.
    assert_eq!(proxy.wait_exit(Duration::from_millis(500)), None);
    proxy.signal(15);
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(10)),
        Some(1),
        "a second SIGTERM did not stop ramp"
    );
    proxy.wait_log("a second signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_before_a_takeover_changes_nothing_and_is_told_to_connect_again() {
    use std::io::BufRead;
    let b = Backend::start("stable").await;
    let extra = format!("sticky:\n  header: x-user-id\n{CONTROL}");
    let old = Proxy::start(&config(&[&b], &[&b], "id: r\npercent: 5", &extra));
    // An operator's session (socat, a script), opened before the restart and kept open.
    let session = std::os::unix::net::UnixStream::connect(old.socket()).expect("connect");
    session
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut lines = std::io::BufReader::new(session.try_clone().expect("clone")).lines();
    // The reply, or none when the old process has exited (it drains once taken over).
    let mut ask = |line: &str| -> Option<serde_json::Value> {
        (&session).write_all(format!("{line}\n").as_bytes()).ok()?;
        let reply = lines.next()?.ok()?;
        Some(serde_json::from_str(&reply).expect("JSON reply"))
    };
    let first = ask("status").expect("a reply");
    assert_eq!(first["pid"].as_u64(), Some(u64::from(old.pid())));
    let new = old.start_successor();
    assert_eq!(
        new.admin("status")["pid"].as_u64(),
        Some(u64::from(new.pid()))
    );
    // The old process must not take a halt the new one, serving from now on, would never see:
    // it refuses it (or has gone).
    if let Some(reply) = ask("halt") {
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("taken this admin socket over")),
            "{reply}"
        );
    }
    let text = std::fs::read_to_string(new.state_file()).unwrap_or_default();
    assert!(!text.contains("halted"), "{text}");
    // Connected again, the operator reaches the new one.
    assert_eq!(new.admin("halt")["state"], "halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_cannot_start_leaves_the_running_ramp_its_admin_socket() {
    let b = Backend::start("stable").await;
    let old = Proxy::start(&config(&[&b], &[&b], "id: r\npercent: 5", CONTROL));
    // The successor's config names a certificate file that holds no certificate.
    let cert = support::write(old.dir.path(), "cert.pem", "not a certificate\n");
    let next = support::write(
        old.dir.path(),
        "next.yaml",
        &format!(
            "listen: {}\npools: {{stable: ['{}'], canary: ['{}']}}\nrollout: {{id: r, percent: 5}}\nadmin: {{socket: {}}}\ntls: {{cert: {}, key: {}}}\n",
            old.addr,
            b.addr,
            b.addr,
            old.socket().display(),
            cert.display(),
            cert.display()
        ),
    );
    let (code, _, err) = support::ramp(&[
        "serve",
        "--config",
        next.to_str().expect("utf-8"),
        "--takeover",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no certificate"), "{err}");
    // The running ramp can still be halted.
    assert_eq!(
        old.admin("status")["pid"].as_u64(),
        Some(u64::from(old.pid()))
    );
    assert_eq!(old.admin("halt")["state"], "halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_short_of_descriptors_fails_before_taking_the_admin_socket() {
    let b = Backend::start("stable").await;
    let old = Proxy::start(&config(
        &[&b],
        &[&b],
        "id: r\npercent: 5",
        &format!("{CONTROL}metrics: {{listen: '127.0.0.1:0'}}\n"),
    ));
    let pinned = std::fs::read_to_string(&old.config_path)
        .expect("config")
        .replacen("127.0.0.1:0", &old.addr.to_string(), 1);
    let next = support::write(old.dir.path(), "next.yaml", &pinned);
    // Successors short of descriptors failed at one step or another of their start, some after
    // taking the admin socket (which they gave back); below 64 they now fail before taking
    // anything, saying why, and the running ramp keeps its socket.
    for limit in (10..=60).step_by(5).chain([63]) {
        let mut successor = std::process::Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .args([support::RAMP, "serve", "--takeover", "--config"])
            .arg(&next)
            .current_dir(old.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("prlimit");
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while successor.try_wait().expect("wait").is_none() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = successor.kill();
        let out = successor.wait_with_output().expect("output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{limit} descriptors: {err}");
        assert!(
            err.contains(&format!("the open files limit ({limit}) is below the 64")),
            "{err}"
        );
        assert!(!err.contains("given back"), "{err}");
        // The running ramp can still be reached, and halted.
        assert_eq!(
            old.admin("status")["pid"].as_u64(),
            Some(u64::from(old.pid())),
            "after a successor with {limit} descriptors: {err}"
        );
    }
    assert!(
        !std::fs::read_dir(old.dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".ramp-")),
        "a socket was left beside the path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_and_sigusr2_sent_by_a_log_rotation_script_leave_ramp_serving() {
    let b = Backend::start("stable").await;
    let mut proxy = Proxy::start(&config(&[&b], &[&b], "id: usr\npercent: 0", CONTROL));
    for (sig, name) in [(10, "SIGUSR1"), (12, "SIGUSR2")] {
        proxy.signal(sig);
        proxy.wait_log(name);
    }
    assert_eq!(
        proxy.wait_exit(Duration::from_millis(300)),
        None,
        "ramp ended"
    );
    let r = support::Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200);
}
