//! A body that sends nothing for `limit` is aborted. The timer is created only when a body first
//! has to wait, so bodies that are ready at once cost nothing.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    pub fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// Data arrived: the next wait starts a fresh period.
    #[inline]
    pub fn activity(&mut self) {
        self.armed = false;
    }

    /// Called when the body is waiting: true once it has waited `limit`.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.limit;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if !self.armed {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Why a streamed body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("no data for {0:?}")]
    Idle(Duration),
    /// The upstream closed the connection before the body's end.
    #[error("the upstream's answer was cut short")]
    Truncated,
    #[error(transparent)]
    Invalid(#[from] crate::framing::Invalid),
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The client's HTTP/1.1 request body failed.
    #[error(transparent)]
    Client(#[from] crate::inbound::InboundError),
    /// The client's request body failed while the upstream's answer was already coming.
    #[error("the request body: {0}")]
    Upload(Box<BodyError>),
    /// An event stream from the canary, ended by ramp: the rollout sends its user to stable now.
    #[error("the rollout sends this user to stable now: the canary's event stream is closed")]
    Moved,
}

impl BodyError {
    /// The kind of upstream failure a response body's error is; `None` for the client's own
    /// (its upload failing while the answer streams).
    pub fn upstream_kind(&self) -> Option<crate::metrics::UpstreamError> {
        use crate::metrics::UpstreamError;
        match self {
            BodyError::Truncated | BodyError::Io(_) => Some(UpstreamError::Reset),
            BodyError::Idle(_) => Some(UpstreamError::Timeout),
            BodyError::Invalid(_) | BodyError::Http(_) => Some(UpstreamError::Protocol),
            BodyError::Client(_) | BodyError::Upload(_) | BodyError::Moved => None,
        }
    }
}
