//! The `ramp` commands an operator types: serve (and its failures), bucket, demo.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Client, RAMP, ramp, write};

#[test]
fn serve_refuses_an_invalid_config_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        "listen: nowhere\npools: {stable: [a:1], canary: [b:1]}\nrollout: {id: r, percent: 500}\n",
    );
    let (code, out, err) = ramp(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("ramp: invalid config: "), "{err}");
    assert!(lines[0].contains("ramp.yaml:1:9: listen:"), "{err}");
    assert!(lines[0].contains("(and 1 more: run `ramp check`)"), "{err}");
    // Under `--log-format json`, the same reason as a JSON line.
    let (code, _, err) = ramp(&[
        "serve",
        "--log-format",
        "json",
        "--config",
        path.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        last_message(&err).starts_with("ramp: invalid config: "),
        "{err}"
    );
}

#[test]
fn serve_on_a_busy_port_exits_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "listen: {addr}\npools: {{stable: ['127.0.0.1:1'], canary: ['127.0.0.1:2']}}\nrollout: {{id: r, percent: 1}}\n"
    );
    let path = write(dir.path(), "ramp.yaml", &yaml);
    let (code, _, err) = ramp(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    let last = err.lines().last().expect("a reason");
    assert_eq!(
        last,
        format!(
            "ramp: cannot listen on {addr}: address in use by another process (to restart ramp on it, start the new one with --takeover)"
        )
    );
    // The same for the metrics listener, named as such.
    let yaml = format!(
        "listen: 127.0.0.1:0\npools: {{stable: ['127.0.0.1:1'], canary: ['127.0.0.1:2']}}\nrollout: {{id: r, percent: 1}}\nmetrics: {{listen: '{addr}'}}\n"
    );
    let path = write(dir.path(), "ramp.yaml", &yaml);
    let (code, _, err) = ramp(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    let last = err.lines().last().expect("a reason");
    assert!(
        last.starts_with(&format!(
            "ramp: metrics.listen: cannot listen on {addr}: address in use"
        )),
        "{err}"
    );
}

#[test]
fn serve_without_its_certificate_says_so_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "listen: 127.0.0.1:0\npools: {{stable: ['127.0.0.1:1'], canary: ['127.0.0.1:2']}}\nrollout: {{id: r, percent: 1}}\ntls: {{cert: '{m}', key: '{m}'}}\n",
        m = missing.display()
    );
    let path = write(dir.path(), "ramp.yaml", &yaml);
    let (code, _, err) = ramp(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    let last = err.lines().last().expect("a reason");
    assert!(last.starts_with("ramp: tls.cert: "), "{err}");
    assert_eq!(last.matches("cannot read").count(), 1, "{err}");
}

#[test]
fn ctl_says_what_is_wrong_with_the_socket_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "notes.txt", "not a socket");
    let ctl = |env: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(RAMP);
        cmd.arg("ctl")
            .args(args)
            .arg("status")
            .env_remove("RAMP_SOCKET");
        if let Some(v) = env {
            cmd.env("RAMP_SOCKET", v);
        }
        let out = cmd.output().expect("ramp ctl");
        assert_ne!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).trim_end().to_owned()
    };
    let d = dir.path().to_str().expect("utf-8");
    assert_eq!(
        ctl(None, &["--socket", d]),
        format!(
            "ramp: {d} is a directory, not a socket: give the admin socket's path (admin.socket)"
        )
    );
    let f = file.to_str().expect("utf-8");
    assert_eq!(
        ctl(Some(f), &[]),
        format!("ramp: {f} is a file, not a socket: give the admin socket's path (admin.socket)")
    );
    // An empty RAMP_SOCKET is as good as none, not a missing --socket value.
    assert_eq!(
        ctl(Some(""), &[]),
        "ramp: give --socket PATH, --config PATH or set RAMP_SOCKET"
    );
}

#[test]
fn check_reads_the_files_the_config_names_as_serve_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let path = write(
        dir.path(),
        "ramp.yaml",
        &format!(
            "listen: 127.0.0.1:0\npools: {{stable: ['127.0.0.1:9'], canary: ['127.0.0.1:9']}}\nrollout: {{id: r, percent: 5}}\nstate:\n  etcd: {{endpoints: ['http://127.0.0.1:2379'], key: /k, username: ramp, password_file: {d}}}\n"
        ),
    );
    let (code, _, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("password_file") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn bucket_prints_the_documented_bucket_and_pool() {
    let (code, out, err) = ramp(&[
        "bucket",
        "--rollout",
        "demo",
        "--percent",
        "10",
        "user-1",
        "user-2",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["user-1", "704311", "70.4312%", "stable"]);
    assert_eq!(rows[1], ["user-2", "84390", "8.4391%", "canary"]);
    let (code, _, err) = ramp(&["bucket", "--rollout", "demo", "--percent", "100.5", "x"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--percent: bad percent \"100.5\": must be between 0 and 100"),
        "{err}"
    );
    // Written as `ramp ctl set` takes it.
    let (code, out, err) = ramp(&["bucket", "--rollout", "demo", "--percent", "10%", "user-2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.ends_with("canary")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_v1_and_v2_behind_the_proxy() {
    let mut child = Command::new(RAMP)
        .args(["demo", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "listening" {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("demo listening");
    let client = Client::http1();
    let mut versions = std::collections::HashMap::new();
    for i in 0..200 {
        let id = format!("user-{i}");
        let r = client
            .get(&format!("http://{addr}/"), &[("x-user-id", &id)])
            .await;
        assert_eq!(r.status, 200);
        let v = if r.body.contains("Hello from v2") {
            "v2"
        } else {
            "v1"
        };
        *versions.entry(v).or_insert(0) += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    let v2 = versions.get("v2").copied().unwrap_or(0);
    assert!((5..=40).contains(&v2), "v2 served {v2} of 200 users at 10%");
}

#[test]
fn bucket_piped_into_a_reader_that_stops_early_ends_quietly() {
    use std::io::BufRead;
    let ids: Vec<String> = (0..50_000).map(|i| format!("user-{i}")).collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramp"))
        .args(["bucket", "--rollout", "r", "--percent", "5"])
        .args(&ids)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // As `| head -1` does: one line, then the pipe is closed.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("line");
    assert!(first.starts_with("user id"), "{first}");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn ctl_options_typed_after_the_command_are_named_not_sent() {
    for args in [
        [
            "ctl",
            "--socket",
            "/nonexistent/ramp.sock",
            "halt",
            "--json",
        ],
        [
            "ctl",
            "--socket",
            "/nonexistent/ramp.sock",
            "set",
            "--timeout=5s",
        ],
    ] {
        let (code, _, err) = ramp(&args);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("comes after the command"), "{err}");
        assert!(!err.contains("cannot connect"), "it tried to send: {err}");
    }
}

#[test]
fn ctl_words_that_look_like_options_or_several_ids_are_refused_not_sent() {
    let socket = ["ctl", "--socket", "/nonexistent/ramp.sock"];
    for (words, says) in [
        // Sent, it would start a rollout named `--help`: a new group of users on the canary.
        (&["start", "--help"][..], "looks like an option"),
        (&["start", "r2", "-h"][..], "looks like an option"),
        // An em dash is what autocorrect makes of `--`; a rollout id is never a number.
        (&["start", "\u{2014}help"][..], "looks like an option"),
        (&["start", "-9"][..], "looks like an option"),
        (&["--jsn", "status"][..], "is not an option of ramp ctl"),
        (&["bucket", "user-1", "user-2"][..], "takes one user id"),
        (&["bucket", "--", "user-1", "user-2"][..], "was given 2:"),
        (&["bucket", "user-1", "--", "user-2"][..], "was given 2:"),
        (&["bucket", "--"][..], "was given 0:"),
        (
            &["bucket", "--json", "user-1"][..],
            "comes after the command",
        ),
    ] {
        let args: Vec<&str> = socket.iter().chain(words).copied().collect();
        let (code, _, err) = ramp(&args);
        assert_eq!(code, 1, "{words:?}: {err}");
        assert!(err.contains(says), "{words:?}: {err}");
        assert!(!err.contains("cannot connect"), "it tried to send: {err}");
    }
    // A negative number is ramp's to refuse, with its reason; a user id may begin with `-`.
    for words in [
        &["set", "-5"][..],
        &["bucket", "-Ab3"],
        &["bucket", "--", "-Ab3"],
        // After `--`, as with `ramp bucket`, a word is an id even when it is one of ctl's options.
        &["bucket", "--", "--json"],
    ] {
        let args: Vec<&str> = socket.iter().chain(words).copied().collect();
        let (code, _, err) = ramp(&args);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("cannot connect"), "{words:?}: {err}");
    }
}

/// `ramp serve` of a config asking for two runtime workers, run under `limit` (a `prlimit`
/// option: `--nproc=4`, `--nofile=40`) as nobody when the tests run as root (whom a limit on
/// processes does not bind); its exit code, or None if it was still running after 30 s, and
/// its stderr.
fn serve_with_limit(limit: &str) -> (Option<i32>, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // A copy nobody may run, whatever the directories above the build's allow.
    let bin = dir.path().join("ramp");
    std::fs::copy(RAMP, &bin).expect("copy ramp");
    let path = write(
        dir.path(),
        "ramp.yaml",
        "listen: 127.0.0.1:0\nworkers: 2\npools: {stable: ['127.0.0.1:1'], canary: ['127.0.0.1:2']}\nrollout: {id: r, percent: 1}\n",
    );
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "prlimit",
        ]);
        c
    } else {
        Command::new("prlimit")
    };
    let mut child = cmd
        .arg(limit)
        .arg(&bin)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setpriv/prlimit (util-linux)");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut err = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        while let Ok(line) = rx.try_recv() {
            err.push_str(&line);
            err.push('\n');
        }
        if err.contains("\"listening\"") {
            break None;
        }
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        err.push_str(&line);
        err.push('\n');
    }
    (code, err)
}

/// The message of the last line ramp logged under `--log-format json`: the reason it could not
/// start is a JSON line like the others, so that a collector keeps it.
fn last_message(err: &str) -> String {
    let last = err.lines().last().unwrap_or_default();
    let line: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert_eq!(line["level"], "ERROR", "{err}");
    line["fields"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{err}"))
        .to_owned()
}

#[test]
fn serve_short_of_threads_exits_with_the_reason_instead_of_panicking_or_hanging() {
    // Two workers, logs, the state writer, the config watcher and blocking work: six threads
    // beside the main one. Each started with a panic inside its crate, or (the runtime's
    // workers) a hang with nothing served.
    let (code, err) = serve_with_limit("--nproc=4");
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = last_message(&err);
    assert!(
        last.starts_with("ramp: cannot start the 6 threads ramp runs on (2 runtime workers,"),
        "{err}"
    );
    assert!(last.contains("raise the limit on processes"), "{err}");
    // With room for them, the same config serves.
    let (code, err) = serve_with_limit("--nproc=4096");
    assert_eq!(code, None, "{err}");
    assert!(err.contains("\"listening\""), "{err}");
}

#[test]
fn serve_short_of_open_files_exits_with_the_reason() {
    // With 22 to 24 it started, then refused every `set` and could not save a halt.
    let (code, err) = serve_with_limit("--nofile=40");
    assert_eq!(code, Some(1), "{err}");
    let last = last_message(&err);
    assert!(
        last.starts_with("ramp: the open files limit (40) is below the 64 ramp needs"),
        "{err}"
    );
    let (code, err) = serve_with_limit("--nofile=64");
    assert_eq!(code, None, "{err}");
    assert!(err.contains("\"listening\""), "{err}");
}

#[test]
fn ctl_talking_to_a_socket_that_sends_without_end_stops_with_a_short_error() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("not-ramp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    // Not ramp: it answers any command with 64 MB and no end of line.
    std::thread::spawn(move || {
        if let Ok((mut peer, _)) = listener.accept() {
            let block = vec![b'x'; 1 << 20];
            for _ in 0..64 {
                if peer.write_all(&block).is_err() {
                    break;
                }
            }
        }
    });
    let (code, out, err) = ramp(&["ctl", "--socket", path.to_str().expect("utf-8"), "status"]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{} bytes out", out.len());
    assert!(err.len() < 1_000, "{} bytes of error", err.len());
    assert!(
        err.contains("sent a reply longer than 4194304 bytes"),
        "{err}"
    );
}

#[test]
fn text_from_outside_reaches_the_terminal_escaped() {
    // An id pasted from a log or a cookie: escape sequences and line breaks shown, not obeyed.
    let (code, out, err) = ramp(&[
        "bucket",
        "--rollout",
        "r",
        "a\u{1b}]0;T\u{7}\u{1b}[2Jb",
        "c\nd",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(
        out.contains("a\\u{1b}]0;T\\u{7}\\u{1b}[2Jb") && out.contains("c\\nd"),
        "{out}"
    );
    assert_eq!(
        out.lines().count(),
        3,
        "a header and one line per id: {out}"
    );
    // A config key is the file's own text: an unknown one is named escaped, on one line.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        "listen: 127.0.0.1:0\npools: {stable: ['127.0.0.1:9'], canary: ['127.0.0.1:9']}\nrollout: {id: r, percent: 5}\n\"x\\e[2J\\n2026-12-07T16:30:00Z  INFO ramp: forged\": 1\n",
    );
    let (code, _, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(
        err.contains("x\\u{1b}[2J\\n2026") && err.contains("unknown key"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn check_refuses_admin_and_path_settings_serve_could_not_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let check = |extra: &str| {
        let path = write(
            dir.path(),
            "ramp.yaml",
            &format!(
                "listen: 127.0.0.1:0\npools: {{stable: ['127.0.0.1:9'], canary: ['127.0.0.1:9']}}\nrollout: {{id: r, percent: 5}}\n{extra}"
            ),
        );
        let (code, out, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
        (code, format!("{out}{err}"))
    };
    // A mode that keeps ramp's own user out of its socket: a start as that user could not ask
    // its socket for status, and would fail blaming descriptors.
    for mode in ["0440", "0400", "0066"] {
        let (code, said) = check(&format!(
            "admin: {{socket: {d}/a.sock, mode: \"{mode}\"}}\n"
        ));
        assert_ne!(code, 0, "{mode}: {said}");
        assert!(
            said.contains("admin.mode") && said.contains("at least 0600"),
            "{said}"
        );
    }
    let (code, said) = check(&format!("admin: {{socket: {d}/a.sock, mode: \"0660\"}}\n"));
    assert_eq!(code, 0, "{said}");
    // (gid_t)-1 is "leave the group as it is" to chown: the socket would keep ramp's group.
    let (code, said) = check(&format!(
        "admin: {{socket: {d}/a.sock, group: 4294967295}}\n"
    ));
    assert_ne!(code, 0);
    assert!(
        said.contains("admin.group") && said.contains("no group"),
        "{said}"
    );
    // A control character in a path or the instance's name, shown in every instance's logs.
    let (code, said) = check(&format!("state: {{file: \"{d}/s\\e[2J.json\"}}\n"));
    assert_ne!(code, 0);
    assert!(
        said.contains("state.file") && said.contains("control characters"),
        "{said}"
    );
    assert!(!said.contains('\u{1b}'), "{said:?}");
    let (code, said) =
        check("state: {etcd: {endpoints: ['http://127.0.0.1:9'], key: /k, instance: \"a\\nb\"}}\n");
    assert_ne!(code, 0);
    assert!(
        said.contains("state.etcd.instance") && said.contains("control characters"),
        "{said}"
    );
    // A symbolic link where the socket goes: `serve` would refuse it, so `check` does.
    std::os::unix::fs::symlink(dir.path().join("elsewhere.sock"), dir.path().join("l.sock"))
        .expect("symlink");
    let (code, said) = check(&format!("admin: {{socket: {d}/l.sock}}\n"));
    assert_ne!(code, 0);
    assert!(
        said.contains("admin.socket") && said.contains("symbolic link"),
        "{said}"
    );
    let path = dir.path().join("ramp.yaml");
    let (code, _, err) = ramp(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(err.contains("symbolic link"), "{err}");
}

/// Runs `command` with its stdout on a full disk (`/dev/full`): its exit code and stderr.
fn onto_a_full_disk(mut command: Command) -> (Option<i32>, String) {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = command.stdout(full).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completions_piped_into_head_or_a_full_disk_end_without_a_panic() {
    // A reader that goes at once (`| head -1`, before the script is written).
    let mut child = Command::new(RAMP)
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A disk that is full: a message, exit 1.
    let mut completions = Command::new(RAMP);
    completions.args(["completions", "bash"]);
    let (code, err) = onto_a_full_disk(completions);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ramp completions: No space left on device"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn ctl_help_is_the_usage_and_check_says_when_its_result_cannot_be_written() {
    // What a newcomer types first: the usage, without a socket, nothing sent.
    let (code, out, err) = ramp(&["ctl", "help"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Usage: ramp ctl [OPTIONS] <COMMAND>..."),
        "{out}"
    );
    // `ramp check` to a full disk: exit 1, saying so (its result would otherwise be lost).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        "listen: 127.0.0.1:8080\npools: {stable: [127.0.0.1:9101], canary: [127.0.0.1:9102]}\nrollout: {id: r, percent: 5}\n",
    );
    let mut check = Command::new(RAMP);
    check.args(["check", "--config"]).arg(&path);
    let (code, err) = onto_a_full_disk(check);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot write the result: No space left on device"),
        "{err}"
    );
}
