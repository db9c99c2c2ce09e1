//! The rollout state survives kill -9; a damaged state file never takes the site down.

mod support;

use serde_json::Value;
use support::{Backend, CONTROL, Client, Proxy, config, single};

const STEPS: &str = "id: checkout-v2\nsteps:\n  - {percent: 0.01, hold: 10m}\n  - {percent: 2.5, hold: 1h}\n  - {percent: 100}";

async fn backends() -> (Backend, Backend) {
    (
        Backend::start("stable").await,
        Backend::start("canary").await,
    )
}

fn yaml(s: &Backend, c: &Backend, rollout: &str) -> String {
    config(
        &[s],
        &[c],
        rollout,
        &format!("sticky:\n  header: x-user-id\n{CONTROL}"),
    )
}

async fn canary_share(proxy: &Proxy, n: usize) -> usize {
    let client = Client::http1();
    let mut canary = 0;
    for i in 0..n {
        let id = format!("r-{i}");
        if client
            .get(&proxy.url("/"), &[("x-user-id", &id)])
            .await
            .body
            == "canary"
        {
            canary += 1;
        }
    }
    canary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_keeps_state_and_schedule() {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, STEPS));
    let first = proxy.admin("status");
    assert_eq!(first["schedule"]["step"], 1);
    assert_eq!(first["percent"].as_f64(), Some(0.01));
    let before_secs = first["schedule"]["next_in_secs"]
        .as_f64()
        .expect("time left");
    assert!(before_secs > 500.0, "{first}");
    let halted = proxy.admin("halt");
    assert_eq!(halted["state"], "halted");
    let (dir, path) = proxy.kill9();

    let proxy = Proxy::start_in(dir, path);
    let s1 = proxy.admin("status");
    assert_eq!(
        (s1["rollout"].as_str(), s1["state"].as_str()),
        (Some("checkout-v2"), Some("halted"))
    );
    assert_eq!(s1["schedule"]["step"], 1);
    assert_eq!(s1["schedule"]["paused"], true);
    let left = s1["schedule"]["next_in_secs"].as_f64().expect("time left");
    assert!(
        left <= before_secs && left > before_secs - 60.0,
        "{left} vs {before_secs}"
    );
    assert_eq!(
        s1["changed_by"], halted["changed_by"],
        "who changed it survives too"
    );

    // Raise by hand, kill again: the manual percent holds.
    assert_eq!(proxy.admin("resume")["state"], "running");
    assert_eq!(proxy.admin("set 40")["percent"].as_f64(), Some(40.0));
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    let s2 = proxy.admin("status");
    assert_eq!(
        (s2["state"].as_str(), s2["percent"].as_f64()),
        (Some("running"), Some(40.0))
    );
    let share = canary_share(&proxy, 400).await;
    assert!((120..=200).contains(&share), "{share} of 400 at 40%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_survives_kill_9() {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, "id: rb\npercent: 50"));
    assert_eq!(proxy.admin("rollback")["state"], "rolled_back");
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["state"], "rolled_back");
    assert_eq!(canary_share(&proxy, 100).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_survives_its_state_file_being_deleted_then_kill_9() {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, "id: tidy\npercent: 50"));
    assert_eq!(proxy.admin("halt")["state"], "halted");
    // A cleanup of old files (systemd-tmpfiles in /tmp, say) removes it; no command follows.
    let file = proxy.state_file();
    let held = std::fs::read_to_string(&file).expect("the state file");
    std::fs::remove_file(&file).expect("rm");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted state file was not written again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(&file).expect("again"), held);
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["state"], "halted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_is_whole_after_every_change() {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, "id: w\npercent: 5"));
    for cmd in ["set 6", "halt", "resume", "start w2 3", "rollback"] {
        let reply = proxy.admin(cmd);
        let text = std::fs::read_to_string(proxy.state_file()).expect("state file");
        let v: Value = serde_json::from_str(&text).expect("whole JSON after every change");
        assert_eq!(v["version"], 2);
        assert_eq!(v["state"], reply["state"], "{cmd}: reply and file agree");
        assert_eq!(v["rollout"], reply["rollout"]);
    }
    let leftovers: Vec<_> = std::fs::read_dir(proxy.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ramp_tests_as_root),
    ignore = "needs root: only root may give a file to another user"
)]
async fn a_rewritten_state_file_keeps_its_owner_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, "id: owned\npercent: 5"));
    assert_eq!(proxy.admin("set 6")["ok"], true);
    let file = proxy.state_file();
    // As an operator hands it to a service account and a group that shares it.
    std::os::unix::fs::chown(&file, Some(4242), Some(4343)).expect("chown");
    // Group-writable: ramp's umask (022, as this test's) must not take that away.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    assert_eq!(proxy.admin("set 7")["ok"], true);
    let text = std::fs::read_to_string(&file).expect("state file");
    assert!(text.contains("\"percent_ppm\": 70000"), "{text}");
    let meta = std::fs::metadata(&file).expect("state file");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (4242, 4343, 0o664)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_starts_everyone_on_stable_and_says_so() {
    let (s, c) = backends().await;
    for garbage in [
        "{\"version\": 1, \"rollout\": ",
        "\u{0}\u{1}binary",
        "{\"version\": 99}",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("state.json"), garbage).expect("write");
        let path = dir.path().join("ramp.yaml");
        std::fs::write(&path, yaml(&s, &c, "id: corrupt\npercent: 100")).expect("write");
        let proxy = Proxy::start_in(dir, path);
        let st = proxy.admin("status");
        assert_eq!(st["state"], "rolled_back", "{st}");
        assert!(
            st["state_file_error"]
                .as_str()
                .is_some_and(|e| e.contains("state.json")),
            "{st}"
        );
        assert_eq!(canary_share(&proxy, 50).await, 0, "everyone on stable");
        assert!(
            proxy
                .logs()
                .iter()
                .any(|l| l.contains("STATE FILE UNREADABLE"))
        );
        assert_eq!(
            std::fs::read_to_string(proxy.state_file()).expect("kept"),
            garbage,
            "left for inspection"
        );
        // ramp stopped it, at start-up, and a file edit made since does not take that over.
        assert_eq!(st["stopped"]["source"], "startup", "{st}");
        let edited = std::fs::read_to_string(&proxy.config_path)
            .expect("config")
            .replace("percent: 100", "percent: 90");
        support::replace_file(&proxy.config_path, &edited);
        let st = proxy.wait_status("the edit is read", |v| v["source"] == "file");
        assert_eq!(st["state"], "rolled_back", "{st}");
        assert_eq!(st["stopped"]["source"], "startup", "{st}");
        // The operator takes over: resume works and is persisted.
        assert_eq!(proxy.admin("resume")["state"], "running");
        assert_eq!(proxy.admin("status")["state_file_error"], Value::Null);
        assert!(proxy.admin("status")["stopped"].is_null());
        assert_eq!(proxy.admin("set 100")["percent"], 100.0);
        assert_eq!(canary_share(&proxy, 20).await, 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_state_file_still_loads() {
    let (s, c) = backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/state-v1.json"),
        dir.path().join("state.json"),
    )
    .expect("copy fixture");
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, yaml(&s, &c, STEPS)).expect("write");
    let proxy = Proxy::start_in(dir, path);
    let st = proxy.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["percent"].as_f64()),
        (Some("halted"), Some(2.5)),
        "{st}"
    );
    assert_eq!(st["schedule"]["step"], 2);
    assert_eq!(st["schedule"]["next_in_secs"].as_f64(), Some(1800.0));
    assert_eq!(st["changed_by"], "admin (uid 0, pid 4242)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rollout_id_written_while_ramp_was_down_waits_for_resume_after_a_rollback() {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, "id: old\npercent: 50"));
    proxy.admin("rollback");
    let (dir, path) = proxy.kill9();
    std::fs::write(&path, yaml(&s, &c, "id: new\npercent: 100")).expect("edit");
    let proxy = Proxy::start_in(dir, path);
    let st = proxy.admin("status");
    assert_eq!(
        (st["rollout"].as_str(), st["state"].as_str()),
        (Some("old"), Some("rolled_back")),
        "{st}"
    );
    assert_eq!(st["file_plan_pending"], true);
    assert_eq!(canary_share(&proxy, 20).await, 0);
    let r = proxy.admin("resume");
    assert_eq!(
        (r["rollout"].as_str(), r["state"].as_str()),
        (Some("new"), Some("running"))
    );
    assert_eq!(canary_share(&proxy, 20).await, 20);
    // While running, a new id in the file starts at once.
    let (dir, path) = proxy.kill9();
    std::fs::write(&path, yaml(&s, &c, "id: newer\npercent: 0")).expect("edit");
    let proxy = Proxy::start_in(dir, path);
    let st = proxy.admin("status");
    assert_eq!(
        (st["rollout"].as_str(), st["source"].as_str()),
        (Some("newer"), Some("file"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_edited_while_halted_survives_a_restart_and_applies_on_resume() {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, STEPS));
    proxy.admin("halt");
    std::fs::write(
        &proxy.config_path,
        yaml(&s, &c, "id: checkout-v2\npercent: 30"),
    )
    .expect("edit");
    assert_eq!(proxy.admin("reload")["file_plan_pending"], true);
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    let st = proxy.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["state_file_error"].as_str()),
        (Some("halted"), None),
        "{st}"
    );
    let r = proxy.admin("resume");
    assert_eq!(
        (r["state"].as_str(), r["percent"].as_f64()),
        (Some("running"), Some(30.0)),
        "{r}"
    );
}

/// Unmounts a bind mount when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ramp_tests_as_root), ignore = "needs root: a bind mount")]
async fn a_state_file_that_is_a_single_file_bind_mount_is_still_written() {
    let (s, c) = backends().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, yaml(&s, &c, "id: mounted\npercent: 5")).expect("write");
    // As `docker run -v /host/state.json:/app/state.json`: the state file is a mount point,
    // which no file can be renamed over.
    let host = tempfile::tempdir().expect("host dir");
    let outside = host.path().join("state.json");
    // The host's file holds a state already (a first ramp's, at 6%).
    let first = Proxy::start(&yaml(&s, &c, "id: mounted\npercent: 5"));
    assert_eq!(first.admin("set 6")["ok"], true);
    std::fs::copy(first.state_file(), &outside).expect("host file");
    drop(first);
    let inside = dir.path().join("state.json");
    std::fs::write(&inside, "").expect("mount point");
    let ok = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&outside)
        .arg(&inside)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount --bind failed");
    let _mounted = Mounted(inside.clone());
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["percent"], 6.0);
    let reply = proxy.admin("set 7");
    assert_eq!(reply["ok"], true, "{reply}");
    let text = std::fs::read_to_string(&outside).expect("state");
    assert!(
        text.contains("\"percent_ppm\": 70000"),
        "on the host: {text}"
    );
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["percent"], 7.0);
    drop(proxy);
}

/// The state file written by a ramp started on `STEPS`, edited by `edit` while ramp was down,
/// then ramp started again on it.
async fn restart_with_edited_state(edit: impl Fn(&mut Value)) -> (Proxy, Backend, Backend) {
    let (s, c) = backends().await;
    let proxy = Proxy::start(&yaml(&s, &c, STEPS));
    let (dir, path) = proxy.kill9();
    let state = dir.path().join("state.json");
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(&state).expect("read")).expect("state json");
    edit(&mut v);
    std::fs::write(&state, serde_json::to_vec(&v).expect("json")).expect("write");
    (Proxy::start_in(dir, path), s, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_state_file_keeps_its_percent_and_stops_a_schedule_that_disagrees() {
    // 20% by hand, the schedule still on its first step (0.01%): the percent routed stays, and
    // the schedule stops as after `ramp ctl set` (it would have moved users by 2.5% at its
    // next step, a percent nobody set).
    let (proxy, _s, _c) = restart_with_edited_state(|v| v["percent_ppm"] = 200_000.into()).await;
    let st = proxy.admin("status");
    assert_eq!(
        (st["state"].as_str(), st["percent"].as_f64()),
        (Some("running"), Some(20.0)),
        "{st}"
    );
    assert!(st["schedule"].is_null(), "{st}");
    let share = canary_share(&proxy, 400).await;
    assert!((50..=110).contains(&share), "{share} of 400 at 20%");
    let logs = proxy.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("inconsistent") && l.contains("the percent is kept")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ending_in_the_year_9999_is_cut_to_the_step_s_hold() {
    let (proxy, _s, _c) = restart_with_edited_state(|v| {
        v["schedule"]["deadline_unix_ms"] = 253_402_300_799_000u64.into();
    })
    .await;
    let st = proxy.admin("status");
    assert_eq!(st["schedule"]["step"], 1, "{st}");
    let left = st["schedule"]["next_in_secs"].as_f64().expect("time left");
    assert!(left > 500.0 && left <= 600.0, "{left}: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_read_back_from_the_state_file_reach_the_operator_s_terminal_escaped() {
    // Whoever can write the state file (or the fleet's key) can fill the guard's reason: an
    // escape sequence there would retitle the operator's terminal and clear it at every
    // `ramp ctl status`, and a line break would forge a log line.
    const HOSTILE: &str = "\u{1b}]0;PWNED\u{7}\u{1b}[2J\n2026-12-07T16:30:00Z  INFO ramp: forged";
    let (proxy, _s, _c) = restart_with_edited_state(|v| {
        v["changed_by"] = serde_json::json!({"kind": "guard", "reason": HOSTILE, "rollout": "r"});
    })
    .await;
    let (code, out, err) = proxy.ctl(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("guard (\\u{1b}]0;PWNED"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("2026-12-07")), "{out}");
    // The JSON reply carries it escaped as JSON does, whole.
    let st = proxy.admin("status");
    assert!(
        st["changed_by"]
            .as_str()
            .is_some_and(|b| b.contains("\\n2026")),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_whose_file_plan_names_no_valid_rollout_is_unreadable() {
    // `resume` or `start` without an id would make it the rollout's id, and so every user's salt.
    let (proxy, _s, _c) =
        restart_with_edited_state(|v| v["file_plan"]["id"] = "bad id\u{1b}[2J".into()).await;
    let st = proxy.admin("status");
    assert_eq!(st["state"], "rolled_back", "{st}");
    assert!(
        st["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("the file plan's rollout id")),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_turned_into_a_link_to_the_config_never_overwrites_the_config() {
    let b = Backend::start("stable").await;
    let proxy = Proxy::start(&single(b.addr, CONTROL));
    let config = std::fs::read_to_string(&proxy.config_path).expect("config");
    // Someone replaces the state file with a link to the config file ramp reads.
    let state = proxy.state_file();
    std::fs::remove_file(&state).expect("rm");
    std::os::unix::fs::symlink(&proxy.config_path, &state).expect("link");
    let (code, out, err) = proxy.ctl(&["set", "20"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("this config file"),
        "{out}{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&proxy.config_path).expect("config"),
        config,
        "the config file was written over"
    );
}
