//! What can go wrong between ramp and an upstream, and what the client is told.

use bytes::Bytes;
use http::StatusCode;

use crate::metrics::UpstreamError;
use crate::routing::PoolName;
use crate::upstream::{Exchange, Failure, SendError};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("pool {} has no healthy upstream", .0.as_str())]
    NoUpstream(PoolName),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("the upstream switched protocols (101) though nobody asked it to")]
    UnaskedUpgrade,
    /// An HTTP/2 client's WebSocket (extended CONNECT) got a success that is not a switch: passed
    /// on, it would tell the client its tunnel is open.
    #[error("the upstream answered a WebSocket handshake {0} without switching protocols")]
    UpgradeNotTaken(http::StatusCode),
    /// ramp's own limit on WebSocket tunnels open at once.
    #[error("{0} WebSocket tunnels are open (limits.max_tunnels)")]
    TooManyTunnels(usize),
}

impl ProxyError {
    /// The kind of upstream failure this is; `None` for the client's own failures (a WebSocket
    /// asked for where the upstream has none among them) and a pool without a healthy upstream.
    pub fn upstream_kind(&self) -> Option<UpstreamError> {
        match self {
            ProxyError::Send(e) => send_kind(e),
            ProxyError::UnaskedUpgrade => Some(UpstreamError::Protocol),
            // The upstream answered as HTTP/1.1 allows (it need not switch); the client asked for
            // a WebSocket where there is none.
            ProxyError::NoUpstream(_)
            | ProxyError::UpgradeNotTaken(_)
            | ProxyError::TooManyTunnels(_) => None,
        }
    }

    /// ramp's own failure to open a connection, or the client's body failing: no pool's doing.
    pub fn unjudged(&self) -> bool {
        matches!(
            self,
            ProxyError::Send(SendError::ClientBody(_) | SendError::Local(_))
                | ProxyError::TooManyTunnels(_)
        )
    }
}

/// The kind of upstream failure a failed send is; `None` for the client's own body failing and
/// for ramp's own lack of descriptors, memory or ports.
pub(super) fn send_kind(e: &SendError) -> Option<UpstreamError> {
    match e {
        SendError::Connect(_) | SendError::Tls(_) | SendError::Handshake(_) => {
            Some(UpstreamError::Connect)
        }
        SendError::ConnectTimeout
        | SendError::Timeout(_)
        | SendError::Exchange(Exchange::Stalled(_)) => Some(UpstreamError::Timeout),
        SendError::Exchange(e) if e.closed_before_answer() => Some(UpstreamError::Reset),
        SendError::Exchange(_) => Some(UpstreamError::Protocol),
        SendError::ClientBody(_) | SendError::Local(_) => None,
    }
}

/// What a failed attempt that is tried again costs its upstream's pool in the comparison: the
/// kind of failure, or `None` when the upstream had no part in it — the request came back unsent
/// (a pooled connection closed under it, which any keep-alive connection may), or the failure is
/// ramp's own or the client's.
pub fn charged(f: &Failure) -> Option<UpstreamError> {
    match &f.error {
        SendError::Exchange(_) if !f.wrote => None,
        e => send_kind(e),
    }
}

impl From<&ProxyError> for StatusCode {
    fn from(e: &ProxyError) -> StatusCode {
        match e {
            ProxyError::Send(e @ SendError::ClientBody(_)) if e.client_stalled() => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::Send(SendError::ClientBody(_)) => StatusCode::BAD_REQUEST,
            ProxyError::NoUpstream(_)
            | ProxyError::Send(SendError::Local(_))
            | ProxyError::TooManyTunnels(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Send(
                SendError::ConnectTimeout
                | SendError::Timeout(_)
                | SendError::Exchange(Exchange::Stalled(_)),
            ) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Send(
                SendError::Connect(_)
                | SendError::Tls(_)
                | SendError::Handshake(_)
                | SendError::Exchange(_),
            )
            | ProxyError::UnaskedUpgrade
            | ProxyError::UpgradeNotTaken(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The short generic body for an error status: nothing about upstreams or pools.
pub fn body_for(status: StatusCode) -> Bytes {
    Bytes::from_static(match status {
        StatusCode::BAD_GATEWAY => b"Bad Gateway\n",
        StatusCode::GATEWAY_TIMEOUT => b"Gateway Timeout\n",
        StatusCode::SERVICE_UNAVAILABLE => b"Service Unavailable\n",
        StatusCode::BAD_REQUEST => b"Bad Request\n",
        StatusCode::REQUEST_TIMEOUT => b"Request Timeout\n",
        StatusCode::URI_TOO_LONG => b"URI Too Long\n",
        StatusCode::METHOD_NOT_ALLOWED => b"Method Not Allowed\n",
        StatusCode::NOT_IMPLEMENTED => b"Not Implemented\n",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => b"Request Header Fields Too Large\n",
        _ => b"Error\n",
    })
}
