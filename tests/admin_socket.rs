//! The admin socket as a hostile or clumsy peer meets it: permissions, stale and live sockets,
//! garbage, oversized and non-UTF-8 lines, many clients at once, peers that are not allowed.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{Backend, CONTROL, Proxy, RAMP, config};

async fn start(admin_extra: &str) -> (Backend, Proxy) {
    let b = Backend::start("stable").await;
    let extra = CONTROL.replace(
        "  socket: admin.sock\n",
        &format!("  socket: admin.sock\n{admin_extra}"),
    );
    let proxy = Proxy::start(&config(&[&b], &[&b], "id: adm\npercent: 5", &extra));
    (b, proxy)
}

/// Sends raw lines on one connection; gives one parsed reply per line.
fn exchange(proxy: &Proxy, bytes: &[u8], replies: usize) -> Vec<Value> {
    let mut s = UnixStream::connect(proxy.socket()).expect("connect");
    s.write_all(bytes).expect("write");
    let mut r = BufReader::new(s);
    (0..replies)
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_0600_by_default_and_takes_the_configured_mode() {
    let (_b, proxy) = start("").await;
    let mode = std::fs::metadata(proxy.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let (_b2, proxy2) = start("  mode: \"0660\"\n  group: 0\n").await;
    let meta = std::fs::metadata(proxy2.socket()).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_empty_and_non_utf8_lines_get_errors_and_the_connection_lives() {
    let (_b, proxy) = start("").await;
    let mut input = Vec::new();
    input.extend_from_slice(b"launch rockets\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"\xff\xfe\xfd\n");
    input.extend_from_slice(b"set 12abc\n");
    input.extend_from_slice(&vec![b'x'; 200 * 1024]);
    input.extend_from_slice(b"\nset 1e400\nstatus\r\n");
    let replies = exchange(&proxy, &input, 7);
    let errors: Vec<&str> = replies[..6]
        .iter()
        .map(|r| r["error"].as_str().expect("error"))
        .collect();
    assert!(
        errors[0].starts_with("unknown command \"launch\""),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("empty command"), "{errors:?}");
    assert_eq!(errors[2], "the line is not UTF-8");
    assert!(errors[3].starts_with("bad percent \"12abc\""), "{errors:?}");
    assert_eq!(errors[4], "the line is longer than 65536 bytes");
    assert!(errors[5].starts_with("bad percent \"1e400\""), "{errors:?}");
    assert!(replies[..6].iter().all(|r| r["ok"] == false));
    assert_eq!(replies[6]["ok"], true, "the same connection still works");
    // A peer that connects and goes away mid-line changes nothing.
    let mut half = UnixStream::connect(proxy.socket()).expect("connect");
    half.write_all(b"promo").expect("write");
    drop(half);
    assert_eq!(proxy.admin("status")["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ctl_clients_at_once_all_get_answers() {
    let (_b, proxy) = start("").await;
    let socket = proxy.socket();
    let children: Vec<_> = (0..40)
        .map(|i| {
            let line = if i % 2 == 0 {
                "status".to_owned()
            } else {
                format!("set {}", i % 10)
            };
            Command::new(RAMP)
                .args(["ctl", "--json", "--socket", socket.to_str().expect("utf-8")])
                .args(line.split(' '))
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn ctl")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("ctl");
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["ok"], true);
    }
    // And 200 raw clients on threads, mixing reads and writes.
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                support::admin_at(&socket, if i % 3 == 0 { "set 7" } else { "status" })
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread")["ok"], true);
    }
    assert_eq!(proxy.admin("status")["percent"].as_f64(), Some(7.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_is_refused() {
    let b = Backend::start("stable").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A socket file whose server is gone.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("admin.sock")).expect("bind"));
    let yaml = config(&[&b], &[&b], "id: st\npercent: 5", CONTROL);
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, &yaml).expect("write");
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["ok"], true);
    // A second ramp on the same socket must not steal it.
    let out = Command::new(RAMP)
        .args(["serve", "--config"])
        .arg(&proxy.config_path)
        .output()
        .expect("second ramp");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another process is serving it"), "{err}");
    assert_eq!(
        proxy.admin("status")["ok"],
        true,
        "the first one still answers"
    );
}

fn run_as(uid: u32, socket: &std::path::Path, line: &str) -> Value {
    let out = Command::new(RAMP)
        .args(["ctl", "--json", "--socket", socket.to_str().expect("utf-8")])
        .args(line.split(' '))
        .uid(uid)
        .gid(uid)
        .output()
        .expect("ctl as another user");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: runs `ramp ctl` as two other uids"
)]
async fn peers_are_checked_by_uid() {
    assert!(
        nix::unistd::getuid().is_root(),
        "built by root, run by another user"
    );
    const NOBODY: u32 = 65534;
    const READER: u32 = 65533;
    let (_b, proxy) = start(&format!("  mode: \"0666\"\n  readonly_uids: [{READER}]\n")).await;
    // Let other users reach the socket inside the private temp dir.
    std::fs::set_permissions(proxy.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let refused = run_as(NOBODY, &proxy.socket(), "status");
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("permission denied")
                && e.contains(&format!("uid {NOBODY}"))
                && e.contains("admin.allowed_uids")),
        "{refused}"
    );
    assert_eq!(run_as(READER, &proxy.socket(), "status")["ok"], true);
    let halt = run_as(READER, &proxy.socket(), "halt");
    assert!(
        halt["error"]
            .as_str()
            .is_some_and(|e| e.contains("may only run status and bucket")),
        "{halt}"
    );
    assert_eq!(proxy.admin("status")["state"], "running", "nothing changed");
    assert!(
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("admin peer refused") && l.contains("65534"))
    );
    // A refused user looping on the socket does not fill the log: a line a second at most.
    let started = std::time::Instant::now();
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do {RAMP} ctl --socket {} status >/dev/null 2>&1; i=$((i+1)); done",
        proxy.socket().display()
    );
    let looped = Command::new("sh")
        .args(["-c", &script])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .expect("loop as another user");
    assert!(looped.success());
    let seconds = started.elapsed().as_secs();
    let lines = proxy
        .logs()
        .iter()
        .filter(|l| l.contains("admin peer refused"))
        .count();
    assert!(
        (1..=seconds as usize + 3).contains(&lines),
        "{lines} refusal lines for 200 refusals in {seconds} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_socket_is_made_again_with_its_mode_and_still_halts_the_rollout() {
    let (_b, proxy) = start("  mode: \"0660\"\n").await;
    std::fs::remove_file(proxy.socket()).expect("delete the socket");
    support::eventually("the socket is made again", || proxy.socket().exists()).await;
    let meta = std::fs::metadata(proxy.socket()).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    proxy.wait_log(
        "the admin socket was deleted, or left to a process that is gone: it is made again",
    );
    // The process still owns the rollout state: a halt is made and written, not refused as if a
    // successor had taken the socket over.
    let (code, out, err) = proxy.ctl(&["halt"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(proxy.admin("status")["state"], "halted");
    let saved = std::fs::read_to_string(proxy.state_file()).expect("state file");
    assert!(saved.contains("halted"), "{saved}");
    // And it keeps doing so however often the socket goes.
    std::fs::remove_file(proxy.socket()).expect("delete the socket again");
    support::eventually("the socket is made again", || proxy.socket().exists()).await;
    let (code, out, err) = proxy.ctl(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(proxy.admin("status")["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_is_not_ramp_at_the_path_takes_nothing_over() {
    let (b, proxy) = start("").await;
    std::fs::remove_file(proxy.socket()).expect("delete the socket");
    // Something else serves the path (a script, a test server) and answers every line.
    let rogue = std::os::unix::net::UnixListener::bind(proxy.socket()).expect("bind");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = std::sync::Arc::clone(&stop);
    rogue.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            match rogue.accept() {
                Ok((mut s, _)) => {
                    let mut line = String::new();
                    let _ = BufReader::new(s.try_clone().expect("clone")).read_line(&mut line);
                    let _ = s.write_all(b"{\"ok\":false,\"error\":\"i am not ramp\"}\n");
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    // Past several of ramp's one-second looks at the path: it still serves, changes nothing
    // of its own accord, and makes no claim of a successor.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let r = support::Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|l| l.contains("a newer ramp has taken the admin socket over")),
        "{:?}",
        proxy.logs()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().expect("rogue");
    std::fs::remove_file(proxy.socket()).expect("remove the rogue's socket");
    support::eventually("the socket is made again", || proxy.socket().exists()).await;
    assert_eq!(proxy.admin("halt")["state"], "halted");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_killed_after_taking_the_socket_leaves_the_running_ramp_reachable() {
    use std::os::unix::fs::MetadataExt;
    let b = Backend::start("stable").await;
    let yaml = config(&[&b], &[&b], "id: k\npercent: 5", CONTROL);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, &yaml).expect("write");
    let proxy = Proxy::start_in(dir, path.clone());
    assert_eq!(proxy.admin("set 6")["ok"], true);
    let ours = std::fs::metadata(proxy.socket()).expect("socket").ino();
    // The state file's lock held: a successor takes the socket's path, then waits there.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(proxy.dir.path().join("state.json.lock"))
        .expect("lock file");
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("flock");
    let mut successor = Command::new(RAMP)
        .args(["serve", "--takeover", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("successor");
    support::eventually("the successor takes the path", || {
        std::fs::metadata(proxy.socket()).is_ok_and(|m| m.ino() != ours)
    })
    .await;
    // Killed there (a SIGKILL, or a SIGTERM before its handlers are in place).
    successor.kill().expect("kill");
    successor.wait().expect("wait");
    drop(held);
    support::eventually("the running ramp answers at the path again", || {
        std::os::unix::net::UnixStream::connect(proxy.socket()).is_ok()
    })
    .await;
    let st = proxy.admin("halt");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(proxy.pid())), "{st}");
    assert_eq!(st["state"], "halted", "{st}");
    // The name the successor kept the running ramp's socket under is gone.
    let kept: Vec<_> = std::fs::read_dir(proxy.dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".old.sock"))
        .collect();
    assert!(kept.is_empty(), "{kept:?}");
}
