//! Opening an app's own files (a SQLite database, a JSON-lines log) so that no path can
//! block a source: only a regular file is ever opened.
//!
//! A FIFO blocks `open()` for reading until a writer comes, forever if none does; a
//! character device like `/dev/zero` reads without end; a directory or a socket is never a
//! database or a log. [`open_regular`] looks at the path before opening it, opens it with
//! `O_NONBLOCK` (so a FIFO swapped in between the look and the open cannot block the
//! open), looks again through the open handle (what was opened, not what the path names
//! by then) and only then switches the handle back to blocking reads.
//!
//! Owns: that check and its sentence. Does not own: what a caller does with the file, or
//! how it retries (a refused path is retried on the next poll, like a missing one).

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::config::source::Location;
use crate::config::SourceConfig;

/// What a file type is, for a sentence ("is a FIFO (named pipe)").
pub fn file_type_name(ft: FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// What a source expects at its path: `"a log file"` or `"a SQLite database file"`.
pub fn expected(location: &Location) -> Option<&'static str> {
    match location {
        Location::Sqlite(_) => Some("a SQLite database file"),
        Location::File(_) => Some("a log file"),
        Location::Postgres(_) => None,
    }
}

/// The sentence for a path that names something other than a regular file.
pub fn not_a_file_sentence(path: &Path, ft: FileType, expected: &str) -> String {
    format!(
        "{} is {}, not {expected}; point url at the app's {}",
        path.display(),
        file_type_name(ft),
        expected.trim_start_matches("a ")
    )
}

/// Why [`open_regular`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing is at the path.
    #[error("{path} does not exist", path = .0.display())]
    Missing(std::path::PathBuf),
    /// Something other than a regular file is at the path: the sentence says what.
    #[error("{0}")]
    NotAFile(String),
    /// The path could not be looked at or opened.
    #[error("cannot open {path}: {source}", path = .path.display())]
    Io {
        path: std::path::PathBuf,
        source: io::Error,
    },
}

impl OpenError {
    fn io(path: &Path, source: io::Error) -> OpenError {
        if source.kind() == io::ErrorKind::NotFound {
            OpenError::Missing(path.to_path_buf())
        } else {
            OpenError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn regular(path: &Path, meta: &Metadata, expected: &str) -> Result<(), OpenError> {
    if meta.is_file() {
        Ok(())
    } else {
        Err(OpenError::NotAFile(not_a_file_sentence(
            path,
            meta.file_type(),
            expected,
        )))
    }
}

/// Opens `path` for reading if, and only if, it is a regular file (following symlinks);
/// never blocks in `open()`. Returns the file and what it is (through the handle).
pub fn open_regular(path: &Path, expected: &str) -> Result<(File, Metadata), OpenError> {
    let before = std::fs::metadata(path).map_err(|e| OpenError::io(path, e))?;
    regular(path, &before, expected)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| OpenError::io(path, e))?;
    let meta = file.metadata().map_err(|e| OpenError::io(path, e))?;
    regular(path, &meta, expected)?;
    clear_nonblock(&file).map_err(|e| OpenError::io(path, e))?;
    Ok((file, meta))
}

/// Back to blocking reads (a regular file ignores the flag, but nothing should inherit it).
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function's caller owns; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// For `run` and `check-config`: the first source whose path exists and is not a regular
/// file, as (index in the config, sentence). A missing path is fine: the source reports
/// it and waits for the file. Looks, never opens.
pub fn first_not_a_file(sources: &[SourceConfig]) -> Option<(usize, String)> {
    sources.iter().enumerate().find_map(|(i, source)| {
        let (Location::Sqlite(path) | Location::File(path)) = &source.location else {
            return None;
        };
        let meta = std::fs::metadata(path).ok()?;
        let expected = expected(&source.location)?;
        (!meta.is_file()).then(|| (i, not_a_file_sentence(path, meta.file_type(), expected)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn only_a_regular_file_is_opened_and_nothing_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = Instant::now();
        for (path, what) in [
            (fifo.as_path(), "a FIFO (named pipe)"),
            (dir.path(), "a directory"),
            (link.as_path(), "a character device"),
            (socket.as_path(), "a socket"),
        ] {
            match open_regular(path, "a log file") {
                Err(OpenError::NotAFile(sentence)) => assert_eq!(
                    sentence,
                    format!(
                        "{} is {what}, not a log file; point url at the app's log file",
                        path.display()
                    )
                ),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            open_regular(&dir.path().join("none"), "a log file"),
            Err(OpenError::Missing(_))
        ));

        let file = dir.path().join("events.jsonl");
        std::fs::write(&file, b"line\n").unwrap();
        let (mut opened, meta) = open_regular(&file, "a log file").unwrap();
        assert!(meta.is_file());
        let mut text = String::new();
        opened.read_to_string(&mut text).unwrap();
        assert_eq!(text, "line\n");
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "blocking reads again");
    }

    #[test]
    fn a_fifo_opened_without_a_writer_returns_at_once() {
        // The race open_regular closes: the path was a file when looked at and is a FIFO
        // when opened. O_NONBLOCK makes that open return; the handle's type refuses it.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let meta = file.metadata().unwrap();
        assert!(matches!(
            regular(&fifo, &meta, "a log file"),
            Err(OpenError::NotAFile(_))
        ));
    }
}
