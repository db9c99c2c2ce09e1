use super::*;

#[test]
fn one_request_per_user_gives_about_the_variance_per_request() {
    let mut c = Clusters::default();
    // 4,000 users, one request each, every 20th failing: 5%.
    for u in 0..4_000usize {
        c.add_cell(u, 1, [u64::from(u % 20 == 0), 0]);
    }
    let s = c.whole(Kind::Errors);
    assert_eq!(
        s.arm,
        Arm {
            n: 4_000,
            hits: 200
        }
    );
    let binomial = 0.05 * 0.95 / 4_000.0;
    assert!(
        (s.variance / binomial - 1.0).abs() < 0.01,
        "{} vs {binomial}",
        s.variance
    );
}

#[test]
fn a_heavy_user_widens_the_variance_by_as_much_as_it_moves_the_rate() {
    let mut c = Clusters::default();
    for u in 0..4_000usize {
        c.add_cell(u, 1, [u64::from(u % 20 == 0), 0]);
    }
    // One client with 1,000 requests that all fail: the rate goes from 5% to 24%.
    c.add_cell(4_000, 1_000, [1_000, 0]);
    let s = c.whole(Kind::Errors);
    let rate = s.arm.rate();
    assert!((rate - 0.24).abs() < 0.001, "{rate}");
    // How far it moves the rate: 0.19, a standard deviation as large as the move it made.
    let sd = s.variance.sqrt();
    assert!((0.185..0.195).contains(&sd), "{sd}");
    // Left out, it is gone with its requests, and the variance is the plain one again.
    let without = c.without_busy(Kind::Errors);
    assert_eq!(
        without.arm,
        Arm {
            n: 4_000,
            hits: 200
        }
    );
    assert_eq!(without.left_out, 1);
    assert!((without.variance / (0.05 * 0.95 / 4_000.0) - 1.0).abs() < 0.01);
}

#[test]
fn busy_cells_are_left_out_by_their_requests_never_by_their_errors() {
    let mut c = Clusters::default();
    // 100 users with 2 requests each (cells 100..200); 30 of them always fail.
    for u in 100..200usize {
        let e = if u < 130 { 2 } else { 0 };
        c.add_cell(u, 2, [e, 0]);
    }
    // Users who always fail but make no more requests than others are no one's doing: kept.
    let none = c.without_busy(Kind::Errors);
    assert_eq!((none.arm, none.left_out), (Arm { n: 200, hits: 60 }, 0));
    assert_eq!(none.hit_cells, 30);
    // A client with 17 requests (more than 8 × 2) that never fail, and one with 100 that
    // all do: both left out; one with 16 is not busy.
    c.add_cell(7, 17, [0, 0]);
    c.add_cell(8, 100, [100, 0]);
    c.add_cell(9, 16, [0, 0]);
    let without = c.without_busy(Kind::Errors);
    assert_eq!(
        (without.arm, without.left_out),
        (Arm { n: 216, hits: 60 }, 2)
    );
    // Cells grow: the one with 16 gains one and is busy too.
    c.add_cell(9, 1, [0, 0]);
    assert_eq!(c.without_busy(Kind::Errors).arm, Arm { n: 200, hits: 60 });
    // The sums kept as cells grew are those of the cells.
    let mut again = Clusters::default();
    again.add(&c);
    assert_eq!(again, c);
    // Slow answers are counted apart.
    c.add_cell(100, 0, [0, 2]);
    assert_eq!(c.whole(Kind::Slow).arm.hits, 2);
    assert_eq!(c.whole(Kind::Errors).arm.hits, 160);
    c.clear();
    assert_eq!(c.whole(Kind::Errors).arm, Arm::default());
    assert!(c.whole(Kind::Errors).variance.is_infinite());
    // As many busy cells as the busiest known: there may be more, and none is left out.
    for u in 100..200usize {
        c.add_cell(u, 2, [0, 0]);
    }
    for u in 300..315usize {
        c.add_cell(u, 100, [0, 0]);
    }
    assert_eq!(c.without_busy(Kind::Errors).left_out, 15);
    c.add_cell(315, 100, [0, 0]);
    assert_eq!(c.without_busy(Kind::Errors).left_out, 0);
    c.clear();
    // Fewer cells than the busiest: nothing to tell busy from usual by.
    c.add_cell(1, 1_000, [0, 0]);
    c.add_cell(2, 1, [1, 0]);
    assert_eq!(c.without_busy(Kind::Errors).left_out, 0);
    // A cell past the end is ignored.
    c.clear();
    c.add_cell(CELLS, 1, [1, 0]);
    assert_eq!(c.whole(Kind::Errors).arm, Arm::default());
}

#[test]
fn a_busy_cell_s_latencies_are_taken_out_with_those_from_before_they_were_counted() {
    use crate::analysis::histogram::{BUCKETS, index};
    let (fast, slow) = (index(1_000), index(200_000));
    let mut since = Clusters::default();
    let mut all = vec![0u64; BUCKETS];
    // Two seconds: 100 users with 1 request each (1 ms) a second, and one client with 50
    // (200 ms) whose latencies are counted apart from the second second on.
    for second in 0..2usize {
        let mut tick = Clusters::default();
        for u in 0..100 {
            tick.add_cell(100 + second * 100 + u, 1, [0, 0]);
            all[fast] += 1;
        }
        tick.add_cell(7, 50, [0, 0]);
        all[slow] += 50;
        if second == 1 {
            let mut counted = vec![0u64; BUCKETS];
            counted[slow] = 50;
            tick.add_latency(7, &counted);
        }
        since.add(&tick);
    }
    // All of its 100 slow answers are gone (the 50 counted, taken as half of its requests),
    // and no one else's.
    let (kept, left_out) = since.latency_without_busy(&all);
    assert_eq!(left_out, 1);
    assert_eq!((kept[slow], kept[fast]), (0, 200));
    // A cell that falls out of the busiest is no longer counted.
    let mut tick = Clusters::default();
    for u in 0..TRACKED {
        tick.add_cell(1_000 + u, 1_000, [0, 0]);
    }
    since.add(&tick);
    assert!(!since.busiest().contains(&7));
    let (kept, _) = since.latency_without_busy(&all);
    assert_eq!(kept[slow], 100);
}

#[test]
fn every_busy_cell_tracked_is_taken_out_of_the_latencies_however_many() {
    use crate::analysis::histogram::{BUCKETS, index};
    let (fast, slow) = (index(1_000), index(200_000));
    let mut since = Clusters::default();
    let mut all = vec![0u64; BUCKETS];
    // 1,000 users with 2 slow-ish answers each, and 20 clients with 100 fast ones: as many
    // busy cells as the rates would leave none of out.
    let mut tick = Clusters::default();
    for u in 0..1_000 {
        tick.add_cell(100 + u, 2, [0, 0]);
        all[slow] += 2;
    }
    for b in 0..20 {
        tick.add_cell(b, 100, [0, 0]);
        all[fast] += 100;
        let mut counted = vec![0u64; BUCKETS];
        counted[fast] = 100;
        tick.add_latency(b, &counted);
    }
    since.add(&tick);
    assert_eq!(since.without_busy(Kind::Errors).left_out, 0);
    let (kept, left_out) = since.latency_without_busy(&all);
    assert_eq!(left_out, 20);
    assert_eq!((kept[fast], kept[slow]), (0, 2_000));
    // Forgetting the slow answers forgets the requests they were counted of: the share
    // starts afresh with the requests after (it read 0% slow of 4,000 with 1 of 2 slow).
    since.add_cell(100, 0, [0, 2]);
    assert_eq!(since.whole(Kind::Slow).arm.hits, 2);
    since.clear_slow();
    assert_eq!(since.whole(Kind::Slow).arm, Arm { n: 0, hits: 0 });
    since.add_cell(101, 2, [0, 1]);
    let slow_share = since.whole(Kind::Slow);
    assert_eq!(slow_share.arm, Arm { n: 2, hits: 1 });
    assert_eq!(slow_share.hit_cells, 1);
    // The errors' count, and whom busy is judged by, keep every request.
    assert_eq!(since.whole(Kind::Errors).arm.n, 4_002);
    assert_eq!(since.busiest()[0], 0);
}
