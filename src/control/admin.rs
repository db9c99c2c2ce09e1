//! The admin socket: a Unix socket speaking one command per line, one JSON reply per line.
//! Peers are identified with SO_PEERCRED; nothing a peer sends can crash or stall the proxy.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::Admin;

use super::admin_path::Gone;
pub use super::admin_path::{
    AdminError, Owned, Takeback, another_socket, answers, bind, remove, still_ours, taken_over,
};
use super::admin_peers::Peers;
use super::command::{self, MAX_LINE, ParseError, Source};
use super::controller::Handle;
use super::reply::{self, ControlError, Reply};

/// An admin connection that sends no complete command for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// A peer that does not read its reply for this long is dropped.
const WRITE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Full,
    ReadOnly,
}

/// Accepts admin connections until the task is dropped. Accepting never waits for room: each
/// peer is identified at once and held to its uid's share (see [`Peers`]). A socket file
/// deleted (by hand, or by a cleaner of old files in `/tmp`) is made again, so that `ramp ctl`
/// can still halt: once its path has been found empty twice, a second apart (a successor that
/// binds in place removes the path for no longer than a moment).
pub async fn serve(mut listener: UnixListener, admin: Admin, owned: Owned, handle: Handle) {
    let admin = Arc::new(admin);
    let peers = Arc::new(Peers::default());
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gone = Gone::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = check.tick() => {
                if let Some(made) = gone.check(&admin, &owned) {
                    listener = made;
                }
                continue;
            }
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                static FAILED: crate::logs::EverySecond = crate::logs::EverySecond::new();
                if let Some(unlogged) = FAILED.admit_now() {
                    tracing::warn!(error = %e, unlogged, "admin accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (admin, handle, peers) = (Arc::clone(&admin), handle.clone(), Arc::clone(&peers));
        let owned = owned.clone();
        tokio::spawn(async move { connection(stream, &admin, &owned, &handle, &peers).await });
    }
}

async fn refuse(mut stream: UnixStream, why: ControlError) {
    let _ = write_reply(&mut stream, &Err(why)).await;
}

/// Writes one reply; false when the peer is gone or does not read it in time.
async fn write_reply<W: AsyncWriteExt + Unpin>(w: &mut W, reply: &Reply) -> bool {
    let line = reply::encode(reply);
    matches!(
        tokio::time::timeout(WRITE, w.write_all(&line)).await,
        Ok(Ok(()))
    )
}

async fn connection(
    stream: UnixStream,
    admin: &Admin,
    owned: &Owned,
    handle: &Handle,
    peers: &Arc<Peers>,
) {
    let Ok(cred) = stream.peer_cred() else {
        return refuse(stream, ControlError::UnknownPeer).await;
    };
    let uid = cred.uid();
    let role = if admin.allowed_uids.contains(&uid) {
        Role::Full
    } else if admin.readonly_uids.contains(&uid) {
        Role::ReadOnly
    } else {
        if let Some(unlogged) = peers.refusals.admit_now() {
            tracing::warn!(uid, pid = cred.pid(), unlogged, "admin peer refused");
        }
        return refuse(stream, ControlError::NotAllowed { uid }).await;
    };
    let Some(slot) = peers.register(uid) else {
        if let Some(unlogged) = peers.refusals.admit_now() {
            tracing::warn!(
                uid,
                pid = cred.pid(),
                unlogged,
                "admin connection refused: the uid holds too many"
            );
        }
        return refuse(
            stream,
            ControlError::TooManyConnections {
                uid,
                most: super::admin_peers::MOST_PER_UID,
            },
        )
        .await;
    };
    let source = Source::Admin {
        uid,
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(8 * 1024, read);
    let mut line = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            () = slot.close.notified() => return,
            next = tokio::time::timeout(IDLE, read_line(&mut reader, &mut line)) => next,
        };
        // Closed for a newcomer while its command came in: not run (its peer sees the
        // connection end without a reply, as for any command that did not run).
        if !slot.busy() {
            return;
        }
        let reply = match next {
            Err(_) | Ok(Err(_)) | Ok(Ok(Line::Eof)) => return,
            Ok(Ok(Line::TooLong)) => Err(ParseError::TooLong.into()),
            Ok(Ok(Line::Complete)) => match command::parse(&line) {
                Err(e) => Err(e.into()),
                Ok(cmd) if role == Role::ReadOnly && !cmd.is_read_only() => {
                    if let Some(unlogged) = peers.refusals.admit_now() {
                        tracing::warn!(
                            uid,
                            pid = cred.pid(),
                            command = cmd.name(),
                            unlogged,
                            "admin command refused: read-only peer"
                        );
                    }
                    Err(ControlError::ReadOnly { uid })
                }
                // A connection made before a restart with --takeover would change (or report) a
                // rollout the new process, the one serving from now on, does not know of.
                Ok(_) if another_socket(&admin.socket, owned) => Err(ControlError::TakenOver),
                // A command that only reads may be given up for a newcomer: its connection ends
                // at once, holding no descriptor past the uid's most.
                Ok(cmd) if cmd.is_read_only() => {
                    slot.reading();
                    tokio::select! {
                        biased;
                        () = slot.close.notified() => return,
                        reply = handle.send(cmd, source.clone()) => reply,
                    }
                }
                Ok(cmd) => handle.send(cmd, source.clone()).await,
            },
        };
        // The command is done: a reply its peer has not taken for a while may be given up for
        // the uid's newcomer (a peer that reads no replies holds no place for long).
        slot.replying();
        let written = tokio::select! {
            biased;
            () = slot.close.notified() => false,
            written = write_reply(&mut write, &reply) => written,
        };
        if !written {
            return;
        }
        slot.idle();
    }
}

enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without the newline), never holding more than [`MAX_LINE`] bytes:
/// an overlong line is consumed to its end and reported as such.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Complete,
            });
        }
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long && buf.len() + chunk.len() > MAX_LINE {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(chunk);
        }
        r.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}
