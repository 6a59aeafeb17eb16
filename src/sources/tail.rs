//! Follows one JSON-lines log file by name, the way `tail -F` does, for a source that
//! polls every few seconds: every complete line is returned once, in order, across
//! appends, rename rotation, copytruncate, delete-and-recreate and a file that is missing
//! for a while.
//!
//! Owns: the open handle, the file's identity (device, inode), the byte offset read so far
//! and the unfinished last line. Does not own: parsing the lines (they come back as text),
//! the poll interval, or metrics — the caller reports what a [`TailBatch`] says.
//!
//! How each change to the file is seen, checked at the start of every poll:
//! - **Append**: the file at the path is the one held and it is not smaller than the
//!   offset: read on from the offset.
//! - **Rename rotation, or delete and recreate**: the path now names another file (or
//!   none). The held handle still reaches the old file, so it is read to its end first —
//!   lines written after the last poll, even after the rename, are not lost — and then the
//!   new file is read from offset 0 ([`TailBatch::rotated`]).
//! - **Copytruncate or truncation**: same file, now smaller than the offset; or as long but
//!   the byte just before the offset is no longer the one read there (it was truncated and
//!   refilled past the offset between polls). Reading restarts at 0
//!   ([`TailBatch::truncated`]). The byte check never fires on a file that is only appended
//!   to, but it cannot see every refill; and a copytruncate that happens before this side
//!   has read the lines it removes loses them. Both are inherent to copytruncate.
//! - **Missing**: [`TailError::Missing`]. A held handle is kept, so lines the writer still
//!   appends to the deleted or renamed file are returned by later polls; when a file
//!   appears at the path it is read from its beginning, since it is all new content.
//! - **Not a regular file** (a FIFO, directory, device or socket, also one renamed over
//!   the log): never opened ([`super::file::open_regular`]), [`TailError::NotAFile`],
//!   handled like a missing file: the held file is read to its end first, and the path is
//!   looked at again on every poll.
//!
//! Also inherent to following by name (as with `tail -F`): at most one file is held, so if
//! the path is rotated twice between polls the middle file is never seen, and lines a
//! writer appends to the old file after this side has switched to the new one are lost.
//!
//! Memory is bounded: one read buffer of [`READ_CHUNK_BYTES`], one unfinished line of at
//! most [`MAX_LINE_BYTES`] (a longer line is skipped and counted, never kept growing), and
//! the lines of one batch, whose bytes the caller caps per poll.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use super::file::{open_regular, OpenError};

/// Longest line kept, in bytes, without its newline: far above any sane JSON event, and
/// the most one runaway writer (a line that never ends) can make this side hold.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Bytes asked of the kernel per read: few system calls on a busy log, a small fixed buffer.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Follows one file by name; see the module documentation for what it notices and how.
#[derive(Debug)]
pub struct Tailer {
    /// The name followed; what it points at may change between polls.
    path: PathBuf,
    /// The file being read, possibly no longer at `path`.
    held: Option<Held>,
    /// Bytes of the held file consumed so far (returned, buffered in `partial`, or skipped).
    offset: u64,
    /// The consumed byte just before `offset`, to notice a truncate-and-refill. `None` at 0.
    last_byte: Option<u8>,
    /// Consumed bytes of a line whose newline has not been read yet; at most
    /// [`MAX_LINE_BYTES`].
    partial: Vec<u8>,
    /// The line being read is over [`MAX_LINE_BYTES`] (already counted): drop bytes up to
    /// and including its newline.
    discarding: bool,
    /// True until the path has first been looked at: whether to start at the file's end.
    start_at_end_pending: bool,
}

/// An open file and the identity it had when opened.
#[derive(Debug)]
struct Held {
    file: File,
    id: FileId,
}

/// What tells two files apart across renames: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What one [`Tailer::poll`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailBatch {
    /// Complete lines in file order, each without its `'\n'`; invalid UTF-8 is replaced
    /// with U+FFFD.
    pub lines: Vec<String>,
    /// The path now names another file than the one followed before (rename rotation,
    /// delete and recreate, or a file reappearing after it went missing); the old file was
    /// read to its end first, then the new one from its beginning.
    pub rotated: bool,
    /// The followed file got shorter than what had been read (copytruncate, truncation) or
    /// was truncated and refilled; reading restarted at its beginning.
    pub truncated: bool,
    /// Lines longer than [`MAX_LINE_BYTES`] dropped in this poll. A line is counted once,
    /// when it first exceeds the limit, even if its newline arrives in a later poll.
    pub skipped_oversize: u64,
    /// A cap stopped this poll before the end of the data available: poll again.
    pub more: bool,
}

impl TailBatch {
    /// Something the caller must see, which an error return would lose.
    fn has_news(&self) -> bool {
        !self.lines.is_empty() || self.skipped_oversize > 0
    }
}

/// Why a poll returned nothing.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Nothing is at the path, and the file held (if any) had nothing new.
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    /// The file exists but cannot be looked at, opened or read.
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// The path names something other than a regular file; the sentence says what.
    #[error("{sentence}")]
    NotAFile { sentence: String },
}

/// What one poll may still take.
struct Budget {
    max_lines: usize,
    bytes_left: usize,
}

impl Tailer {
    /// Follows `path`, which need not exist yet; nothing is opened until the first poll.
    ///
    /// start_at_end: true = only lines appended after the first poll (like tail -F -n0);
    /// false = from the beginning.
    ///
    /// With `true`, the first poll that finds the file positions after its last newline and
    /// returns no lines; an unfinished last line is kept and returned once its newline is
    /// appended (unless it is already over [`MAX_LINE_BYTES`]). If the first poll finds no
    /// file, `start_at_end` no longer applies: a file that appears later is new content and
    /// is read from its beginning.
    pub fn new(path: PathBuf, start_at_end: bool) -> Tailer {
        Tailer {
            path,
            held: None,
            offset: 0,
            last_byte: None,
            partial: Vec::new(),
            discarding: false,
            start_at_end_pending: start_at_end,
        }
    }

    /// Reads complete new lines, at most `max_lines` and `max_bytes` per call (set `more`
    /// when capped).
    ///
    /// `max_bytes` caps the bytes read from the file in this call, which bounds both the
    /// work and the size of the batch (plus at most one line begun in an earlier call).
    /// A line longer than `max_bytes` is still returned: it is gathered over several calls.
    /// Caps below 1 are taken as 1, so every call makes progress.
    ///
    /// Returns [`TailError::Missing`] when nothing is at the path and the held file (if
    /// any) had nothing new; lines read from the held file are returned first, and the
    /// error comes on the next call. Likewise an error after some lines were gathered
    /// returns those lines (with `more` set if the held file was not finished) and the
    /// error comes on the next call, so no line read is ever lost to an error.
    pub fn poll(&mut self, max_lines: usize, max_bytes: usize) -> Result<TailBatch, TailError> {
        let mut budget = Budget {
            max_lines: max_lines.max(1),
            bytes_left: max_bytes.max(1),
        };
        let mut batch = TailBatch::default();
        let at_path = self.identify_path()?;

        let Some(held_id) = self.held.as_ref().map(|held| held.id) else {
            // Nothing followed yet: this is the first look, or the file never existed.
            let opened = match at_path {
                None => Err(self.missing()),
                Some(_) => self.open_first(self.start_at_end_pending),
            };
            match opened {
                // A file that appears later is new content, wherever this side started.
                Ok(()) | Err(TailError::Missing { .. }) => self.start_at_end_pending = false,
                // Unreadable for now: decide where to start once it can be read.
                Err(TailError::Io { .. } | TailError::NotAFile { .. }) => {}
            }
            opened?;
            self.read_available(&mut budget, &mut batch)?;
            return Ok(batch);
        };

        if at_path == Some(held_id) {
            self.restart_if_truncated(&mut batch)?;
            self.read_available(&mut budget, &mut batch)?;
            return Ok(batch);
        }

        // The path names another file or none: finish the held one first.
        self.read_available(&mut budget, &mut batch)?;
        if batch.more {
            return Ok(batch);
        }
        let has_news = batch.has_news();
        if at_path.is_none() {
            return if has_news {
                Ok(batch)
            } else {
                Err(self.missing())
            };
        }
        match self.switch_to_path(&mut batch) {
            Ok(()) => {}
            // Hand over what the old file gave; the next poll retries the switch.
            Err(_) if has_news => return Ok(batch),
            Err(err) => return Err(err),
        }
        self.read_available(&mut budget, &mut batch)?;
        Ok(batch)
    }

    /// Bytes of the file currently followed that have been consumed: returned as lines,
    /// held as the start of an unfinished line, or skipped as part of an oversize line.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn missing(&self) -> TailError {
        TailError::Missing {
            path: self.path.clone(),
        }
    }

    fn io_error(&self, err: &io::Error) -> TailError {
        TailError::Io {
            path: self.path.clone(),
            reason: err.to_string(),
        }
    }

    /// The identity of whatever the path names now (following symlinks), `None` if nothing.
    fn identify_path(&self) -> Result<Option<FileId>, TailError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(Some(FileId::of(&meta))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.io_error(&err)),
        }
    }

    /// Opens the path, if it is a regular file, and reads the identity of what was
    /// actually opened. Never blocks in `open()` (a FIFO is refused, not opened).
    fn open_path(&self) -> Result<Held, TailError> {
        let (file, meta) = open_regular(&self.path, "a log file").map_err(|err| match err {
            OpenError::Missing(_) => self.missing(),
            OpenError::NotAFile(sentence) => TailError::NotAFile { sentence },
            OpenError::Io { source, .. } => self.io_error(&source),
        })?;
        Ok(Held {
            file,
            id: FileId::of(&meta),
        })
    }

    /// Opens the path for the first time, at its beginning or after its last newline.
    fn open_first(&mut self, start_at_end: bool) -> Result<(), TailError> {
        let held = self.open_path()?;
        self.reset_position();
        if start_at_end {
            let len = held
                .file
                .metadata()
                .map_err(|err| self.io_error(&err))?
                .len();
            let (offset, last_byte, discarding) =
                tail_position(&held.file, len).map_err(|err| self.io_error(&err))?;
            self.offset = offset;
            self.last_byte = last_byte;
            self.discarding = discarding;
        }
        self.held = Some(held);
        Ok(())
    }

    /// Follows the file now at the path from its beginning, dropping the held one.
    fn switch_to_path(&mut self, batch: &mut TailBatch) -> Result<(), TailError> {
        let held = self.open_path()?;
        if self.held.as_ref().map(|old| old.id) == Some(held.id) {
            // Moved back between the look and the open: still the same file.
            return Ok(());
        }
        self.reset_position();
        self.held = Some(held);
        batch.rotated = true;
        Ok(())
    }

    /// Restarts at 0 if the held file got shorter than the offset, or if the byte before
    /// the offset changed (truncated and refilled past the offset since the last poll).
    fn restart_if_truncated(&mut self, batch: &mut TailBatch) -> Result<(), TailError> {
        let Some(held) = self.held.as_ref() else {
            return Ok(());
        };
        let len = held
            .file
            .metadata()
            .map_err(|err| self.io_error(&err))?
            .len();
        let rewritten = if len < self.offset {
            true
        } else if let Some(expected) = self.last_byte {
            let mut byte = [0u8; 1];
            match held.file.read_at(&mut byte, self.offset - 1) {
                Ok(1) => byte[0] != expected,
                // Shrank since the length was read.
                Ok(_) => true,
                Err(err) => return Err(self.io_error(&err)),
            }
        } else {
            false
        };
        if rewritten {
            self.reset_position();
            batch.truncated = true;
        }
        Ok(())
    }

    /// Back to offset 0 with nothing buffered, for a new or truncated file. An unfinished
    /// line of the old content can never be completed, so it is dropped (and logged).
    fn reset_position(&mut self) {
        if !self.partial.is_empty() {
            tracing::warn!(
                path = %self.path.display(),
                bytes = self.partial.len(),
                "log file was rotated or truncated with an unfinished last line; dropping it"
            );
        }
        self.offset = 0;
        self.last_byte = None;
        self.clear_partial();
        self.discarding = false;
    }

    fn clear_partial(&mut self) {
        self.partial.clear();
        // Give back the memory of a long line rather than keep up to MAX_LINE_BYTES forever.
        self.partial.shrink_to(READ_CHUNK_BYTES);
    }

    /// Reads the held file from the offset until its end or a cap.
    fn read_available(
        &mut self,
        budget: &mut Budget,
        batch: &mut TailBatch,
    ) -> Result<(), TailError> {
        let mut buf = vec![0u8; READ_CHUNK_BYTES.min(budget.bytes_left)];
        loop {
            let Some(held) = self.held.as_ref() else {
                return Ok(());
            };
            if budget.bytes_left == 0 {
                // Capped by bytes: is there more than what was read?
                let len = held
                    .file
                    .metadata()
                    .map_err(|err| self.io_error(&err))?
                    .len();
                batch.more = self.offset < len;
                return Ok(());
            }
            let want = buf.len().min(budget.bytes_left);
            let read = match held.file.read_at(&mut buf[..want], self.offset) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if !batch.has_news() => return Err(self.io_error(&err)),
                Err(_) => {
                    // Hand over what was gathered; the next poll retries and reports.
                    batch.more = true;
                    return Ok(());
                }
            };
            let used = self.consume(&buf[..read], budget.max_lines, batch);
            budget.bytes_left -= used;
            if used < read {
                // The line cap stopped it before a complete line.
                batch.more = true;
                return Ok(());
            }
        }
    }

    /// Splits `data` (read at the offset) into lines, advancing the offset over what it
    /// takes. Stops before a complete line that would exceed `max_lines`; returns the
    /// number of bytes taken.
    fn consume(&mut self, data: &[u8], max_lines: usize, batch: &mut TailBatch) -> usize {
        let mut taken = 0;
        while taken < data.len() {
            let rest = &data[taken..];
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                // An unfinished line: keep it, unless it has grown too long.
                if !self.discarding {
                    if self.partial.len() + rest.len() > MAX_LINE_BYTES {
                        self.skip_oversize(batch);
                        self.discarding = true;
                    } else {
                        self.partial.extend_from_slice(rest);
                    }
                }
                self.advance(rest);
                taken = data.len();
                break;
            };
            let piece = &rest[..newline];
            if self.discarding {
                self.discarding = false;
            } else if self.partial.len() + piece.len() > MAX_LINE_BYTES {
                self.skip_oversize(batch);
            } else {
                if batch.lines.len() >= max_lines {
                    return taken;
                }
                let line = if self.partial.is_empty() {
                    String::from_utf8_lossy(piece).into_owned()
                } else {
                    self.partial.extend_from_slice(piece);
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.clear_partial();
                    line
                };
                batch.lines.push(line);
            }
            self.advance(&rest[..=newline]);
            taken += newline + 1;
        }
        taken
    }

    /// Counts a line over [`MAX_LINE_BYTES`] and drops what was kept of it.
    fn skip_oversize(&mut self, batch: &mut TailBatch) {
        batch.skipped_oversize += 1;
        tracing::warn!(
            path = %self.path.display(),
            max_line_bytes = MAX_LINE_BYTES,
            "log line longer than the limit; skipping it"
        );
        self.clear_partial();
    }

    /// Moves the offset over `consumed`, which is not empty.
    fn advance(&mut self, consumed: &[u8]) {
        self.offset += consumed.len() as u64;
        self.last_byte = consumed.last().copied();
    }
}

/// Where to start reading a file of `len` bytes so that only lines finished after now are
/// returned: just after the last newline, found within the last [`MAX_LINE_BYTES`] + 1
/// bytes. Returns (offset, byte before it, whether the unfinished line is already too long
/// to keep and must be discarded up to its newline).
fn tail_position(file: &File, len: u64) -> io::Result<(u64, Option<u8>, bool)> {
    let floor = len.saturating_sub(MAX_LINE_BYTES as u64 + 1);
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut end = len;
    while end > floor {
        let start = end.saturating_sub(READ_CHUNK_BYTES as u64).max(floor);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok((start + at as u64 + 1, Some(b'\n'), false));
        }
        end = start;
    }
    if floor == 0 {
        // No newline at all, and short enough to keep: the whole file is one unfinished line.
        Ok((0, None, false))
    } else {
        // The unfinished line began before this side started and is already too long.
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)?;
        Ok((len, Some(last[0]), true))
    }
}

#[cfg(test)]
#[path = "tail_tests.rs"]
mod tests;
