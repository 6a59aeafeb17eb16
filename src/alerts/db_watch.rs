//! Noticing that another process wrote the state DB (`stallwatch silence add/expire`)
//! without polling: an inotify watch on the data dir for `IN_CLOSE_WRITE` of the state DB
//! or its `-wal`. The CLI commits and then closes its read-write connection, so when this
//! fires the write is visible; the engine evaluates then and re-reads the silences.
//!
//! The sidecar's own connections stay open (they never cause the event); read-only
//! readers (`report`, `silence list`, the API) close with `IN_CLOSE_NOWRITE`, which is not
//! watched. Where inotify is unavailable the engine still re-reads silences at every
//! evaluation, at least every `engine::MAX_IDLE`.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

/// Room for inotify events read at once (16 bytes each plus the name).
const EVENT_BUFFER: usize = 4096;
/// Size of `struct inotify_event` before its name.
const EVENT_HEADER: usize = 16;

pub struct DbWatch {
    fd: AsyncFd<OwnedFd>,
    name: OsString,
}

impl DbWatch {
    /// Watches the directory of `db`. Needs a Tokio runtime with I/O enabled.
    pub fn new(db: &Path) -> io::Result<DbWatch> {
        let dir = db
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = db
            .file_name()
            .ok_or_else(|| io::Error::other("state DB path has no file name"))?
            .to_os_string();
        // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: `c` is a valid NUL-terminated path; the fd is an inotify fd.
        let wd =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_CLOSE_WRITE) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, the same
        // descriptor, until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(DbWatch { fd, name })
    }

    /// Returns when a writer closed the state DB or its `-wal`.
    pub async fn written(&self) -> io::Result<()> {
        let mut buf = [0u8; EVENT_BUFFER];
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is ours.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(n)) if names(&buf[..n]).any(|f| self.is_db(f)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    fn is_db(&self, file: &[u8]) -> bool {
        let db = self.name.as_bytes();
        file == db || file.strip_prefix(db) == Some(b"-wal")
    }
}

/// The file names of the inotify events in `buf`.
fn names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = buf.get(at..at + EVENT_HEADER)?;
        let len = u32::from_ne_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        let name = buf.get(at + EVENT_HEADER..at + EVENT_HEADER + len)?;
        at += EVENT_HEADER + len;
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        Some(&name[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_closing_the_db_wakes_it_and_a_reader_or_another_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("stallwatch.sqlite");
        std::fs::write(&db, b"").unwrap();
        let watch = DbWatch::new(&db).unwrap();
        let quiet = std::time::Duration::from_millis(200);
        // Another file written, the DB only read: no wake.
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        drop(std::fs::File::open(&db).unwrap());
        assert!(tokio::time::timeout(quiet, watch.written()).await.is_err());
        // The DB opened for writing and closed: a wake.
        drop(std::fs::OpenOptions::new().write(true).open(&db).unwrap());
        tokio::time::timeout(quiet, watch.written())
            .await
            .expect("woken by the close")
            .unwrap();
    }
}
