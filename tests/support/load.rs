//! Steady load for the tests that change things under traffic: lanes of keep-alive clients
//! sending requests back to back until stopped. Every request reads the phase flag before it is
//! sent, so "after" tallies hold only requests that started after [`Load::mark_after`].

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Client;

/// Which ids the load sends.
#[derive(Clone, Copy, Debug)]
pub enum Ids {
    /// A distinct `x-user-id` per request.
    Distinct,
    /// No id at all: every request is a newcomer.
    None,
}

/// Tallies of one phase (before or after the mark).
#[derive(Default, Debug)]
pub struct Phase {
    /// Answered 200.
    pub ok: AtomicUsize,
    /// Answered 200 by the canary (body "canary").
    pub canary: AtomicUsize,
    /// Anything but a 200, with what came back.
    pub failed: Mutex<Vec<String>>,
}

impl Phase {
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn canary(&self) -> usize {
        self.canary.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("lock").clone()
    }
}

#[derive(Default, Debug)]
pub struct Tally {
    pub before: Phase,
    pub after: Phase,
}

pub struct Load {
    after: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    /// Starts `lanes` clients on `url`.
    pub fn start(url: String, lanes: usize, ids: Ids) -> Load {
        let mut l = Load {
            after: Arc::default(),
            stop: Arc::default(),
            tally: Arc::default(),
            tasks: tokio::task::JoinSet::new(),
        };
        for lane in 0..lanes {
            let (after, stop, tally, url) = (
                Arc::clone(&l.after),
                Arc::clone(&l.stop),
                Arc::clone(&l.tally),
                url.clone(),
            );
            l.tasks.spawn(async move {
                let client = Client::http1();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let id = format!("load-{lane}-{n}");
                    let headers: Vec<(&str, &str)> = match ids {
                        Ids::Distinct => vec![("x-user-id", &id)],
                        Ids::None => vec![],
                    };
                    let phase = if after.load(Ordering::SeqCst) {
                        &tally.after
                    } else {
                        &tally.before
                    };
                    match client.try_get(&url, &headers).await {
                        Ok(r) if r.status == 200 => {
                            phase.ok.fetch_add(1, Ordering::SeqCst);
                            if r.body == "canary" {
                                phase.canary.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        other => phase
                            .failed
                            .lock()
                            .expect("lock")
                            .push(format!("{other:?}")),
                    }
                }
            });
        }
        l
    }

    /// From now on requests count as "after".
    pub fn mark_after(&self) {
        self.after.store(true, Ordering::SeqCst);
    }

    /// Waits (up to 30 s) until `done` holds of the tallies.
    pub async fn wait(&self, what: &str, done: impl Fn(&Tally) -> bool) {
        let end = Instant::now() + Duration::from_secs(30);
        while !done(&self.tally) {
            assert!(
                Instant::now() < end,
                "traffic stalled waiting for {what}: {:?}",
                self.tally
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every lane and waits for them.
    pub async fn finish(mut self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(r) = self.tasks.join_next().await {
            r.expect("load task");
        }
        self.tally
    }
}
