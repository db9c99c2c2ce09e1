//! Log lines any client or local user can cause, at most one a second per kind: a loop of bad
//! requests, refused admin connections or failing upstreams must not fill the log (or the disk
//! under it). Each line counts the ones it stands for.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::WorkerGuard;

/// The log writer's guard: dropped, it writes out the lines still waiting.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Keeps the log writer's `guard` until [`flush`].
pub fn keep_until_exit(guard: WorkerGuard) {
    *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
}

/// Writes out the log lines still waiting (for at most a second, if stderr's reader has
/// stalled), before the process ends: an exit that skips it loses its last lines, the reason
/// for the exit among them.
pub fn flush() {
    let guard = WRITER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

/// Log lines stderr refused (a full disk under a file it was sent to, a reader gone).
static UNWRITTEN: AtomicU64 = AtomicU64::new(0);

/// Log lines stderr refused since start-up.
pub fn unwritten_lines() -> u64 {
    UNWRITTEN.load(Ordering::Relaxed)
}

/// stderr for the log thread: a write that fails is counted ([`unwritten_lines`]) and dropped,
/// not reported on stderr (which just failed) line by line.
#[derive(Debug, Default)]
pub struct Stderr {
    /// The last line was cut short (its disk filled mid-line).
    torn: bool,
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !write_line(&mut std::io::stderr().lock(), &mut self.torn, buf) {
            // The lines of `buf` (one, from the log thread).
            let lines = buf.iter().filter(|&&b| b == b'\n').count().max(1) as u64;
            UNWRITTEN.fetch_add(lines, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Writes `line` to `out`, whole or not at all if the first byte fails; true if all of it went.
/// After a line cut short (`torn`: a disk that filled mid-line), a line break goes first, so
/// that the next line is not run into the cut one (one JSON line, where a collector reads two).
fn write_line(out: &mut impl Write, torn: &mut bool, line: &[u8]) -> bool {
    if *torn {
        if out.write_all(b"\n").is_err() {
            return false;
        }
        *torn = false;
    }
    let mut done = 0;
    while done < line.len() {
        match out.write(&line[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    *torn = done > 0 && done < line.len();
    done == line.len()
}

/// One kind of line, logged at most once a second.
#[derive(Debug)]
pub struct EverySecond {
    second: AtomicU64,
    unlogged: AtomicU64,
}

impl Default for EverySecond {
    fn default() -> Self {
        EverySecond::new()
    }
}

impl EverySecond {
    pub const fn new() -> Self {
        EverySecond {
            second: AtomicU64::new(u64::MAX),
            unlogged: AtomicU64::new(0),
        }
    }

    /// One occurrence at `now_s` (seconds on any monotonic clock): `Some(n)` to log it now, `n`
    /// the occurrences left unlogged since the last line; `None` to leave it unlogged.
    pub fn admit(&self, now_s: u64) -> Option<u64> {
        let last = self.second.load(Ordering::Relaxed);
        if last != now_s
            && self
                .second
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// [`Self::admit`] now.
    pub fn admit_now(&self) -> Option<u64> {
        self.admit(crate::clock::now_ms() / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_a_second_with_the_count_of_those_left_out() {
        let log = EverySecond::default();
        assert_eq!(log.admit(7), Some(0));
        assert_eq!(log.admit(7), None);
        assert_eq!(log.admit(7), None);
        assert_eq!(log.admit(8), Some(2));
        assert_eq!(log.admit(8), None);
        assert_eq!(log.admit(30), Some(1));
    }

    /// A disk with `room` bytes left, then full until `room` is given more.
    struct Disk {
        written: Vec<u8>,
        room: usize,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            let n = buf.len().min(self.room);
            self.written.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_short_by_a_full_disk_is_ended_before_the_next() {
        let mut disk = Disk {
            written: Vec::new(),
            room: 14,
        };
        let mut torn = false;
        assert!(write_line(&mut disk, &mut torn, b"{\"a\":1}\n"));
        assert!(!write_line(&mut disk, &mut torn, b"{\"b\":22}\n"));
        assert!(!write_line(&mut disk, &mut torn, b"{\"c\":3}\n"));
        disk.room = 100;
        assert!(write_line(&mut disk, &mut torn, b"{\"d\":4}\n"));
        // Every line the reader gets is whole or cut, never two run together.
        assert_eq!(disk.written, b"{\"a\":1}\n{\"b\":2\n{\"d\":4}\n");
    }
}
