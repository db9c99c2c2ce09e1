use super::*;

#[test]
fn a_state_round_trips_through_the_file_format() {
    let now = Instant::now();
    let wall = SystemTime::now();
    let round_trip = |s: &RolloutState| {
        let text = encode(s, now, wall).expect("encode");
        decode(&text, Path::new("t"), now, wall).expect("decode")
    };
    let plan = RolloutPlan {
        id: "r".into(),
        plan: Plan::Steps(vec![
            Step {
                ppm: 100,
                hold: Some(Duration::from_secs(600)),
            },
            Step {
                ppm: 1_000_000,
                hold: None,
            },
        ]),
    };
    let mut s = RolloutState::fresh(
        plan,
        now,
        Source::Admin {
            uid: 0,
            pid: Some(7),
        },
    );
    let text = encode(&s, now + Duration::from_secs(60), wall).expect("encode");
    let back = decode(&text, Path::new("t"), now + Duration::from_secs(60), wall).expect("decode");
    assert_eq!(
        back.schedule
            .and_then(|x| x.left(now + Duration::from_secs(60)))
            .map(|d| d.as_secs_f64().round()),
        Some(540.0)
    );
    assert_eq!(
        (back.id.as_str(), back.ppm, back.state),
        ("r", 100, State::Running)
    );
    assert_eq!(
        back.changed_by,
        Source::Admin {
            uid: 0,
            pid: Some(7)
        }
    );
    s.halt(now + Duration::from_secs(120)).expect("halt");
    let back = round_trip(&s);
    assert_eq!(
        back.schedule.map(|x| x.timing),
        Some(Timing::Paused(Duration::from_secs(480)))
    );
    // Who stopped it is kept while it is stopped; a file that says so of a running rollout (an
    // edit by hand) is not believed.
    let guard = Source::Guard {
        reason: "error rate".into(),
        rollout: "r".into(),
    };
    s.stopped = Some(Stopped {
        at: UNIX_EPOCH + Duration::from_millis(1_767_225_600_000),
        by: guard.clone(),
    });
    let back = round_trip(&s);
    assert_eq!(back.stopped, s.stopped);
    let mut running = s.clone();
    running.resume(now).expect("resume");
    let back = round_trip(&running);
    assert_eq!(back.state, State::Running);
    assert_eq!(back.stopped, None);
    // A completed rollout rolled back still completes on `resume` after a restart.
    s.promote();
    s.rollback(now);
    let mut back = round_trip(&s);
    back.resume(now).expect("resume");
    assert_eq!((back.state, back.ppm), (State::Completed, 1_000_000));
}

#[test]
fn a_cache_keeps_a_pending_halt_and_who_made_it() {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let plan = RolloutPlan {
        id: "r".into(),
        plan: Plan::Percent(50_000),
    };
    let s = RolloutState::fresh(plan, now, Source::Startup);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("cache.json");
    let by = Source::Admin {
        uid: 1000,
        pid: Some(42),
    };
    let text = encode_cache(&s, "/ramp/a", Some(("rollback", &by)), now, wall).expect("encode");
    std::fs::write(&path, &text).expect("write");
    assert_eq!(
        cache_notes(&path),
        CacheNotes {
            key: Some("/ramp/a".into()),
            pending: Some(("rollback", by))
        }
    );
    // A cache written by a ramp that did not keep who made it.
    let old = String::from_utf8(text)
        .expect("utf8")
        .replace("\"fleet_pending_by\"", "\"ignored\"")
        .replace("\"fleet_key\"", "\"ignored_too\"");
    std::fs::write(&path, old).expect("write");
    assert_eq!(
        cache_notes(&path),
        CacheNotes {
            key: None,
            pending: Some(("rollback", Source::Startup))
        }
    );
    std::fs::write(
        &path,
        encode_cache(&s, "/k", None, now, wall).expect("encode"),
    )
    .expect("write");
    assert_eq!(cache_notes(&path).pending, None);
}

#[test]
fn damaged_files_are_refused_with_a_reason() {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let p = Path::new("state.json");
    assert!(matches!(
        decode(b"{not json", p, now, wall),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        decode(b"{\"version\": 9}", p, now, wall),
        Err(StoreError::Version { found: 9, .. })
    ));
    let bad =
        br#"{"version":1,"rollout":"r","state":"running","percent_ppm":2000000,"schedule":null,
        "file_plan":{"id":"r","percent_ppm":5,"steps":null},"plan_pending":false,
        "changed_at_unix_ms":0,"changed_by":{"kind":"file"}}"#;
    assert!(matches!(
        decode(bad, p, now, wall),
        Err(StoreError::Invalid { .. })
    ));
}

#[test]
fn steps_that_fall_or_are_not_held_are_refused_as_the_config_file_s_are() {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let p = Path::new("the fleet's key");
    let with = |steps: &str| {
        format!(
            r#"{{"version":2,"rollout":"r","state":"running","percent_ppm":900000,
            "schedule":{{"step":0,"deadline_unix_ms":1,"remaining_ms":null}},
            "file_plan":{{"id":"r","percent_ppm":null,"steps":{steps}}},"plan_pending":false,
            "changed_at_unix_ms":0,"changed_by":{{"kind":"file"}}}}"#
        )
    };
    for (steps, why) in [
        (
            r#"[{"percent_ppm":900000,"hold_ms":1000},{"percent_ppm":0,"hold_ms":1000},{"percent_ppm":500000}]"#,
            "steps whose percents do not rise",
        ),
        (
            r#"[{"percent_ppm":10000,"hold_ms":1000},{"percent_ppm":10000}]"#,
            "steps whose percents do not rise",
        ),
        (
            r#"[{"percent_ppm":10000,"hold_ms":0},{"percent_ppm":500000}]"#,
            "a step other than the last without a hold",
        ),
        (
            r#"[{"percent_ppm":10000},{"percent_ppm":500000}]"#,
            "a step other than the last without a hold",
        ),
    ] {
        match decode(with(steps).as_bytes(), p, now, wall) {
            Err(StoreError::Invalid { what, .. }) => assert_eq!(what, why, "{steps}"),
            other => panic!("{steps}: {other:?}"),
        }
    }
    let fine = r#"[{"percent_ppm":10000,"hold_ms":1},{"percent_ppm":500000}]"#;
    assert!(decode(with(fine).as_bytes(), p, now, wall).is_ok());
}

#[test]
fn a_generation_is_read_back_or_taken_from_when_the_state_changed() {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let p = Path::new("state.json");
    let state = |generation: &str| {
        format!(
            r#"{{"version":2,"rollout":"r","state":"halted","percent_ppm":5,"schedule":null,
            "file_plan":{{"id":"r","percent_ppm":5,"steps":null}},"plan_pending":false,
            "changed_at_unix_ms":1767225600000,"changed_by":{{"kind":"file"}}{generation}}}"#
        )
    };
    // Written by a ramp from before generations: as late as its change.
    let old = decode(state("").as_bytes(), p, now, wall).expect("decode");
    assert_eq!(old.generation, 1_767_225_600_000);
    let read = decode(
        state(r#","generation":1767225600123"#).as_bytes(),
        p,
        now,
        wall,
    );
    assert_eq!(read.expect("decode").generation, 1_767_225_600_123);
    // One that would overtake every change to come is refused, like an unreadable state.
    let max = decode(
        state(r#","generation":18446744073709551615"#).as_bytes(),
        p,
        now,
        wall,
    );
    assert!(matches!(max, Err(StoreError::Invalid { .. })), "{max:?}");
}

#[test]
fn a_hold_that_ended_while_ramp_was_down_moves_the_schedule_on_at_start() {
    // Step 1 of 0.01% (10 minutes), then 5%. A deadline before the state's last change is
    // ramp's own too: a schedule held past its deadline (the split check failing) keeps it
    // through a plan edit that changes the state; so neither tells an edit from an outage.
    let (now, wall) = (Instant::now(), SystemTime::now());
    let file = |deadline: u64| {
        format!(
            r#"{{"version":2,"rollout":"r","state":"running","percent_ppm":100,
            "schedule":{{"step":0,"deadline_unix_ms":{deadline}}},
            "file_plan":{{"id":"r","percent_ppm":null,"steps":[{{"percent_ppm":100,"hold_ms":600000}},{{"percent_ppm":50000,"hold_ms":null}}]}},
            "plan_pending":false,"changed_at_unix_ms":1767225600000,"changed_by":{{"kind":"file"}}}}"#
        )
    };
    let p = Path::new("state.json");
    for deadline in [1_767_226_200_000, 1_767_225_000_000] {
        let mut read = decode(file(deadline).as_bytes(), p, now, wall).expect("decode");
        assert!(read.advance(now), "{deadline}");
        assert_eq!(read.ppm, 50_000);
    }
    // One still to come keeps its time left.
    let later = unix_ms(wall) + 120_000;
    let mut read = decode(file(later).as_bytes(), p, now, wall).expect("decode");
    assert!(!read.advance(now));
    let left = read.schedule.and_then(|s| s.left(now)).unwrap_or_default();
    assert!((119..=120).contains(&left.as_secs()), "{left:?}");
}

#[test]
fn a_state_file_its_owner_may_not_read_is_replaced_by_one_it_may() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("state.json");
    std::fs::write(&path, "{}").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o040)).expect("chmod");
    write_atomic(&path, b"{\"version\":2}", || false).expect("write");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    // The group's read kept, the owner's read and write added.
    assert_eq!(mode, 0o640);
}
