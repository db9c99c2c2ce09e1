//! An operator edits the YAML while ramp serves: renamed files, Kubernetes symlink swaps, SIGHUP,
//! `reload`, invalid edits, and what a file edit may and may not change.

mod support;

use serde_json::Value;
use support::{Backend, CONTROL, Client, Proxy, config, replace_file};

fn yaml(stable: &[&Backend], canary: &[&Backend], rollout: &str) -> String {
    config(
        stable,
        canary,
        rollout,
        &format!("sticky:\n  header: x-user-id\n{CONTROL}"),
    )
}

/// [`yaml`] for rollout `id` at `percent`, with the admin socket and state file in `dir` (the
/// config itself elsewhere: a release directory, a linked one).
fn yaml_in(s: &Backend, c: &Backend, dir: &std::path::Path, id: &str, percent: u32) -> String {
    yaml(&[s], &[c], &format!("id: {id}\npercent: {percent}"))
        .replace(
            "socket: admin.sock",
            &format!("socket: {}", dir.join("admin.sock").display()),
        )
        .replace(
            "file: state.json",
            &format!("file: {}", dir.join("state.json").display()),
        )
}

/// [`yaml`] for rollout `id` at `percent`, with the metrics listener.
fn yaml_with_metrics(s: &Backend, c: &Backend, id: &str, percent: u32) -> String {
    format!(
        "{}metrics:\n  listen: 127.0.0.1:0\n",
        yaml(&[s], &[c], &format!("id: {id}\npercent: {percent}"))
    )
}

async fn bodies(proxy: &Proxy, n: usize) -> Vec<String> {
    let client = Client::http1();
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("h-{i}");
        let r = client.get(&proxy.url("/"), &[("x-user-id", &id)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.body);
    }
    out
}

fn percent(v: &Value) -> Option<f64> {
    v["percent"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_style_rename_reloads_the_file() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: hr\npercent: 0"));
    replace_file(
        &proxy.config_path,
        &yaml(&[&s], &[&c], "id: hr\npercent: 100"),
    );
    let st = proxy.wait_status("the rename is picked up", |v| percent(v) == Some(100.0));
    assert_eq!(st["changed_by"], "file");
    assert!(bodies(&proxy, 20).await.iter().all(|b| b == "canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_symlink_swap_reloads_the_file() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    // The ConfigMap layout: ramp.yaml -> ..data/ramp.yaml, ..data -> ..v1 (a directory).
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).expect("mkdir");
    std::fs::write(
        d.join("..v1/ramp.yaml"),
        yaml(&[&s], &[&c], "id: k8s\npercent: 0"),
    )
    .expect("write");
    std::os::unix::fs::symlink("..v1", d.join("..data")).expect("link");
    std::os::unix::fs::symlink("..data/ramp.yaml", d.join("ramp.yaml")).expect("link");
    let path = d.join("ramp.yaml");
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(percent(&proxy.admin("status")), Some(0.0));
    // The kubelet writes a new version directory, then atomically renames a new ..data link.
    let d = proxy.dir.path();
    std::fs::create_dir(d.join("..v2")).expect("mkdir");
    std::fs::write(
        d.join("..v2/ramp.yaml"),
        yaml(&[&s], &[&c], "id: k8s\npercent: 100"),
    )
    .expect("write");
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).expect("link");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
    std::fs::remove_dir_all(d.join("..v1")).expect("cleanup");
    proxy.wait_status("the symlink swap is picked up", |v| {
        percent(v) == Some(100.0)
    });
    assert!(bodies(&proxy, 10).await.iter().all(|b| b == "canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_keeps_the_running_config_and_shows_in_status() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: bad\npercent: 100"));
    let broken = yaml(&[&s], &[&c], "id: bad\npercent: 150");
    replace_file(&proxy.config_path, &broken);
    let st = proxy.wait_status("the bad edit is reported", |v| {
        v["last_reload_error"].is_string()
    });
    let err = st["last_reload_error"].as_str().expect("error");
    let line = broken
        .lines()
        .position(|l| l.contains("150"))
        .expect("line")
        + 1;
    assert!(
        err.contains(&format!(
            "ramp.yaml:{line}:12: rollout.percent: must be between 0 and 100"
        )),
        "{err}"
    );
    assert_eq!(percent(&st), Some(100.0));
    assert!(
        bodies(&proxy, 10).await.iter().all(|b| b == "canary"),
        "still serving the old config"
    );
    let (code, out, _) = proxy.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("reload      error (the running config stays): "),
        "{out}"
    );
    // `reload` says why too.
    let r = proxy.admin("reload");
    assert_eq!(r["ok"], false);
    // The next valid file clears it.
    replace_file(
        &proxy.config_path,
        &yaml(&[&s], &[&c], "id: bad\npercent: 0"),
    );
    let st = proxy.wait_status("the fix is picked up", |v| percent(v) == Some(0.0));
    assert_eq!(st["last_reload_error"], Value::Null);
    // Broken again, then put back as it is in force: the log's last word is not the refusal.
    replace_file(&proxy.config_path, &broken);
    proxy.wait_status("the second bad edit is reported", |v| {
        v["last_reload_error"].is_string()
    });
    replace_file(
        &proxy.config_path,
        &yaml(&[&s], &[&c], "id: bad\npercent: 0"),
    );
    proxy.wait_status("the file is valid again", |v| {
        v["last_reload_error"].is_null()
    });
    proxy.wait_log("the file is valid again, and what it says is in force already");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_the_reload_command_reread_the_file() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: hup\npercent: 1"));
    // Edit in place (a write the watcher also sees); `reload` must report the new plan at once.
    std::fs::write(
        &proxy.config_path,
        yaml(&[&s], &[&c], "id: hup\npercent: 2"),
    )
    .expect("write");
    let r = proxy.admin("reload");
    assert_eq!(
        (r["ok"].as_bool(), percent(&r)),
        (Some(true), Some(2.0)),
        "{r}"
    );
    std::fs::write(
        &proxy.config_path,
        yaml(&[&s], &[&c], "id: hup\npercent: 3"),
    )
    .expect("write");
    proxy.signal(1);
    proxy.wait_status("SIGHUP reloads", |v| percent(v) == Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_without_an_id_starts_the_rollout_the_file_names_now() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: before\npercent: 30"));
    // A script edits the file and starts at once, before the watcher has read the edit: the
    // start is of the rollout the file names now, never the one it named before.
    replace_file(
        &proxy.config_path,
        &yaml(&[&s], &[&c], "id: after\npercent: 10"),
    );
    let r = proxy.admin("start");
    assert_eq!(
        (r["ok"].as_bool(), r["rollout"].as_str(), percent(&r)),
        (Some(true), Some("after"), Some(10.0)),
        "{r}"
    );
    let last = &r["changes"][0];
    assert_eq!(
        (last["command"].as_str(), last["rollout"].as_str()),
        (Some("start"), Some("after")),
        "{r}"
    );
    // A file that cannot be parsed refuses the start, saying why, and changes nothing.
    replace_file(&proxy.config_path, "rollout: [");
    let r = proxy.admin("start");
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("ramp.yaml")),
        "{r}"
    );
    let st = proxy.admin("status");
    assert_eq!(
        (st["rollout"].as_str(), percent(&st)),
        (Some("after"), Some(10.0)),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edit_never_undoes_a_halt_or_rollback_not_even_a_new_id() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: hold\npercent: 50"));
    proxy.admin("rollback");
    std::fs::write(
        &proxy.config_path,
        yaml(&[&s], &[&c], "id: hold\npercent: 100"),
    )
    .expect("write");
    let r = proxy.admin("reload");
    assert_eq!(
        (r["state"].as_str(), r["file_plan_pending"].as_bool()),
        (Some("rolled_back"), Some(true)),
        "{r}"
    );
    assert!(bodies(&proxy, 20).await.iter().all(|b| b == "stable"));
    // Resume applies the file's latest plan.
    let r = proxy.admin("resume");
    assert_eq!(
        (r["state"].as_str(), percent(&r)),
        (Some("running"), Some(100.0)),
        "{r}"
    );
    proxy.admin("halt");
    std::fs::write(
        &proxy.config_path,
        yaml(&[&s], &[&c], "id: hold-2\npercent: 0"),
    )
    .expect("write");
    let r = proxy.admin("reload");
    assert_eq!(
        (
            r["rollout"].as_str(),
            r["state"].as_str(),
            r["reload"].as_str()
        ),
        (Some("hold"), Some("halted"), Some("pending")),
        "a new id waits for resume: {r}"
    );
    assert_eq!(r["file_plan_pending"], true);
    // Resume begins the file's new rollout.
    let r = proxy.admin("resume");
    assert_eq!(
        (r["rollout"].as_str(), r["state"].as_str()),
        (Some("hold-2"), Some("running")),
        "{r}"
    );
    assert_eq!(percent(&r), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pool_list_applies_and_a_new_listen_address_waits_for_a_restart() {
    let (s1, s2, c) = (
        Backend::start("stable").await,
        Backend::start("stable-2").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s1], &[&c], "id: pools\npercent: 0"));
    // A request in flight on the old pool finishes while the new list takes over.
    let slow = {
        let url = proxy.url("/slow/700");
        tokio::spawn(async move {
            Client::http1()
                .get(&url, &[("x-user-id", "slow-user")])
                .await
        })
    };
    support::eventually("the slow request reaches the old pool", || {
        s1.in_flight() == 1
    })
    .await;
    let moved = yaml(&[&s2], &[&c], "id: pools\npercent: 0").replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&proxy.config_path, moved).expect("write");
    let r = proxy.admin("reload");
    assert_eq!(r["restart_required"], serde_json::json!(["listen"]), "{r}");
    // The reply names what changed: the rollout is as it was, the pools are not.
    assert_eq!(
        (&r["reload"], &r["applied"]),
        (
            &serde_json::json!("unchanged"),
            &serde_json::json!(["pools"])
        ),
        "{r}"
    );
    assert!(
        bodies(&proxy, 6).await.iter().all(|b| b == "stable-2"),
        "the new pool serves"
    );
    let finished = slow.await.expect("slow request");
    assert_eq!(
        (finished.status.as_u16(), finished.body.as_str()),
        (200, "stable")
    );
    let (code, out, _) = proxy.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("restart     needed for: listen"), "{out}");
    let (code, out, _) = proxy.ctl(&["reload"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(
            "reload      the rollout as it was; no setting changed live; a restart is needed for: listen\n"
        ),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_a_restart_could_not_start_from_is_refused_at_reload() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: tls-later\npercent: 0"));
    // TLS added to a cleartext listener waits for a restart; its files do not exist.
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    std::fs::write(
        &proxy.config_path,
        format!("{text}tls:\n  cert: missing-cert.pem\n  key: missing-key.pem\n"),
    )
    .expect("write");
    let r = proxy.admin("reload");
    assert_eq!(r["ok"], false, "{r}");
    let st = proxy.admin("status");
    assert!(
        st["last_reload_error"].as_str().is_some_and(
            |e| e.contains("a restart could not start") && e.contains("missing-cert.pem")
        ),
        "{st}"
    );
    assert_eq!(st["restart_required"], serde_json::json!([]), "{st}");
    // The proxy still serves as before.
    assert_eq!(bodies(&proxy, 3).await, vec!["stable"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_config_file_reloads_nothing() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let with_metrics = |percent: u32| yaml_with_metrics(&s, &c, "rd", percent);
    let proxy = Proxy::start(&with_metrics(1));
    let reloads = || proxy.metric("ramp_config_reloads_total{result=\"ok\"}");
    // Read as people and tools do: cat, an editor opening it, `ramp ctl --config`.
    for _ in 0..5 {
        std::fs::read_to_string(&proxy.config_path).expect("read");
        let (code, _, err) = support::ramp(&[
            "ctl",
            "--config",
            proxy.config_path.to_str().expect("utf-8"),
            "status",
        ]);
        assert_eq!(code, 0, "{err}");
    }
    // Two real edits: each is one reload, and nothing in between is another.
    for (n, percent) in [(1.0, 2), (2.0, 3)] {
        replace_file(&proxy.config_path, &with_metrics(percent));
        proxy.wait_status("the edit is applied", |v| {
            self::percent(v) == Some(f64::from(percent))
        });
        // Room for any reload the reads (or ramp's own reads of the file) would start.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(reloads().await, n, "reloads after edit {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_directory_link_switched_is_followed_and_edits_there_are_seen() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    // A deploy tool's layout: current -> releases/v1, the config read as current/ramp.yaml (the
    // admin socket and state file beside the link, outside the releases).
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let d = root.as_path();
    let text = |percent: u32| yaml_in(&s, &c, d, "rel", percent);
    for (release, percent) in [("v1", 1), ("v2", 2)] {
        std::fs::create_dir_all(d.join("releases").join(release)).expect("mkdir");
        std::fs::write(
            d.join("releases").join(release).join("ramp.yaml"),
            text(percent),
        )
        .expect("write");
    }
    std::os::unix::fs::symlink("releases/v1", d.join("current")).expect("link");
    let path = d.join("current/ramp.yaml");
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(percent(&proxy.admin("status")), Some(1.0));
    // The switch: a new link renamed over the old one.
    std::os::unix::fs::symlink("releases/v2", d.join("current.new")).expect("link");
    std::fs::rename(d.join("current.new"), d.join("current")).expect("switch");
    proxy.wait_status("the switch is picked up", |v| percent(v) == Some(2.0));
    // An edit in the release now in use.
    replace_file(&d.join("releases/v2/ramp.yaml"), &text(3));
    proxy.wait_status("the edit in the new release is picked up", |v| {
        percent(v) == Some(3.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_moved_by_an_edit_takes_the_state_along_at_once() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let proxy = Proxy::start(&yaml(&[&s], &[&c], "id: moved\npercent: 5"));
    assert_eq!(proxy.admin("rollback")["ok"], true);
    std::fs::create_dir(proxy.dir.path().join("var")).expect("mkdir");
    let text = std::fs::read_to_string(&proxy.config_path)
        .expect("config")
        .replace("file: state.json", "file: var/state.json");
    replace_file(&proxy.config_path, &text);
    let st = proxy.wait_status("the move is picked up", |v| {
        v["state_file"]
            .as_str()
            .is_some_and(|p| p.ends_with("var/state.json"))
    });
    assert_eq!(st["restart_required"], serde_json::json!([]), "{st}");
    assert_eq!(st["last_reload_error"], Value::Null, "{st}");
    // Written under the lock beside it there, the one the restart's successor takes to read it:
    // a change this process acknowledges lands before the successor reads, or is refused.
    assert!(proxy.dir.path().join("var/state.json.lock").exists());
    // The restart the edit was made for finds the rollback there, and keeps writing there.
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["state"], "rolled_back");
    assert_eq!(proxy.admin("resume")["ok"], true);
    let kept = std::fs::read_to_string(proxy.dir.path().join("var/state.json")).expect("moved");
    assert!(kept.contains("\"state\": \"running\""), "{kept}");
    // A move to where nothing can be written is refused, and the running config stays.
    let text = text.replace("file: var/state.json", "file: missing/state.json");
    replace_file(&proxy.config_path, &text);
    let st = proxy.wait_status("the refused move shows", |v| {
        v["last_reload_error"].is_string()
    });
    let error = st["last_reload_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("state.file") && error.contains("missing/state.json"),
        "{st}"
    );
    assert!(
        st["state_file"]
            .as_str()
            .is_some_and(|p| p.ends_with("var/state.json")),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_state_file_through_a_switched_link_keeps_the_state() {
    let (s, s2, c) = (
        Backend::start("stable").await,
        Backend::start("stable-2").await,
        Backend::start("canary").await,
    );
    // The config read as current/ramp.yaml, its state file beside it in each release.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let text = |stable: &[&Backend]| {
        yaml(stable, &[&c], "id: rel\npercent: 5").replace(
            "socket: admin.sock",
            &format!("socket: {}", d.join("admin.sock").display()),
        )
    };
    // The new release changes nothing of the rollout, only the pool list (an upstream more).
    for (release, text) in [("v1", text(&[&s])), ("v2", text(&[&s, &s2]))] {
        std::fs::create_dir_all(d.join(release)).expect("mkdir");
        std::fs::write(d.join(release).join("ramp.yaml"), &text).expect("write");
    }
    std::os::unix::fs::symlink("v1", d.join("current")).expect("link");
    let proxy = Proxy::start_in(dir, d.join("current/ramp.yaml"));
    assert_eq!(proxy.admin("rollback")["ok"], true);
    std::os::unix::fs::symlink("v2", d.join("current.new")).expect("link");
    std::fs::rename(d.join("current.new"), d.join("current")).expect("switch");
    // The switch reloads, and the state in force is written where the path now leads before
    // the reload is done, so a restart right after the switch still finds the rollback.
    proxy.wait_status("the switch is picked up", |v| v["upstreams"]["stable"] == 2);
    let (dir, path) = proxy.kill9();
    let proxy = Proxy::start_in(dir, path);
    assert_eq!(proxy.admin("status")["state"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_directory_removed_and_made_again_is_watched_again() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let text = |percent: u32| yaml_in(&s, &c, &d, "again", percent);
    std::fs::create_dir(d.join("conf")).expect("mkdir");
    std::fs::write(d.join("conf/ramp.yaml"), text(1)).expect("write");
    let proxy = Proxy::start_in(dir, d.join("conf/ramp.yaml"));
    // A deploy script's way: the directory goes, and comes back with a new file.
    std::fs::remove_dir_all(d.join("conf")).expect("rm");
    std::fs::create_dir(d.join("conf")).expect("mkdir");
    std::fs::write(d.join("conf/ramp.yaml"), text(2)).expect("write");
    proxy.wait_status("the new file is read", |v| percent(v) == Some(2.0));
    // And edits there are seen from then on.
    replace_file(&d.join("conf/ramp.yaml"), &text(3));
    let st = proxy.wait_status("the edit is read", |v| percent(v) == Some(3.0));
    assert_eq!(st["last_reload_error"], Value::Null, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_upstream_max_connections_past_the_open_files_limit_is_said_as_at_start() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    // Under 4,096 descriptors, upstream connections get (4,096 - 256) / 2 of them.
    let proxy = Proxy::start_with_open_files(&yaml(&[&s], &[&c], "id: fd\npercent: 0"), 4096);
    let text = std::fs::read_to_string(&proxy.config_path).expect("config");
    // Far past the limit: said, as start-up says it, and the limit's share stays in force.
    replace_file(
        &proxy.config_path,
        &format!("{text}upstream:\n  max_connections: 1000000\n"),
    );
    let r = proxy.admin("reload");
    assert_eq!(r["applied"], serde_json::json!([]), "{r}");
    support::eventually("the reload says the limit is short", || {
        proxy.logs().iter().any(|l| {
            l.contains("the open files limit is below limits.max_connections")
                && l.contains("ramp::control::controller::reload")
        })
    })
    .await;
    // Below the limit's share, an edit applies.
    replace_file(
        &proxy.config_path,
        &format!("{text}upstream:\n  max_connections: 1000\n"),
    );
    let r = proxy.admin("reload");
    assert_eq!(r["applied"], serde_json::json!(["upstream"]), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_briefly_missing_behind_a_linked_directory_is_still_watched_after() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let text = |percent: u32| yaml_in(&s, &c, &d, "gone", percent);
    // The config read through a linked directory: one directory under two names.
    std::fs::create_dir(d.join("conf")).expect("mkdir");
    std::fs::write(d.join("conf/ramp.yaml"), text(1)).expect("write");
    std::os::unix::fs::symlink("conf", d.join("current")).expect("link");
    let proxy = Proxy::start_in(dir, d.join("current/ramp.yaml"));
    // The file goes for a moment (a deploy that removes, then writes it)...
    std::fs::remove_file(d.join("conf/ramp.yaml")).expect("rm");
    proxy.wait_status("the missing file is said", |v| {
        v["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("No such file"))
    });
    std::fs::write(d.join("conf/ramp.yaml"), text(2)).expect("write");
    proxy.wait_status("the file back is read", |v| percent(v) == Some(2.0));
    // ...and edits are seen from then on.
    replace_file(&d.join("conf/ramp.yaml"), &text(3));
    let st = proxy.wait_status("the edit is read", |v| percent(v) == Some(3.0));
    assert_eq!(st["last_reload_error"], Value::Null, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_typed_just_after_an_edit_wins_over_it() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let with_metrics = |percent: u32| yaml_with_metrics(&s, &c, "r", percent);
    let proxy = Proxy::start(&with_metrics(5));
    // A command with the file unchanged reads nothing again: no reload.
    assert_eq!(proxy.admin("set 6")["ok"], true);
    assert_eq!(
        proxy
            .metric("ramp_config_reloads_total{result=\"ok\"}")
            .await,
        0.0
    );
    // The file is edited, and `set` typed before the watcher has read the edit: the edit is
    // applied first, then the command, and the watcher's read of the same edit changes nothing.
    replace_file(&proxy.config_path, &with_metrics(12));
    let r = proxy.admin("set 40");
    assert_eq!(percent(&r), Some(40.0), "{r}");
    reloads_reach(&proxy, 2.0).await;
    let st = proxy.admin("status");
    assert_eq!(percent(&st), Some(40.0), "{st}");
    let commands: Vec<&str> = st["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["command"].as_str())
        .collect();
    assert_eq!(commands[..2], ["set", "reload"], "{st}");
    // As with `start` of another rollout.
    replace_file(&proxy.config_path, &with_metrics(14));
    let r = proxy.admin("start v5 30");
    assert_eq!(
        (r["rollout"].as_str(), percent(&r)),
        (Some("v5"), Some(30.0)),
        "{r}"
    );
    reloads_reach(&proxy, 4.0).await;
    let st = proxy.admin("status");
    assert_eq!(
        (st["rollout"].as_str(), percent(&st)),
        (Some("v5"), Some(30.0)),
        "{st}"
    );
}

/// Waits (up to 20 s) until `proxy` has made `n` successful reloads (the watcher's read of an
/// edit counts one, whether or not it changes anything).
async fn reloads_reach(proxy: &Proxy, n: f64) {
    for _ in 0..400 {
        if proxy
            .metric("ramp_config_reloads_total{result=\"ok\"}")
            .await
            >= n
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} reloads: {}", proxy.metrics().await);
}
