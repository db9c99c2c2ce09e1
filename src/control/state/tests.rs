use std::time::Duration;

use super::*;

fn plan(id: &str, plan: Plan) -> RolloutPlan {
    RolloutPlan {
        id: id.into(),
        plan,
    }
}

fn steps() -> Plan {
    Plan::Steps(crate::control::schedule::tests::steps())
}

#[test]
fn halt_and_rollback_hold_against_file_edits_until_resume() {
    let now = Instant::now();
    let mut s = RolloutState::fresh(plan("r", Plan::Percent(50_000)), now, Source::Startup);
    s.halt(now).expect("halt");
    assert_eq!(s.set(10_000), Err(Refusal::NotRunning(State::Halted)));
    // In words, not the wire's `rolled_back`.
    assert_eq!(
        Refusal::NotRunning(State::RolledBack).to_string(),
        "the rollout is rolled back: `resume` it before changing the percent"
    );
    assert_eq!(
        s.file_plan(plan("r", Plan::Percent(20_000)), now),
        FileEffect::Pending
    );
    assert_eq!((s.state, s.ppm), (State::Halted, 50_000));
    s.rollback(now);
    assert_eq!(
        s.file_plan(plan("r", Plan::Percent(30_000)), now),
        FileEffect::Pending
    );
    assert_eq!(s.state, State::RolledBack);
    s.resume(now).expect("resume");
    assert_eq!(
        (s.state, s.ppm),
        (State::Running, 30_000),
        "the file's latest plan applies"
    );
    assert_eq!(
        s.file_plan(plan("r", Plan::Percent(40_000)), now),
        FileEffect::Applied
    );
    assert_eq!(s.ppm, 40_000);
}

#[test]
fn a_new_rollout_id_in_the_file_waits_for_resume_while_rolled_back() {
    let now = Instant::now();
    let mut s = RolloutState::fresh(plan("r1", Plan::Percent(50_000)), now, Source::Startup);
    s.rollback(now);
    assert_eq!(
        s.file_plan(plan("r2", Plan::Percent(100)), now),
        FileEffect::Pending
    );
    assert_eq!(
        (s.id.as_str(), s.state, s.ppm),
        ("r1", State::RolledBack, 50_000)
    );
    s.resume(now).expect("resume");
    assert_eq!((s.id.as_str(), s.state, s.ppm), ("r2", State::Running, 100));
    assert!(!s.plan_pending && !s.pending_rollout);
    // While running, a new id starts at once.
    assert_eq!(
        s.file_plan(plan("r3", Plan::Percent(200)), now),
        FileEffect::NewRollout
    );
    assert_eq!((s.id.as_str(), s.ppm), ("r3", 200));
    // A bare `start` begins the file's rollout from a halt.
    s.halt(now).expect("halt");
    assert_eq!(
        s.file_plan(plan("r4", Plan::Percent(300)), now),
        FileEffect::Pending
    );
    s.start(None, None, now);
    assert_eq!((s.id.as_str(), s.state, s.ppm), ("r4", State::Running, 300));
}

#[test]
fn the_schedule_advances_pauses_and_completes() {
    let t0 = Instant::now();
    let mut s = RolloutState::fresh(plan("r", steps()), t0, Source::Startup);
    assert_eq!(
        (s.ppm, s.next_deadline()),
        (100, Some(t0 + Duration::from_secs(600)))
    );
    assert!(!s.advance(t0 + Duration::from_secs(599)));
    // Halt 5 minutes in, for a day: the clock stops.
    s.halt(t0 + Duration::from_secs(300)).expect("halt");
    assert_eq!(s.next_deadline(), None);
    let t1 = t0 + Duration::from_secs(86_400);
    s.resume(t1).expect("resume");
    assert_eq!(s.next_deadline(), Some(t1 + Duration::from_secs(300)));
    assert!(s.advance(t1 + Duration::from_secs(300)));
    assert_eq!((s.ppm, s.state), (50_000, State::Running));
    assert!(s.advance(t1 + Duration::from_secs(300 + 3600)));
    assert_eq!(
        (s.ppm, s.state, s.schedule),
        (1_000_000, State::Completed, None)
    );
    assert!(!s.advance(t1 + Duration::from_secs(86_400)));
}

#[test]
fn set_takes_over_from_the_schedule_and_start_begins_again() {
    let t0 = Instant::now();
    let mut s = RolloutState::fresh(plan("r", steps()), t0, Source::Startup);
    s.set(2_500).expect("set");
    assert_eq!((s.ppm, s.schedule, s.next_deadline()), (2_500, None, None));
    s.start(Some("r-b".into()), None, t0);
    assert_eq!(
        (s.id.as_str(), s.ppm, s.schedule.map(|x| x.step)),
        ("r-b", 100, Some(0))
    );
    s.start(Some("r-c".into()), Some(7), t0);
    assert_eq!((s.ppm, s.schedule), (7, None));
    s.promote();
    assert_eq!((s.state, s.ppm), (State::Completed, 1_000_000));
    assert_eq!(s.set(5), Err(Refusal::Completed));
    assert_eq!(s.halt(t0), Err(Refusal::CannotHalt(State::Completed)));
    assert_eq!(s.resume(t0), Err(Refusal::Completed));
}

#[test]
fn resume_after_rolling_back_a_completed_rollout_completes_it_again() {
    let t0 = Instant::now();
    let mut s = RolloutState::fresh(plan("r", Plan::Percent(50_000)), t0, Source::Startup);
    s.promote();
    s.rollback(t0);
    s.resume(t0).expect("resume");
    assert_eq!((s.state, s.ppm), (State::Completed, 1_000_000));
    // From a running 100% it stays running, as before the rollback.
    s.start(None, Some(1_000_000), t0);
    s.rollback(t0);
    s.resume(t0).expect("resume");
    assert_eq!((s.state, s.ppm), (State::Running, 1_000_000));
    // A plan the file gave while rolled back applies instead.
    s.promote();
    s.rollback(t0);
    assert_eq!(
        s.file_plan(plan("r", Plan::Percent(20_000)), t0),
        FileEffect::Pending
    );
    s.resume(t0).expect("resume");
    assert_eq!((s.state, s.ppm), (State::Running, 20_000));
    // Halted and rolled back: resume runs it at its percent.
    s.halt(t0).expect("halt");
    s.rollback(t0);
    s.resume(t0).expect("resume");
    assert_eq!((s.state, s.ppm), (State::Running, 20_000));
}

#[test]
fn a_state_read_back_is_settled_without_moving_the_percent() {
    let now = Instant::now();
    let fresh = || RolloutState::fresh(plan("r", steps()), now, Source::Startup);
    // As ramp keeps it: nothing to say.
    assert_eq!(fresh().settle(now), None);
    // A step at another percent than the one routed: the percent stays, the schedule stops.
    let mut s = fresh();
    s.ppm = 200_000;
    let said = s.settle(now).expect("said");
    assert_eq!((s.ppm, s.schedule), (200_000, None));
    assert!(said.contains("step 1") && said.contains("20%"), "{said}");
    // A hold ending in the year 9999: at most the step's (10 minutes).
    let mut s = fresh();
    let far = now + Duration::from_secs(250_000_000_000);
    s.schedule = s.schedule.map(|x| Schedule {
        timing: Timing::Until(far),
        ..x
    });
    assert!(s.settle(now).is_some());
    assert_eq!(
        s.schedule.and_then(|x| x.left(now)),
        Some(Duration::from_secs(600))
    );
    // Halted with its clock running: paused, with what was left.
    let mut s = fresh();
    s.state = State::Halted;
    s.schedule = s.schedule.map(|x| Schedule {
        timing: Timing::Until(now + Duration::from_secs(120)),
        ..x
    });
    assert!(s.settle(now).is_some());
    assert_eq!(
        s.schedule.map(|x| x.timing),
        Some(Timing::Paused(Duration::from_secs(120)))
    );
    // Running with its clock paused: running again.
    let mut s = fresh();
    s.schedule = s.schedule.map(|x| Schedule {
        timing: Timing::Paused(Duration::from_secs(60)),
        ..x
    });
    assert!(s.settle(now).is_some());
    assert_eq!(
        s.schedule.map(|x| x.timing),
        Some(Timing::Until(now + Duration::from_secs(60)))
    );
    // A completed rollout sends everyone to canary: at 100%, with no schedule (its percent
    // said 10% while every user went to canary).
    let mut s = fresh();
    s.state = State::Completed;
    s.ppm = 100_000;
    let said = s.settle(now).expect("said");
    assert_eq!((s.ppm, s.schedule), (BUCKETS, None));
    assert!(said.contains("completed") && said.contains("10%"), "{said}");
    let mut s = fresh();
    (s.state, s.ppm, s.schedule) = (State::Completed, BUCKETS, None);
    assert_eq!(s.settle(now), None);
    // A pending plan's position is `resume`'s to re-base.
    let mut s = fresh();
    s.plan_pending = true;
    s.ppm = 300_000;
    assert_eq!(s.settle(now), None);
    assert!(s.schedule.is_some());
}
