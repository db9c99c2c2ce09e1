//! A staged schedule advances by itself: paused-clock tests of the controller, and one real
//! short hold through the running binary.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ramp::config;
use ramp::control::{Command, Controller, Handle, Outcome, Source, Status};
use ramp::routing::State;
use serde_json::Value;
use support::{Backend, CONTROL, Client, Proxy};

const ADMIN: Source = Source::Admin { uid: 0, pid: None };

async fn controller(steps: &str) -> (Handle, tokio::task::JoinHandle<()>) {
    let yaml = format!(
        "listen: 127.0.0.1:0\npools: {{stable: ['127.0.0.1:1'], canary: ['127.0.0.1:2']}}\nrollout:\n  id: sched\n  steps:\n{steps}"
    );
    let cfg = config::parse(&yaml, Path::new("sched.yaml")).expect("config");
    let analysis = std::sync::Arc::new(ramp::analysis::Analysis::new());
    let (c, _current, handle) = Controller::start(PathBuf::from("sched.yaml"), cfg, analysis)
        .await
        .expect("start");
    (handle, tokio::spawn(c.run()))
}

/// The status after `command` (a change), or `status` itself.
async fn send(h: &Handle, command: Command) -> Status {
    match h.send(command, ADMIN).await {
        Ok(Outcome::Status(s) | Outcome::Applied { status: s, .. }) => s,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn status(h: &Handle) -> Status {
    send(h, Command::Status).await
}

const THREE: &str =
    "    - {percent: 1, hold: 10m}\n    - {percent: 5, hold: 1h}\n    - {percent: 100}\n";

#[tokio::test(start_paused = true)]
async fn steps_advance_when_each_hold_expires_and_complete_at_100() {
    let (h, _task) = controller(THREE).await;
    let s = status(&h).await;
    let sched = s.schedule.expect("a schedule");
    assert_eq!((s.percent, sched.step), (1.0, 1));
    assert_eq!(sched.next_percent, Some(5.0));
    assert_eq!(sched.next_in_secs, Some(600.0));
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert_eq!(status(&h).await.percent, 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = status(&h).await;
    assert_eq!((s.percent, s.schedule.map(|x| x.step)), (5.0, Some(2)));
    assert_eq!(s.changed_by, "schedule");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let s = status(&h).await;
    assert_eq!((s.state, s.percent), (State::Completed, 100.0));
    assert_eq!(s.schedule, None);
}

#[tokio::test(start_paused = true)]
async fn a_halt_pauses_the_clock_and_resume_continues_it() {
    let (h, _task) = controller(THREE).await;
    tokio::time::sleep(Duration::from_secs(240)).await;
    send(&h, Command::Halt).await;
    tokio::time::sleep(Duration::from_secs(7 * 86_400)).await;
    let s = status(&h).await;
    assert_eq!((s.state, s.percent), (State::Halted, 1.0));
    let sched = s.schedule.expect("a schedule");
    assert!(sched.paused);
    assert_eq!(sched.next_in_secs, Some(360.0));
    send(&h, Command::Resume).await;
    tokio::time::sleep(Duration::from_secs(359)).await;
    assert_eq!(status(&h).await.percent, 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status(&h).await.percent, 5.0);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_stops_the_schedule_and_set_takes_over_from_it() {
    let (h, _task) = controller(THREE).await;
    send(&h, Command::Rollback).await;
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(status(&h).await.state, State::RolledBack);
    send(&h, Command::Resume).await;
    let r = send(&h, Command::Set(20_000)).await;
    assert_eq!(r.schedule, None, "{r:?}");
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    let s = status(&h).await;
    assert_eq!((s.state, s.percent), (State::Running, 2.0));
}

#[tokio::test(start_paused = true)]
async fn a_last_step_below_100_stays_there() {
    let (h, _task) = controller("    - {percent: 1, hold: 1m}\n    - {percent: 50}\n").await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    let s = status(&h).await;
    assert_eq!((s.state, s.percent), (State::Running, 50.0));
    assert_eq!(s.schedule.and_then(|x| x.next_percent), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_short_hold_advances_the_running_proxy() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let yaml = support::config(
        &[&s],
        &[&c],
        "id: real\nsteps:\n  - {percent: 0, hold: 1s}\n  - {percent: 100}",
        &format!("sticky:\n  header: x-user-id\n{CONTROL}"),
    );
    let proxy = Proxy::start(&yaml);
    let client = Client::http1();
    assert_eq!(
        client
            .get(&proxy.url("/"), &[("x-user-id", "u1")])
            .await
            .body,
        "stable"
    );
    let st = proxy.wait_status("the hold expires", |v| v["state"] == "completed");
    assert_eq!(st["changed_by"], "schedule");
    assert_eq!(
        client
            .get(&proxy.url("/"), &[("x-user-id", "u1")])
            .await
            .body,
        "canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_cannot_be_persisted_waits_until_it_can() {
    let (s, c) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("state")).expect("mkdir");
    let yaml = support::config(
        &[&s],
        &[&c],
        "id: disk\nsteps:\n  - {percent: 0, hold: 1s}\n  - {percent: 100}",
        "admin:\n  socket: admin.sock\nstate:\n  file: state/state.json\n",
    );
    let path = dir.path().join("ramp.yaml");
    std::fs::write(&path, yaml).expect("config");
    let proxy = Proxy::start_in(dir, path);
    std::fs::remove_dir_all(proxy.dir.path().join("state")).expect("break the disk");
    let st = proxy.wait_status("the write fails", |v| v["state_file_error"].is_string());
    assert_eq!(
        (st["state"].as_str(), st["percent"].as_f64()),
        (Some("running"), Some(0.0)),
        "not applied unsaved: {st}"
    );
    // The step is due: status says why it waits.
    assert!(
        st["schedule"]["held"]
            .as_str()
            .is_some_and(|h| h.starts_with("the state cannot be saved, so no step is taken: ")),
        "{st}"
    );
    std::fs::create_dir(proxy.dir.path().join("state")).expect("repair");
    let st = proxy.wait_status("the step is retried", |v| v["state"] == "completed");
    assert_eq!(st["state_file_error"], Value::Null);
}
