//! Reading the files an operator points ramp at (config, state, certificates) so that no file can
//! hang or swamp it: opened without blocking (a FIFO does not wait for a writer), only regular
//! files accepted (not a FIFO, a device like `/dev/zero`, or a directory), and never more than a
//! cap read.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most any of ramp's files may hold.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// The whole of the regular file at `path`, at most `max` bytes; any other kind of file, or a
/// longer one, is an error that says so.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            use std::os::unix::fs::FileTypeExt;
            // What open(2) says of a Unix socket: "no such device or address" (as of a device
            // without its driver).
            let socket = e.raw_os_error() == Some(nix::libc::ENXIO)
                && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket());
            if socket {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file (a socket)",
                )
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(too_large(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: read one byte past the cap to tell.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(bytes)
}

fn too_large(max: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("larger than {} KiB", max / 1024),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let socket = dir.path().join("socket");
        let _listening = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let e = read_regular(&socket, MAX_FILE).expect_err("a socket");
        assert_eq!(e.to_string(), "not a regular file (a socket)");
        let e = read_regular(&fifo, MAX_FILE).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), MAX_FILE).expect_err("a device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_regular(dir.path(), MAX_FILE).expect_err("a directory");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).expect("write");
        let e = read_regular(&big, 1024).expect_err("too big");
        assert!(e.to_string().contains("larger than 1 KiB"), "{e}");
        assert_eq!(read_regular(&big, 4096).expect("fits").len(), 2048);
    }
}
