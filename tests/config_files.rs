//! Operators write YAML: every example parses, and every mistake is reported with line:column.

mod support;

use std::path::Path;

use support::{ramp, write};

#[test]
fn every_example_in_config_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).expect("config/")
    {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = ramp::config::load(&path) {
                panic!("{} does not load:\n{e}", path.display());
            }
            // The examples name certificates this machine does not have.
            let path = path.to_str().expect("utf-8");
            let (code, out, err) = ramp(&["check", "--config", path, "--config-only"]);
            assert_eq!(code, 0, "{out}{err}");
            n += 1;
        }
    }
    let bench = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/compare.yaml"));
    ramp::config::load(bench).expect("benches/compare.yaml loads");
    assert!(n >= 1, "no examples found");
}

fn check(yaml: &str) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "bad.yaml", yaml);
    let (code, out, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    let prefix = format!("{}:", path.display());
    let lines = err
        .lines()
        .chain(out.lines())
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_owned())
        .collect();
    (code, lines)
}

/// `ramp COMMAND --config PATH` run as nobody (uid 65534, no groups): tests that need a user
/// whom the file system refuses things (root is refused nothing).
fn as_nobody(command: &str, path: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        support::RAMP,
        command,
        "--config",
    ])
    .arg(path);
    cmd
}

const GOOD_TAIL: &str = "pools:\n  stable: [127.0.0.1:9101]\n  canary: [127.0.0.1:9102]\nrollout:\n  id: r1\n  percent: 5\n";

#[test]
fn every_invalid_value_is_listed_with_its_line_and_column() {
    let yaml = "listen: 127.0.0.1:99999\n\
                workers: 0\n\
                sticky:\n  header: \"bad header\"\n  cookie: \"u id\"\n  cookie_max_age: forever\n\
                pools:\n  stable: []\n  canary: [nohost, 127.0.0.1:1, 127.0.0.1:1]\n\
                rollout:\n  id: two words\n  percent: 5.00001\n\
                upstream:\n  connect_timeout: 0s\n  idle_timeout: 999us\n\
                hide_response_headers: [\"a b\"]\n\
                state:\n  etcd: {endpoints: [127.0.0.1:2379], key: /k}\n";
    let (code, lines) = check(yaml);
    assert_eq!(code, 1);
    let expect = [
        "1:9: listen: ",
        "2:10: workers: ",
        "4:11: sticky.header: ",
        "5:11: sticky.cookie: ",
        "6:19: sticky.cookie_max_age: ",
        "8:11: pools.stable: must not be empty",
        "9:12: pools.canary: not an upstream address",
        "9:33: pools.canary: listed twice",
        "11:7: rollout.id: ",
        "12:12: rollout.percent: must be a multiple of 0.0001",
        "14:20: upstream.connect_timeout: must be longer than zero",
        "15:17: upstream.idle_timeout: must be at least 1ms",
        "16:25: hide_response_headers: ",
        "18:22: state.etcd.endpoints: not an etcd endpoint like http://127.0.0.1:2379",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "no line starting {e:?} in {lines:#?}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
}

#[test]
fn shape_errors_name_the_key_and_position() {
    let (code, lines) = check(&format!("listen: 127.0.0.1:8080\nlistn: 1\n{GOOD_TAIL}"));
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with("2:1: listn: unknown key; this section takes: listen, workers"),
        "{lines:?}"
    );

    let (_, lines) = check(&format!(
        "listen: 127.0.0.1:8080\n{GOOD_TAIL}  percent: 7\n"
    ));
    assert!(
        lines[0].starts_with("8:3: rollout.percent: given twice in its section"),
        "{lines:?}"
    );

    let (_, lines) = check("listen: [1\n");
    assert!(lines[0].starts_with("1:9: "), "{lines:?}");

    let (_, lines) = check(&format!(
        "listen: 127.0.0.1:8080\n{}",
        GOOD_TAIL.replace("5\n", "lots\n")
    ));
    assert!(
        lines[0].starts_with("7:12: rollout.percent: not a number (like 5, 0.5 or 0.01)"),
        "{lines:?}"
    );
    // What a newcomer can act on, rather than the parser's words, and which setting it is about.
    for (yaml, says) in [
        (
            "listen: 127.0.0.1:8080\npools:\n  stable: 127.0.0.1:9101\n  canary: [127.0.0.1:9102]\nrollout: {id: r1, percent: 5}\n",
            "3:11: pools.stable: expected a list here, like [a, b]",
        ),
        (
            "listen: 127.0.0.1:8080\npools:\n  stable: [127.0.0.1:9101]\nrollout: {id: r1, percent: 5}\n",
            "3:3: pools: missing field `canary`",
        ),
        (
            &format!("listen: 127.0.0.1:8080\n{GOOD_TAIL}analysis: {{window: [1]}}\n") as &str,
            "8:20: analysis.window: expected one value here",
        ),
        (
            &format!("listen: 127.0.0.1:8080\n{GOOD_TAIL}analysis: {{window: 5s}}\n") as &str,
            "8:20: analysis.window: must be from 10s to 24h, got \"5s\"",
        ),
        (
            &format!("listen: 127.0.0.1:8080\n{GOOD_TAIL}analysis: {{window: 90s500ms}}\n") as &str,
            "analysis.window: must be whole seconds",
        ),
        (
            &format!("listen: 127.0.0.1:8080\nworkers: -3\n{GOOD_TAIL}") as &str,
            "2:10: workers: not a whole number (like 5: no sign, no fraction)",
        ),
        // A list's item that is not a map, after one that is: the item, not the key before it.
        (
            "listen: 127.0.0.1:8080\npools: {stable: [a:1], canary: [b:1]}\nrollout:\n  id: r1\n  steps:\n    - {percent: 5, hold: 1h}\n    - 7\n",
            "7:7: rollout.steps[]: expected settings here",
        ),
        // An alias's keys all begin at the alias: the setting it stands for is named.
        (
            "listen: 127.0.0.1:8080\npools: {stable: [a:1], canary: [b:1]}\nbase: &b {percent: abc, id: x}\nrollout: *b\n",
            "4:10: rollout: not a number",
        ),
        // The same words beside an unknown key.
        (
            "listen: 127.0.0.1:8080\nbogus: 1\npools: {stable: [a:1], canary: [b:1]}\nrollout:\n  percent: 5\n",
            "rollout: missing field `id`",
        ),
        (
            "listen: 127.0.0.1:8080\nbogus: 1\npools: {stable: [a:1], canary: [b:1]}\nrollout:\n  id: a\n  id: b\n  percent: 5\n",
            "rollout.id: given twice in its section",
        ),
        (
            "",
            "1:1: the file holds no settings: it needs at least listen, pools and rollout",
        ),
        ("# nothing yet\n\n", "1:1: the file holds no settings"),
        (
            &format!(
                "listen: 127.0.0.1:8080\n{GOOD_TAIL}admin: {{socket: a.sock, allowed_uids: [-1]}}\n"
            ) as &str,
            "8:40: admin.allowed_uids[]: not a whole number from 0 to 4294967295",
        ),
        (
            &format!(
                "listen: 127.0.0.1:8080\n{GOOD_TAIL}analysis: {{goals: [{{name: buy, path: '/x?y=1'}}, {{name: buy, path: /y, method: 'GE T'}}]}}\n"
            ),
            "analysis.goals[0].path: a path like /checkout/done, starting with / and without a query",
        ),
    ] {
        let (code, lines) = check(yaml);
        assert_eq!(code, 1, "{yaml}");
        assert!(lines.iter().any(|l| l.contains(says)), "{says}: {lines:?}");
    }
    let (_, lines) = check(&format!(
        "listen: 127.0.0.1:8080\n{GOOD_TAIL}analysis: {{goals: [{{name: buy, path: /x}}, {{name: buy, path: /y}}, {{name: b, path: /z, method: 'GE T'}}]}}\n"
    ));
    for says in [
        "another goal has this name: \"buy\"",
        "not an HTTP method (a token such as GET, POST or PURCHASE): \"GE T\"",
    ] {
        assert!(lines.iter().any(|l| l.contains(says)), "{says}: {lines:?}");
    }
    // ramp itself as an upstream: a loop that takes every descriptor.
    let (code, lines) = check(
        "listen: 0.0.0.0:8080\npools: {stable: ['127.0.0.1:8080'], canary: ['10.0.0.1:8080']}\nrollout: {id: r, percent: 5}\n",
    );
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with("2:18: pools.stable: is ramp's own address (0.0.0.0:8080)"),
        "{lines:?}"
    );
    let (code, lines) = check(
        "listen: 127.0.0.1:8080\npools: {stable: ['0.0.0.0:8080'], canary: ['10.0.0.1:8080']}\nrollout: {id: r, percent: 5}\n",
    );
    assert_eq!(code, 1);
    assert!(lines[0].contains("is ramp's own address"), "{lines:?}");
    // Goals that could never count.
    let (_, lines) = check(&format!(
        "listen: 127.0.0.1:8080\n{GOOD_TAIL}analysis: {{goals: [{{name: a, path: '/done#x'}}, {{name: b, path: /y, method: TRACE}}]}}\n"
    ));
    for says in [
        "or fragment (#...), which requests do not carry: \"/done#x\"",
        "ramp answers TRACE itself (405), so a goal on it would never count",
    ] {
        assert!(lines.iter().any(|l| l.contains(says)), "{says}: {lines:?}");
    }
}

#[test]
fn rollout_plans_are_checked() {
    let base =
        "listen: 127.0.0.1:8080\npools:\n  stable: [a:1]\n  canary: [b:2]\nrollout:\n  id: r\n";
    let (code, lines) = check(base);
    assert_eq!(code, 1);
    assert!(
        lines[0].contains("rollout: give `percent` or `steps`"),
        "{lines:?}"
    );
    let (_, lines) = check(&format!(
        "{base}  percent: 5\n  steps: [{{percent: 1, hold: 1m}}]\n"
    ));
    assert!(
        lines[0].starts_with("7:12: rollout: give either"),
        "{lines:?}"
    );
    let (_, lines) = check(&format!(
        "{base}  steps:\n    - {{percent: 5, hold: 1m}}\n    - {{percent: 1, hold: 1m}}\n    - {{percent: 50}}\n    - {{percent: 100}}\n"
    ));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("9:17: rollout.steps[1].percent: step percents must rise")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .starts_with("10:17: rollout.steps[2]: every step but the last needs a `hold`")),
        "{lines:?}"
    );
    let (code, _) = check(&format!(
        "{base}  steps:\n    - {{percent: 0.01, hold: 10m}}\n    - {{percent: 5, hold: 1h}}\n    - {{percent: 100}}\n"
    ));
    assert_eq!(code, 0);
    let (_, lines) = check(&format!("{base}  percent: 100.5\n"));
    assert!(
        lines[0].starts_with("7:12: rollout.percent: must be between 0 and 100"),
        "{lines:?}"
    );
}

const SYSTEM: &str = "under /proc, /sys or /dev (a process's or the kernel's, not ramp's)";

#[test]
fn a_state_file_that_would_overwrite_the_config_the_admin_socket_or_a_system_file_is_refused() {
    for (state, what) in [
        ("bad.yaml", "this config file"),
        ("./sub/../bad.yaml", "this config file"),
        ("admin.sock", "the admin socket"),
        // Another spelling of a socket that does not exist yet.
        ("./sub/../admin.sock", "the admin socket"),
        // A process's own files: ramp wrote its state over its log, stdout's file.
        ("/proc/self/fd/1", SYSTEM),
        ("/dev/stderr", SYSTEM),
    ] {
        let yaml = format!(
            "listen: 127.0.0.1:0\n{GOOD_TAIL}admin:\n  socket: admin.sock\nstate:\n  file: {state}\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        let path = write(dir.path(), "bad.yaml", &yaml);
        let (code, _, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{state}: {err}");
        assert!(
            err.contains(&format!("is {what}: ramp would write its state over it")),
            "{err}"
        );
        // The config is untouched.
        assert_eq!(std::fs::read_to_string(&path).expect("config"), yaml);
    }
}

#[test]
fn a_metrics_listener_on_the_proxy_s_own_port_is_refused() {
    // Both take SO_REUSEPORT: on one port, users would get the status page, rollout id and all.
    for (listen, metrics, refused) in [
        ("127.0.0.1:8080", "127.0.0.1:8080", true),
        ("0.0.0.0:8080", "127.0.0.1:8080", true),
        ("127.0.0.1:8080", "[::]:8080", true),
        ("127.0.0.1:8080", "127.0.0.2:8080", false),
        ("'[::ffff:127.0.0.1]:8080'", "127.0.0.1:8080", true),
        ("'[::ffff:0.0.0.0]:8080'", "127.0.0.1:8080", true),
        ("0.0.0.0:8080", "[::1]:8080", false),
        ("127.0.0.1:8080", "127.0.0.1:9100", false),
    ] {
        let (code, lines) = check(&format!(
            "listen: {listen}\n{GOOD_TAIL}metrics:\n  listen: '{metrics}'\n"
        ));
        let said = lines
            .iter()
            .any(|l| l.contains("metrics.listen") && l.contains("the proxy's own address"));
        assert_eq!(
            (code == 1, said),
            (refused, refused),
            "{listen} {metrics}: {lines:?}"
        );
    }
}

#[test]
fn the_status_page_s_allowed_hosts_are_names_only() {
    for (hosts, refused) in [
        ("[ramp-a, ramp-a.internal., status.example.com]", false),
        ("['ramp-a:9100']", true),
        ("['http://ramp-a']", true),
        ("['']", true),
        ("['-bad.example']", true),
        ("['two words']", true),
    ] {
        let (code, lines) = check(&format!(
            "listen: 127.0.0.1:8080\n{GOOD_TAIL}metrics:\n  listen: '127.0.0.1:9100'\n  allowed_hosts: {hosts}\n"
        ));
        let said = lines
            .iter()
            .any(|l| l.contains("metrics.allowed_hosts") && l.contains("not a host name"));
        assert_eq!((code == 1, said), (refused, refused), "{hosts}: {lines:?}");
    }
}

#[test]
fn admin_lists_that_would_lock_everyone_out_or_say_nothing_are_refused() {
    for (admin, field, says) in [
        (
            "allowed_uids: []",
            "admin.allowed_uids",
            "nobody could run any command",
        ),
        (
            "allowed_uids: [0, 1000]\n  readonly_uids: [1000]",
            "admin.readonly_uids",
            "uid 1000, which may run every command already",
        ),
        (
            "readonly_uids: [0]",
            "admin.readonly_uids",
            "uid 0, which may run every command already",
        ),
    ] {
        let (code, lines) = check(&format!(
            "listen: 127.0.0.1:0\n{GOOD_TAIL}admin:\n  socket: admin.sock\n  {admin}\n"
        ));
        assert_eq!(code, 1, "{admin}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.contains(field) && l.contains(says)),
            "{admin}: {lines:?}"
        );
    }
    let (code, lines) = check(&format!(
        "listen: 127.0.0.1:0\n{GOOD_TAIL}admin:\n  socket: admin.sock\n  allowed_uids: [0]\n  readonly_uids: [1001]\n"
    ));
    assert_eq!(code, 0, "{lines:?}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (code, out, err) = ramp(&["check", "--config", "/nonexistent/ramp.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("/nonexistent/ramp.yaml: cannot read"), "{err}");
}

#[test]
fn the_old_name_of_h2_idle_timeout_still_reads() {
    let base = "listen: 127.0.0.1:0\npools: {stable: ['127.0.0.1:1'], canary: ['127.0.0.1:2']}\nrollout: {id: r, percent: 1}\n";
    for key in ["idle_timeout", "h2_idle_timeout"] {
        let yaml = format!("{base}limits: {{{key}: 7s}}\n");
        let c = ramp::config::parse(&yaml, Path::new("x.yaml")).expect(key);
        assert_eq!(
            c.limits.h2_idle_timeout,
            std::time::Duration::from_secs(7),
            "{key}"
        );
    }
}

#[test]
fn check_refuses_paths_serve_could_not_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("a-dir")).expect("mkdir");
    std::fs::write(d.join("plain"), "not a socket").expect("write");
    let long = format!("{}/{}.sock", d.display(), "s".repeat(120));
    for (section, says) in [
        ("state:\n  file: missing/state.json", "state.file"),
        ("state:\n  file: a-dir", "is a directory"),
        ("admin:\n  socket: missing/admin.sock", "admin.socket"),
        ("admin:\n  socket: plain", "is not a socket"),
        (
            &format!("admin:\n  socket: {long}") as &str,
            "longer than a socket's path",
        ),
    ] {
        let path = write(
            d,
            "ramp.yaml",
            &format!("listen: 127.0.0.1:0\n{GOOD_TAIL}{section}\n"),
        );
        let (code, out, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{section}: {out}{err}");
        assert!(err.contains(says), "{section}: {err}");
        // serve refuses it before taking a port (killed if it served after all).
        let mut serve = std::process::Command::new(support::RAMP)
            .args(["serve", "--config", path.to_str().expect("utf-8")])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while serve.try_wait().expect("wait").is_none() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = serve.kill();
        let out = serve.wait_with_output().expect("output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{section}: {err}");
        assert!(err.contains(says), "{section}: {err}");
    }
}

#[test]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: runs ramp check as another user"
)]
fn check_refuses_a_state_directory_ramp_s_user_may_not_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Root's directory, readable by all, writable by root only.
    std::fs::create_dir(d.join("rootonly")).expect("mkdir");
    let path = write(
        d,
        "ramp.yaml",
        &format!("listen: 127.0.0.1:0\n{GOOD_TAIL}state:\n  file: rootonly/state.json\n"),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = as_nobody("check", &path).output().expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("state.file") && err.contains("may not make files"),
        "{err}"
    );
}

#[test]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: runs ramp check as another user"
)]
fn check_and_serve_refuse_a_socket_group_ramp_s_user_may_not_give() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = write(
        d,
        "ramp.yaml",
        &format!("listen: 127.0.0.1:0\n{GOOD_TAIL}admin:\n  socket: admin.sock\n  group: \"0\"\n"),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    for command in ["check", "serve"] {
        let out = as_nobody(command, &path).output().expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("admin.group: ramp's user (uid 65534) is not in group 0"),
            "{command}: {err}"
        );
    }
    assert!(!d.join("admin.sock").exists(), "serve made the socket");
}

#[test]
fn check_names_every_file_serve_could_not_use_not_only_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        &format!(
            "listen: 127.0.0.1:0\n{GOOD_TAIL}tls: {{cert: missing-cert.pem, key: missing-key.pem}}\nstate: {{file: missing/state.json}}\nadmin: {{socket: missing/admin.sock}}\n"
        ),
    );
    let (code, _, err) = ramp(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    let d = dir.path().display();
    for says in [
        format!("tls.cert: {d}/missing-cert.pem: cannot read"),
        format!("state.file: {d}/missing/state.json: its directory"),
        format!("admin.socket: {d}/missing/admin.sock: its directory"),
    ] {
        assert!(err.contains(&says), "{says}: {err}");
    }
}

#[test]
fn a_file_of_thousands_of_mistakes_gets_a_bounded_answer() {
    // 5,000 unknown keys: every one named would make an error of megabytes, kept in status and
    // carried by every reply after a rejected reload.
    let keys: String = (0..5_000).map(|i| format!("typo_{i}: 1\n")).collect();
    let yaml = format!("listen: 127.0.0.1:8080\n{GOOD_TAIL}{keys}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "bad.yaml", &yaml);
    let (code, _, err) = ramp(&["serve", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains("(and 4999 more: run `ramp check`)"), "{err}");
    let (code, lines) = check(&yaml);
    assert_eq!(code, 1);
    let told = lines.iter().filter(|l| l.contains("typo_")).count();
    assert_eq!(told, 50, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("and 4950 more problems")),
        "{lines:?}"
    );
}

#[test]
fn yaml_the_parser_refuses_is_explained_in_the_file_s_terms() {
    let deep = format!("a: {}{}\n", "[".repeat(70), "]".repeat(70));
    let mut bomb = String::from("listen: 127.0.0.1:8080\nx0: &a0 [1,1,1,1,1,1,1,1,1,1]\n");
    for i in 1..8 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        bomb.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    for (yaml, says) in [
        (
            format!("listen: 127.0.0.1:8080\n{GOOD_TAIL}---\nlisten: 127.0.0.1:8081\n"),
            "more than one YAML document",
        ),
        ("~: 1\n".to_owned(), "empty (null) where a value is needed"),
        (deep, "nested too deep"),
        (
            bomb,
            "too large: over 250,000 values, counting those its anchors",
        ),
    ] {
        let (code, lines) = check(&yaml);
        assert_eq!(code, 1);
        assert!(lines.iter().any(|l| l.contains(says)), "{says}: {lines:?}");
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("Option<") || l.contains("budget")),
            "{lines:?}"
        );
    }
}

#[test]
fn a_sticky_header_or_cookie_age_that_would_lose_the_user_is_refused() {
    for (sticky, expect) in [
        (
            "  header: Connection\n",
            "2:11: sticky.header: \"connection\" cannot carry a user id",
        ),
        (
            "  header: x-forwarded-for\n",
            "2:11: sticky.header: \"x-forwarded-for\" cannot carry a user id",
        ),
        ("  header: cookie\n", "2:11: sticky.header: \"cookie\""),
        (
            "  cookie_max_age: 500ms\n",
            "2:19: sticky.cookie_max_age: must be at least 1s",
        ),
        (
            "  cookie_domain: shop.example/x\n",
            "2:18: sticky.cookie_domain: ",
        ),
        (
            "  cookie: __Host-uid\n  cookie_secure: true\n  cookie_domain: shop.example\n",
            "2:11: sticky.cookie: a cookie of this prefix needs cookie_secure: true and no cookie_domain",
        ),
        (
            "  cookie: __Secure-uid\n",
            "2:11: sticky.cookie: a cookie of this prefix needs cookie_secure: true",
        ),
    ] {
        let (code, lines) = check(&format!(
            "sticky:\n{sticky}listen: 127.0.0.1:8080\n{GOOD_TAIL}"
        ));
        assert_eq!(code, 1, "{sticky}");
        assert!(
            lines.first().is_some_and(|l| l.starts_with(expect)),
            "{expect:?} in {lines:#?}"
        );
    }
    // Any other name, and a second, are fine.
    let (code, lines) = check(&format!(
        "sticky:\n  header: authorization\n  cookie_max_age: 1s\n  app_sets_cookie: true\nlisten: 127.0.0.1:8080\n{GOOD_TAIL}"
    ));
    assert_eq!(code, 0, "{lines:#?}");
}

#[test]
fn check_warns_of_settings_that_are_valid_but_likely_mistakes() {
    let (code, lines) = check(
        "listen: 127.0.0.1:8080\npools: {stable: [127.0.0.1:9101], canary: [127.0.0.1:9101]}\nrollout: {id: r, percent: 5}\npassive_health: {backoff: 2m, max_backoff: 1m}\nanalysis: {error_statuses: []}\n",
    );
    assert_eq!(code, 0, "{lines:?}");
    for says in [
        " warning: pools: 127.0.0.1:9101 is in both stable and canary",
        " warning: passive_health.backoff (2m) is longer than max_backoff (1m)",
        " warning: analysis.error_statuses is empty: no answer counts as an error",
    ] {
        assert!(lines.iter().any(|l| l.contains(says)), "{says}: {lines:?}");
    }
    let (code, lines) = check(&format!("listen: 127.0.0.1:8080\n{GOOD_TAIL}"));
    assert_eq!(code, 0);
    assert!(!lines.iter().any(|l| l.contains("warning")), "{lines:?}");
}

#[test]
fn check_resolves_the_upstreams_names() {
    // A misspelt name (.invalid never resolves: RFC 6761), and one server in both pools under
    // two spellings.
    let (code, lines) = check(
        "listen: 127.0.0.1:8080\npools: {stable: [127.0.0.1:9101, stabel.invalid:80], canary: ['localhost:9101']}\nrollout: {id: r, percent: 5}\n",
    );
    assert_eq!(code, 0, "warnings, not problems: {lines:?}");
    for says in [
        " warning: pools.stable: stabel.invalid:80 does not resolve here",
        " warning: pools: canary's localhost:9101 and stable's 127.0.0.1:9101 are the same server here (127.0.0.1:9101)",
    ] {
        assert!(lines.iter().any(|l| l.contains(says)), "{says}: {lines:?}");
    }
    // Not for a file read without the machine's view (--config-only).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "ramp.yaml",
        "listen: 127.0.0.1:8080\npools: {stable: [stabel.invalid:80], canary: [127.0.0.1:9102]}\nrollout: {id: r, percent: 5}\n",
    );
    let (code, _, err) = ramp(&[
        "check",
        "--config-only",
        "--config",
        path.to_str().expect("utf-8"),
    ]);
    assert_eq!((code, err.contains("resolve")), (0, false), "{err}");
}

#[test]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: runs ramp as another user"
)]
fn certificates_in_a_directory_ramp_may_not_list_are_served_and_said_unwatched() {
    use std::io::BufRead;
    use std::os::unix::fs::{PermissionsExt, chown};
    // Debian's /etc/ssl/private: files ramp's user may read by name, in a directory it may not
    // list, so it cannot watch it either.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let private = d.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    for (name, pem) in [
        ("cert.pem", c.cert.pem()),
        ("key.pem", c.signing_key.serialize_pem()),
    ] {
        let file = write(&private, name, &pem);
        chown(&file, Some(65534), None).expect("chown");
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let path = write(
        d,
        "ramp.yaml",
        &format!(
            "listen: 127.0.0.1:0\n{GOOD_TAIL}tls: {{cert: private/cert.pem, key: private/key.pem}}\n"
        ),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = as_nobody("check", &path).output().expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: cannot watch") && err.contains("private"),
        "{err}"
    );
    // serve starts (it was refused before), and says so in its log.
    let mut serve = as_nobody("serve", &path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = std::io::BufReader::new(serve.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    for line in lines.lines().map_while(Result::ok) {
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("cannot watch this directory")),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:#?}");
}

#[test]
fn the_guard_s_least_p99_increase_may_be_written_as_its_default_of_zero() {
    for zero in ["0", "0s", "0ms"] {
        let (code, lines) = check(&format!(
            "listen: 127.0.0.1:8080\npools: {{stable: [127.0.0.1:9101], canary: [127.0.0.1:9102]}}\nrollout:\n  id: r\n  percent: 5\n  guard: {{action: halt, min_p99_increase: {zero}}}\n"
        ));
        assert_eq!(code, 0, "{zero}: {lines:?}");
    }
    let (code, lines) = check(
        "listen: 127.0.0.1:8080\npools: {stable: [127.0.0.1:9101], canary: [127.0.0.1:9102]}\nrollout:\n  id: r\n  percent: 5\n  guard: {action: halt, min_p99_increase: 5 parsecs}\n",
    );
    assert_eq!(code, 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rollout.guard.min_p99_increase")),
        "{lines:?}"
    );
}

#[test]
fn an_error_margin_written_as_a_percent_is_refused_and_a_wide_one_warned_of() {
    let guard = |margin: &str| {
        check(&format!(
            "listen: 127.0.0.1:8080\npools: {{stable: [127.0.0.1:9101], canary: [127.0.0.1:9102]}}\nrollout:\n  id: r\n  percent: 5\n  guard: {{action: halt, max_error_rate_increase: {margin}}}\n"
        ))
    };
    // "1" meant as one point: 100 points, which no canary exceeds.
    for percent in ["1", "5"] {
        let (code, lines) = guard(percent);
        assert_eq!(code, 1, "{percent}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.contains(
                "rollout.guard.max_error_rate_increase: a fraction of answers, not a percent: 0.01 is one point"
            )),
            "{lines:?}"
        );
    }
    let (code, lines) = guard("0.5");
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains(
            "warning: rollout.guard.max_error_rate_increase: 0.5 is 50.00 points over stable's error rate"
        )),
        "{lines:?}"
    );
    let (code, lines) = guard("0.02");
    assert_eq!(code, 0, "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("warning")), "{lines:?}");
}

#[test]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: runs ramp serve as another user"
)]
fn serve_never_replaces_an_admin_socket_another_user_serves() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // Root's process serves the socket, 0600: nobody cannot connect to it.
    let served = std::os::unix::net::UnixListener::bind(d.join("admin.sock")).expect("bind");
    std::fs::set_permissions(d.join("admin.sock"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let path = write(
        d,
        "ramp.yaml",
        &format!("listen: 127.0.0.1:0\n{GOOD_TAIL}admin:\n  socket: admin.sock\n"),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut child = as_nobody("serve", &path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve took the socket over and ran");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("exists and cannot be tried") && err.contains("refusing to replace it"),
        "{err}"
    );
    // Root's socket is still the one at the path.
    std::os::unix::net::UnixStream::connect(d.join("admin.sock")).expect("still served");
    assert!(served.accept().is_ok());
}

#[test]
fn a_config_in_a_directory_whose_name_could_forge_log_lines_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let forged = dir
        .path()
        .join("p 1\n2026-12-08T00:00:00Z  INFO ramp::app: FORGED");
    std::fs::create_dir(&forged).expect("mkdir");
    let path = write(
        &forged,
        "ramp.yaml",
        &format!("listen: 127.0.0.1:0\n{GOOD_TAIL}admin:\n  socket: admin.sock\n"),
    );
    for command in ["check", "serve"] {
        let out = std::process::Command::new(support::RAMP)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .expect("ramp");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        assert!(
            err.contains("holds a control character"),
            "{command}: {err}"
        );
        assert!(
            !err.lines().any(|l| l.starts_with("2026-12-08T00:00:00Z")),
            "{command}: a forged line: {err}"
        );
    }
}
