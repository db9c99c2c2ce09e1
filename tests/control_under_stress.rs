//! The control plane when its surroundings misbehave: a disk that stops answering under the state
//! file, a local peer that opens admin or metrics connections by the thousand, a script that
//! hands `ramp ctl` an argument with a line break in it, a state file kept behind a symlink.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Backend, CONTROL, Client, Proxy, admin_within, config, write};

fn yaml(s: &Backend, c: &Backend, rollout: &str, control: &str) -> String {
    config(
        &[s],
        &[c],
        rollout,
        &format!("sticky:\n  header: x-user-id\n{control}"),
    )
}

/// How many of `n` users (ids `tag-0`…) land on canary.
async fn users_on_canary(proxy: &Proxy, tag: &str, n: usize) -> usize {
    let client = Client::http1();
    let mut canary = 0;
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let r = client.get(&proxy.url("/"), &[("x-user-id", &id)]).await;
        assert_eq!(r.status.as_u16(), 200);
        canary += usize::from(r.body == "canary");
    }
    canary
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem of its own (an ext4 image on a loop device) that can be frozen: what a hung NFS
/// mount or a stalled disk looks like to the process writing to it.
struct Disk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

/// While it lives, the disk does not answer writes; dropped, it thaws. (Declared after the
/// proxy, it thaws first when a test fails: a process stuck writing to a frozen filesystem
/// cannot even be killed.)
struct Frozen(PathBuf);

impl Disk {
    fn new() -> Disk {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(16 << 20))
            .expect("image");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let (image, at) = (
            image.to_str().expect("utf-8"),
            mount.to_str().expect("utf-8"),
        );
        run("mkfs.ext4", &["-q", "-F", image]);
        run("mount", &["-o", "loop", image, at]);
        Disk { _dir: dir, mount }
    }

    /// The state file on this disk, and the config's admin and state sections with it.
    fn control(&self) -> (PathBuf, String) {
        let state = self.mount.join("state.json");
        let control = format!(
            "admin:\n  socket: admin.sock\nstate:\n  file: {}\n",
            state.display()
        );
        (state, control)
    }

    fn freeze(&self) -> Frozen {
        run("fsfreeze", &["-f", self.mount.to_str().expect("utf-8")]);
        Frozen(self.mount.clone())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_can_freeze),
    ignore = "needs root, loop devices, mkfs.ext4 and fsfreeze: mounts and freezes a filesystem"
)]
async fn a_disk_that_stops_answering_holds_up_neither_a_halt_nor_status() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let disk = Disk::new();
    let (state_path, control) = disk.control();
    let proxy = Proxy::start(&yaml(&s, &c, "id: frozen\npercent: 50", &control));
    assert_eq!(proxy.admin("status")["state"], "running");
    assert!(state_path.exists(), "the first state is saved");
    assert!(users_on_canary(&proxy, "before", 40).await > 0);

    let limit = Duration::from_secs(10);
    let file_says = |state: &str| {
        std::fs::read_to_string(&state_path)
            .unwrap_or_default()
            .contains(&format!("\"state\": \"{state}\""))
    };
    assert!(file_says("running"));

    // A halt while the disk does not answer.
    let frozen = disk.freeze();
    let halt = admin_within(&proxy.socket(), "halt", limit);
    assert_eq!(halt["ok"], false, "{halt}");
    assert_eq!(halt["in_effect"], true, "{halt}");
    let why = halt["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("halt is in effect") && why.contains("did not answer"),
        "{halt}"
    );
    // Status and other commands answer (a change that needs the disk is refused, and says why).
    let status = admin_within(&proxy.socket(), "status", limit);
    assert_eq!(status["state"], "halted");
    assert!(
        status["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{status}"
    );
    let start = admin_within(&proxy.socket(), "start other 10", limit);
    assert_eq!(start["ok"], false, "{start}");
    assert!(
        start["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("start not applied")),
        "{start}"
    );
    assert_eq!(
        admin_within(&proxy.socket(), "status", limit)["state"],
        "halted"
    );
    // The disk answers again: the halt is written, and the refused start never is, not even for
    // a moment (a crash then would bring it back).
    drop(frozen);
    let refused = || {
        std::fs::read_to_string(&state_path)
            .unwrap_or_default()
            .contains("\"other\"")
    };
    let mut halted = false;
    for _ in 0..400 {
        assert!(!refused(), "the refused start reached the file");
        if file_says("halted") {
            halted = true;
        }
        if halted && admin_within(&proxy.socket(), "status", limit)["state_file_error"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(halted, "the halt was never written");

    // A rollback while the disk does not answer: in force at once for everyone.
    let frozen = disk.freeze();
    let rollback = admin_within(&proxy.socket(), "rollback", limit);
    assert!(
        rollback["error"]
            .as_str()
            .is_some_and(|e| e.contains("rollback is in effect")),
        "{rollback}"
    );
    assert_eq!(users_on_canary(&proxy, "before", 40).await, 0);
    drop(frozen);
    proxy.wait_status("the rollback is saved", |s| s["state_file_error"].is_null());
    assert!(file_says("rolled_back"));
    let (dir, path) = proxy.kill9();
    let again = Proxy::start_in(dir, path);
    assert_eq!(again.admin("status")["state"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_behind_a_symlink_is_written_where_it_points() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let persistent = dir.path().join("persistent");
    std::fs::create_dir(&persistent).expect("dir");
    std::os::unix::fs::symlink("persistent/state.json", dir.path().join("state.json"))
        .expect("symlink");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &yaml(&s, &c, "id: linked\npercent: 5", CONTROL),
    );
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("set 6")["ok"], true);
    let link = std::fs::symlink_metadata(proxy.state_file()).expect("link");
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let text = std::fs::read_to_string(proxy.dir.path().join("persistent/state.json"))
        .expect("the file the link points to");
    assert!(text.contains("\"percent_ppm\": 60000"), "{text}");
    // Nothing else is left beside it.
    let names: Vec<String> = std::fs::read_dir(proxy.dir.path().join("persistent"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["state.json"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: only root may make a link that belongs to another user"
)]
async fn a_state_file_link_another_user_left_is_not_followed() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // What the link aims at: a file of ramp's user, beside the state file or anywhere.
    let victim = dir.path().join("victim.conf");
    std::fs::write(&victim, "precious\n").expect("victim");
    let link = dir.path().join("state.json");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).expect("lchown");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &yaml(&s, &c, "id: linked\npercent: 5", CONTROL),
    );
    let proxy = Proxy::start_in(dir, path);
    let status = proxy.admin("status");
    let error = status["state_file_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("does not follow"), "{status}");
    // An unusable state file leaves everyone on stable; resuming needs a write, which is refused.
    assert_eq!(status["state"], "rolled_back", "{status}");
    let reply = proxy.admin("resume");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not follow"),
        "{reply}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n",
        "the file the link aims at was overwritten"
    );
    // Users are still served.
    let reply = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: only root may give a file to another user"
)]
async fn a_state_file_another_user_put_in_a_shared_directory_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory every user may write, as /tmp is, and in it a state file of another user's
    // making: the whole rollout, completed, everyone on canary.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &yaml(&s, &c, "id: shared\npercent: 5", CONTROL),
    );
    let planted = r#"{"version": 2, "rollout": "shared", "state": "completed", "percent_ppm": 1000000, "schedule": null, "file_plan": {"id": "shared", "percent_ppm": 50000, "steps": null}, "plan_pending": false, "changed_at_unix_ms": 1, "changed_by": "startup"}"#;
    let state = dir.path().join("state.json");
    std::fs::write(&state, planted).expect("plant");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
    let proxy = Proxy::start_in(dir, path);
    let status = proxy.admin("status");
    assert_eq!(status["state"], "rolled_back", "{status}");
    assert!(
        status["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not trust")),
        "{status}"
    );
    let reply = Client::http1().get(&proxy.url("/"), &[]).await;
    assert_eq!(reply.body, "stable");
    // The operator's next change replaces the plant with a file of ramp's own (not the
    // planter's owner and mode), which a restart then reads.
    let reply = proxy.admin("start shared 7");
    assert_eq!(reply["ok"], true, "{reply}");
    let meta = std::fs::metadata(&state).expect("state");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (nix::unistd::geteuid().as_raw(), 0o644)
    );
    let (dir, path) = proxy.kill9();
    let again = Proxy::start_in(dir, path);
    let st = again.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["percent"].as_f64()),
        (Some("running"), Some(7.0)),
        "{st}"
    );
}

/// Lets this process open as many descriptors as it may.
fn more_descriptors() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count()
}

/// Waits (up to 10 s) until ramp holds at most `most` descriptors more than `before` (those it
/// refuses take a moment to close); gives how many it holds.
fn settles_at(pid: u32, before: usize, most: usize) -> usize {
    let mut held = 0;
    for _ in 0..200 {
        held = descriptors(pid).saturating_sub(before);
        if held <= most {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_silent_admin_connections_holds_few_descriptors_and_a_halt_gets_in() {
    more_descriptors();
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: burst\npercent: 50", CONTROL));
    let before = descriptors(proxy.pid());
    // All at once, sending nothing, from the operator's own uid.
    let burst: Vec<UnixStream> = (0..2000)
        .map(|_| UnixStream::connect(proxy.socket()).expect("connect"))
        .collect();
    // Past the uid's most, a newcomer is refused while the others have just connected (they
    // are about to send their command), and later closes the longest idle: either way ramp
    // holds no more than the most.
    let held = settles_at(proxy.pid(), before, 520);
    assert!(held <= 520, "ramp holds {held} descriptors for the burst");
    // Once they have sat idle a moment, the operator's halt replaces one of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let halt = admin_within(&proxy.socket(), "halt", Duration::from_secs(10));
    assert_eq!(
        (halt["ok"].as_bool(), halt["state"].as_str()),
        (Some(true), Some("halted"))
    );
    drop(burst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_kept_busy_with_commands_cannot_keep_a_halt_out() {
    more_descriptors();
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: busy\npercent: 50", CONTROL));
    // As many as the uid may hold, each sending a line every 200 ms (never idle for a second)
    // and reading none of the replies.
    let mut busy: Vec<UnixStream> = (0..512)
        .map(|_| UnixStream::connect(proxy.socket()).expect("connect"))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let sender = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            for c in &mut busy {
                let _ = c.write_all(b"status\n");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let halt = admin_within(&proxy.socket(), "halt", Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (halt["ok"].as_bool(), halt["state"].as_str()),
        (Some(true), Some("halted")),
        "{halt}"
    );
    sender.join().expect("sender");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_holds_a_bounded_number_of_connections_and_probes_get_in() {
    more_descriptors();
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(
        &s,
        &c,
        "id: scrape\npercent: 5",
        &format!("{CONTROL}metrics:\n  listen: 127.0.0.1:0\n"),
    ));
    let addr = proxy.metrics_addr();
    let before = descriptors(proxy.pid());
    // Connections that send half a request and wait, far more than the listener serves.
    let mut held: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    // The oldest were closed to make room: reading gives the end, not a wait.
    let first = held.first_mut().expect("first");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(first.read(&mut buf).expect("closed, not silent"), 0);
    let taken = settles_at(proxy.pid(), before, 260);
    assert!(taken <= 260, "ramp holds {taken} descriptors for them");
    // A health probe still gets in, and the proxy itself is untouched.
    let probe = Client::http1()
        .get(&format!("http://{addr}/healthz"), &[])
        .await;
    assert_eq!((probe.status.as_u16(), probe.body.as_str()), (200, "ok\n"));
    let r = Client::http1()
        .get(&proxy.url("/"), &[("x-user-id", "u")])
        .await;
    assert_eq!(r.status.as_u16(), 200);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_refuses_an_argument_that_would_split_or_carry_another_command() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: words\npercent: 5", CONTROL));
    for args in [
        &["bucket", "x\npromote"][..],
        &["bucket", "x\rpromote"],
        &["start", "", "1"],
        &["bucket", "john doe"],
        &["set", "5\n"],
    ] {
        let (code, out, err) = proxy.ctl(args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(
            err.contains("ramp ctl sends each argument as one word"),
            "{args:?}: {err}"
        );
    }
    let st = proxy.admin("status");
    assert_eq!(
        (st["rollout"].as_str(), st["state"].as_str()),
        (Some("words"), Some("running")),
        "nothing was run"
    );
    let (code, out, _) = proxy.ctl(&["bucket", "x"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_on_a_stopped_ramp_gives_up_after_its_timeout_and_says_the_command_may_still_apply() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&s, &c, "id: stopped\npercent: 5", CONTROL));
    let pid = Pid::from_raw(proxy.pid() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let (code, out, err) = proxy.ctl(&["--timeout", "300ms", "halt"]);
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("did not answer within 300ms"), "{err}");
    assert!(err.contains("takes effect if ramp reads it later"), "{err}");
    // As said: the halt was read once ramp ran again.
    proxy.wait_status("the halt is applied", |st| st["state"] == "halted");
    for bad in ["0s", "soon"] {
        let (code, _, err) = proxy.ctl(&["--timeout", bad, "status"]);
        assert_ne!(code, 0);
        assert!(err.contains("--timeout"), "{bad}: {err}");
    }
}

#[test]
fn ramp_raises_its_open_files_limit() {
    // Started with the usual soft limit, 1024.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        "listen: 127.0.0.1:0\npools:\n  stable: [127.0.0.1:9]\n  canary: [127.0.0.1:9]\nrollout:\n  id: fds\n  percent: 5\n",
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 1024 && exec {} serve --config {}",
            support::RAMP,
            path.display()
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("listening"))),
        "ramp did not start"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let _ = child.kill();
    let _ = child.wait();
    let row: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("row")
        .split_whitespace()
        .collect();
    let (soft, hard) = (row[3], row[4]);
    let (_, ours) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let ours = if ours == nix::sys::resource::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        ours.to_string()
    };
    assert_eq!((soft, hard), (&*ours, &*ours), "{limits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_can_freeze),
    ignore = "needs root, loop devices, mkfs.ext4 and fsfreeze: mounts and freezes a filesystem"
)]
async fn a_restart_reads_the_state_after_the_change_the_old_ramp_is_writing() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let disk = Disk::new();
    let (state_path, control) = disk.control();
    let old = Proxy::start(&yaml(&s, &c, "id: handover\npercent: 50", &control));
    assert_eq!(old.admin("status")["state"], "running");
    // A halt whose write the disk holds up for a second: it is acknowledged once it is written.
    let frozen = disk.freeze();
    let socket = old.socket();
    let halt = std::thread::spawn(move || admin_within(&socket, "halt", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1_200));
        drop(frozen);
    });
    // Meanwhile a restart: the successor takes the admin socket, then reads the state.
    let new = old.start_successor();
    thaw.join().expect("thaw");
    let halt = halt.join().expect("halt");
    assert_eq!(
        (&halt["ok"], &halt["state"]),
        (&true.into(), &"halted".into()),
        "{halt}"
    );
    // What the old ramp acknowledged, the successor starts from.
    let status = new.admin("status");
    assert_eq!(status["state"], "halted", "{status}");
    assert_eq!(status["pid"].as_u64(), Some(u64::from(new.pid())));
    // And from now on the old ramp changes nothing, even if a command reaches it.
    let text = std::fs::read_to_string(&state_path).unwrap_or_default();
    assert!(text.contains("\"state\": \"halted\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_admin_socket_or_a_fifo_for_the_lock_file_stops_no_change() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // A FIFO where the state file's lock file goes: never waited on, never used.
    let lock = dir.path().join("state.json.lock");
    nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &yaml(&s, &c, "id: gone\npercent: 5", CONTROL),
    );
    let proxy = Proxy::start_in(dir, path.clone());
    assert_eq!(proxy.admin("set 6")["ok"], true);
    proxy.wait_log("the state file's lock file is not used");
    // The admin socket deleted (a cleanup of /tmp, a slip of the hand): no successor took it,
    // so ramp still makes changes — here a config edit's new percent, saved as ever.
    std::fs::remove_file(proxy.socket()).expect("delete the socket");
    let text = std::fs::read_to_string(&path).expect("config");
    support::replace_file(&path, &text.replace("percent: 5", "percent: 7"));
    let state = proxy.state_file();
    support::eventually("the edit's percent is saved", || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("70000"))
    })
    .await;
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|l| l.contains("taken this admin socket over")),
        "{:#?}",
        proxy.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_can_freeze),
    ignore = "needs root, loop devices, mkfs.ext4 and fsfreeze: mounts a filesystem"
)]
async fn a_restart_on_a_state_file_remounted_read_only_serves_with_its_state() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let disk = Disk::new();
    let (_, control) = disk.control();
    let first = Proxy::start(&yaml(&s, &c, "id: ro\npercent: 5", &control));
    assert_eq!(first.admin("set 7")["ok"], true);
    let (dir, path) = first.kill9();
    // ext4's errors=remount-ro after a disk error, then a restart.
    run(
        "mount",
        &["-o", "remount,ro", disk.mount.to_str().expect("utf-8")],
    );
    let again = Proxy::start_in(dir, path);
    again.wait_log("state.file is on a read-only filesystem");
    let st = again.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["percent"].as_f64()),
        (Some("running"), Some(7.0)),
        "{st}"
    );
    // As while running: a change that must be saved is refused, a halt applies unsaved.
    assert_eq!(again.admin("set 9")["ok"], false);
    let (code, out, err) = again.ctl(&["halt"]);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(again.admin("status")["state"], "halted");
}
