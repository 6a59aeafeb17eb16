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
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::path::Path;

    /// Caps large enough that no test below reaches them unless it means to.
    const ALL_LINES: usize = 1_000_000;
    const ALL_BYTES: usize = 1 << 30;

    fn append(path: &Path, data: &[u8]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(data).unwrap();
    }

    fn poll_all(tailer: &mut Tailer) -> TailBatch {
        let batch = tailer.poll(ALL_LINES, ALL_BYTES).unwrap();
        assert!(!batch.more);
        batch
    }

    fn lines(batch: &TailBatch) -> Vec<&str> {
        batch.lines.iter().map(String::as_str).collect()
    }

    #[test]
    fn appends_across_polls_are_each_returned_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"{\"n\":1}\n{\"n\":2}\n");
        let mut tailer = Tailer::new(path.clone(), false);

        assert_eq!(lines(&poll_all(&mut tailer)), ["{\"n\":1}", "{\"n\":2}"]);
        assert_eq!(tailer.offset(), 16);
        assert!(lines(&poll_all(&mut tailer)).is_empty());

        append(&path, b"{\"n\":3}\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["{\"n\":3}"]);
        assert!(!batch.rotated && !batch.truncated);
        assert_eq!(tailer.offset(), 24);
    }

    #[test]
    fn partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"first\n{\"half\":");
        let mut tailer = Tailer::new(path.clone(), false);

        assert_eq!(lines(&poll_all(&mut tailer)), ["first"]);
        append(&path, b"tr");
        assert!(lines(&poll_all(&mut tailer)).is_empty());
        append(&path, b"ue}\nnext\n");
        assert_eq!(lines(&poll_all(&mut tailer)), ["{\"half\":true}", "next"]);
    }

    #[test]
    fn rename_rotation_reads_the_old_file_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotated = dir.path().join("events.jsonl.1");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"a\nb\n").unwrap();
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["a", "b"]);

        // After the last poll: more to the old file, the rename, more to the old file
        // through the writer's handle (it has not reopened yet), then a new file.
        writer.write_all(b"c\n").unwrap();
        fs::rename(&path, &rotated).unwrap();
        writer.write_all(b"d\n").unwrap();
        append(&path, b"e\nf\n");

        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["c", "d", "e", "f"]);
        assert!(batch.rotated);
        assert!(!batch.truncated);
        assert_eq!(tailer.offset(), 4);

        append(&path, b"g\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["g"]);
        assert!(!batch.rotated);
    }

    #[test]
    fn unfinished_line_of_a_replaced_file_is_dropped_not_glued_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"a\n{\"cut\":");
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["a"]);

        fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        append(&path, b"b\n{\"cut\":");
        let batch = poll_all(&mut tailer);
        assert!(batch.rotated);
        assert_eq!(lines(&batch), ["b"]);

        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"c\n");
        let batch = poll_all(&mut tailer);
        assert!(batch.truncated);
        assert_eq!(lines(&batch), ["c"]);
    }

    #[test]
    fn copytruncate_restarts_at_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"one\ntwo\n");
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["one", "two"]);

        fs::copy(&path, dir.path().join("events.jsonl.1")).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let batch = poll_all(&mut tailer);
        assert!(batch.truncated);
        assert!(!batch.rotated);
        assert!(batch.lines.is_empty());
        assert_eq!(tailer.offset(), 0);

        append(&path, b"three\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["three"]);
        assert!(!batch.truncated);
    }

    #[test]
    fn truncation_then_a_short_write_before_the_poll_is_read_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"a long first line\n");
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["a long first line"]);

        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"new\n");
        let batch = poll_all(&mut tailer);
        assert!(batch.truncated);
        assert_eq!(lines(&batch), ["new"]);
    }

    #[test]
    fn truncation_refilled_past_the_offset_is_noticed_by_the_byte_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"{\"n\":1}\n");
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["{\"n\":1}"]);

        // Same inode, now longer than the offset; byte 7 was '\n', now it is 'x'.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"{\"pad\":\"xxxx\"}\n");
        let batch = poll_all(&mut tailer);
        assert!(batch.truncated);
        assert_eq!(lines(&batch), ["{\"pad\":\"xxxx\"}"]);
    }

    #[test]
    fn delete_and_recreate_is_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"a\n").unwrap();
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["a"]);

        writer.write_all(b"b\n").unwrap();
        fs::remove_file(&path).unwrap();
        writer.write_all(b"c\n").unwrap();
        append(&path, b"d\n");

        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["b", "c", "d"]);
        assert!(batch.rotated);
    }

    #[test]
    fn deleted_file_is_drained_then_missing_then_followed_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(b"a\n").unwrap();
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["a"]);

        writer.write_all(b"b\n").unwrap();
        fs::remove_file(&path).unwrap();
        // The lines still reachable through the held handle come first.
        assert_eq!(lines(&poll_all(&mut tailer)), ["b"]);
        let err = tailer.poll(ALL_LINES, ALL_BYTES).unwrap_err();
        assert!(matches!(err, TailError::Missing { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{} does not exist", path.display())
        );

        // A writer that has not reopened yet still writes to the deleted file.
        writer.write_all(b"c\n").unwrap();
        assert_eq!(lines(&poll_all(&mut tailer)), ["c"]);
        assert!(tailer.poll(ALL_LINES, ALL_BYTES).is_err());

        append(&path, b"d\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["d"]);
        assert!(batch.rotated);
    }

    #[test]
    fn missing_file_reports_missing_then_is_read_from_its_beginning() {
        for start_at_end in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.jsonl");
            let mut tailer = Tailer::new(path.clone(), start_at_end);

            for _ in 0..2 {
                let err = tailer.poll(ALL_LINES, ALL_BYTES).unwrap_err();
                assert!(matches!(err, TailError::Missing { .. }), "{err:?}");
            }
            append(&path, b"a\nb\n");
            let batch = poll_all(&mut tailer);
            assert_eq!(lines(&batch), ["a", "b"], "start_at_end={start_at_end}");
            assert!(!batch.rotated);
        }
    }

    #[test]
    fn start_at_end_returns_only_lines_finished_after_the_first_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"old 1\nold 2\n");
        let mut tailer = Tailer::new(path.clone(), true);

        assert!(lines(&poll_all(&mut tailer)).is_empty());
        assert_eq!(tailer.offset(), 12);
        append(&path, b"new\n");
        assert_eq!(lines(&poll_all(&mut tailer)), ["new"]);

        // From the beginning, the same file gives everything.
        let mut from_start = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut from_start)), ["old 1", "old 2", "new"]);
    }

    #[test]
    fn start_at_end_keeps_an_unfinished_last_line_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"old\n{\"n\":");
        let mut tailer = Tailer::new(path.clone(), true);
        assert!(lines(&poll_all(&mut tailer)).is_empty());
        append(&path, b"2}\n");
        assert_eq!(lines(&poll_all(&mut tailer)), ["{\"n\":2}"]);

        // A file that is one unfinished line is kept from byte 0.
        let single = dir.path().join("single.jsonl");
        append(&single, b"{\"n\":");
        let mut tailer = Tailer::new(single.clone(), true);
        assert!(lines(&poll_all(&mut tailer)).is_empty());
        append(&single, b"1}\n");
        assert_eq!(lines(&poll_all(&mut tailer)), ["{\"n\":1}"]);
    }

    #[test]
    fn start_at_end_drops_an_unfinished_line_already_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut data = b"old\n".to_vec();
        data.resize(data.len() + MAX_LINE_BYTES + 10, b'x');
        append(&path, &data);
        let mut tailer = Tailer::new(path.clone(), true);
        let batch = poll_all(&mut tailer);
        assert!(batch.lines.is_empty());
        assert_eq!(
            batch.skipped_oversize, 0,
            "began before start: not ours to count"
        );
        append(&path, b"xx\nnew\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["new"]);
    }

    #[test]
    fn max_lines_cap_sets_more_and_the_next_poll_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let all: Vec<String> = (0..10).map(|n| format!("{{\"n\":{n}}}")).collect();
        append(&path, format!("{}\n", all.join("\n")).as_bytes());
        let mut tailer = Tailer::new(path.clone(), false);

        let mut seen = Vec::new();
        let mut polls = 0;
        loop {
            let batch = tailer.poll(3, ALL_BYTES).unwrap();
            polls += 1;
            assert!(batch.lines.len() <= 3);
            seen.extend(batch.lines);
            if !batch.more {
                break;
            }
        }
        assert_eq!(seen, all);
        assert_eq!(polls, 4, "3 + 3 + 3 + 1, the last one without `more`");
    }

    #[test]
    fn exactly_max_lines_available_does_not_set_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"a\nb\nunfinished");
        let mut tailer = Tailer::new(path.clone(), false);
        let batch = tailer.poll(2, ALL_BYTES).unwrap();
        assert_eq!(lines(&batch), ["a", "b"]);
        assert!(!batch.more);
    }

    #[test]
    fn max_bytes_cap_reads_no_more_than_asked_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let all: Vec<String> = (0..20).map(|n| format!("{{\"n\":{n}}}")).collect();
        append(&path, format!("{}\n", all.join("\n")).as_bytes());
        let mut tailer = Tailer::new(path.clone(), false);

        let mut seen = Vec::new();
        loop {
            let before = tailer.offset();
            let batch = tailer.poll(ALL_LINES, 5).unwrap();
            assert!(tailer.offset() - before <= 5);
            seen.extend(batch.lines);
            if !batch.more {
                break;
            }
        }
        assert_eq!(seen, all);
        assert_eq!(tailer.offset(), fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn oversize_line_is_skipped_counted_once_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");

        // In one write: over the limit by one byte; then a line exactly at the limit.
        let mut data = vec![b'x'; MAX_LINE_BYTES + 1];
        data.extend_from_slice(b"\nok\n");
        data.resize(data.len() + MAX_LINE_BYTES, b'y');
        data.push(b'\n');
        append(&path, &data);
        let mut tailer = Tailer::new(path.clone(), false);
        let batch = poll_all(&mut tailer);
        assert_eq!(batch.skipped_oversize, 1);
        assert_eq!(batch.lines.len(), 2);
        assert_eq!(batch.lines[0], "ok");
        assert_eq!(batch.lines[1].len(), MAX_LINE_BYTES);

        // Growing across polls, with no newline yet: counted when it passes the limit.
        append(&path, &vec![b'z'; MAX_LINE_BYTES / 2 + 1]);
        let batch = poll_all(&mut tailer);
        assert_eq!(batch.skipped_oversize, 0);
        append(&path, &vec![b'z'; MAX_LINE_BYTES / 2 + 1]);
        let batch = poll_all(&mut tailer);
        assert_eq!(batch.skipped_oversize, 1);
        assert!(tailer.partial.is_empty(), "an oversize line is not kept");
        append(&path, &vec![b'z'; MAX_LINE_BYTES]);
        let batch = poll_all(&mut tailer);
        assert_eq!(
            batch.skipped_oversize, 0,
            "the same line is not counted twice"
        );
        assert!(tailer.partial.is_empty());
        append(&path, b"zzz\nafter\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["after"]);
        assert_eq!(batch.skipped_oversize, 0);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"{\"s\":\"\xff\"}\nok\n");
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(
            lines(&poll_all(&mut tailer)),
            ["{\"s\":\"\u{FFFD}\"}", "ok"]
        );
    }

    #[test]
    fn unreadable_path_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A path through a regular file: ENOTDIR, not "missing".
        let file = dir.path().join("plain");
        append(&file, b"x\n");
        let path = file.join("events.jsonl");
        let mut tailer = Tailer::new(path.clone(), false);
        let err = tailer.poll(ALL_LINES, ALL_BYTES).unwrap_err();
        assert!(matches!(err, TailError::Io { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read {}: ", path.display())));
    }

    /// Issue 14 item 4: a FIFO renamed over the log blocked the poll in `open()` forever.
    #[test]
    fn a_fifo_or_device_renamed_over_the_log_is_refused_after_the_old_file_is_finished() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, b"a\n");
        let mut tailer = Tailer::new(path.clone(), false);
        assert_eq!(lines(&poll_all(&mut tailer)), ["a"]);
        let mut old = OpenOptions::new().append(true).open(&path).unwrap();

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        fs::rename(&fifo, &path).unwrap();
        old.write_all(b"late\n").unwrap();
        assert_eq!(
            lines(&poll_all(&mut tailer)),
            ["late"],
            "the old file first"
        );
        let err = tailer.poll(ALL_LINES, ALL_BYTES).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a FIFO (named pipe), not a log file; point url at the app's log file",
                path.display()
            )
        );

        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        fs::rename(&link, &path).unwrap();
        let err = tailer.poll(ALL_LINES, ALL_BYTES).unwrap_err();
        assert!(matches!(err, TailError::NotAFile { .. }), "{err:?}");
        assert!(err.to_string().contains("is a character device"), "{err}");

        let next = dir.path().join("next");
        append(&next, b"b\n");
        fs::rename(&next, &path).unwrap();
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["b"]);
        assert!(batch.rotated);
    }

    /// splitmix64: a small seeded generator so the stress test is the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    fn numbered_line(n: u64, rng: &mut Rng) -> Vec<u8> {
        let pad = "p".repeat(rng.below(40) as usize);
        format!("{{\"n\":{n},\"pad\":\"{pad}\"}}\n").into_bytes()
    }

    fn line_number(line: &str) -> u64 {
        let rest = line.strip_prefix("{\"n\":").expect(line);
        rest[..rest.find(',').expect(line)].parse().expect(line)
    }

    /// A log writer that rotates at random, within what following by name can survive:
    /// - at most one rotation (rename, delete + recreate, delete, reappearance) between
    ///   two polls that reached the end (`more` false), since only one file is held;
    /// - a rotation only at a line boundary, as loggers do;
    /// - copytruncate only when the reader has read everything (its last poll reached the
    ///   end and nothing was written since), and afterwards less than the reader's offset
    ///   until it polls. A copytruncate of unread lines loses them, and a refill past the
    ///   offset is not always noticed: both are inherent to copytruncate.
    struct Writer {
        path: PathBuf,
        file: File,
        /// The path has no file (deleted, not yet recreated); writes go to the old handle.
        missing: bool,
        next: u64,
        total: u64,
        /// The rest of a line whose start was already written.
        pending: Vec<u8>,
        rotations: u64,
        truncations: u64,
    }

    impl Writer {
        fn write(&mut self, data: &[u8]) {
            self.file.write_all(data).unwrap();
        }

        fn create(path: &Path) -> File {
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(path)
                .unwrap()
        }

        fn finish_line(&mut self) {
            if !self.pending.is_empty() {
                let rest = std::mem::take(&mut self.pending);
                self.write(&rest);
            }
        }

        /// Writes up to `count` whole lines; with `limit`, only while the file stays shorter.
        fn write_lines(&mut self, count: u64, limit: Option<u64>, rng: &mut Rng) {
            if count > 0 {
                self.finish_line();
            }
            for _ in 0..count {
                if self.next == self.total {
                    return;
                }
                let line = numbered_line(self.next, rng);
                if let Some(limit) = limit {
                    let len = self.file.metadata().unwrap().len();
                    if len + line.len() as u64 >= limit {
                        return;
                    }
                }
                self.write(&line);
                self.next += 1;
            }
        }

        /// What happens between two polls. `drained`: the reader's last poll reached the
        /// end. `offset`: where the reader is.
        fn round(&mut self, drained: bool, offset: u64, rng: &mut Rng) {
            if drained && offset > 0 && self.pending.is_empty() && !self.missing && rng.chance(8) {
                let copy = self.path.with_extension("jsonl.1");
                fs::copy(&self.path, copy).unwrap();
                self.file.set_len(0).unwrap();
                self.truncations += 1;
                let count = rng.below(3);
                self.write_lines(count, Some(offset), rng);
                return;
            }
            let count = rng.below(6);
            self.write_lines(count, None, rng);
            if drained && rng.chance(25) {
                self.finish_line();
                if self.missing {
                    self.file = Writer::create(&self.path);
                    self.missing = false;
                } else {
                    match rng.below(3) {
                        0 => fs::rename(&self.path, self.path.with_extension("jsonl.1")).unwrap(),
                        _ => fs::remove_file(&self.path).unwrap(),
                    }
                    // Late lines to the old file, before the writer reopens.
                    let late = rng.below(3);
                    self.write_lines(late, None, rng);
                    if rng.chance(80) {
                        self.file = Writer::create(&self.path);
                    } else {
                        self.missing = true;
                    }
                }
                self.rotations += 1;
                let count = rng.below(4);
                self.write_lines(count, None, rng);
            }
            if self.pending.is_empty() && self.next < self.total && rng.chance(30) {
                // Half a line now, the rest in a later round.
                let line = numbered_line(self.next, rng);
                self.next += 1;
                let cut = 1 + rng.below(line.len() as u64 - 1) as usize;
                self.write(&line[..cut]);
                self.pending = line[cut..].to_vec();
            } else if rng.chance(50) || self.next == self.total {
                self.finish_line();
            }
        }
    }

    #[test]
    fn stress_random_rotations_lose_nothing_and_repeat_nothing() {
        const LINES_PER_SEED: u64 = 3_000;
        let (mut rotations, mut truncations, mut rotated_seen, mut truncated_seen) = (0, 0, 0, 0);
        for seed in 0..8u64 {
            let mut rng = Rng(seed);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.jsonl");
            let mut writer = Writer {
                file: Writer::create(&path),
                path: path.clone(),
                missing: false,
                next: 0,
                total: LINES_PER_SEED,
                pending: Vec::new(),
                rotations: 0,
                truncations: 0,
            };
            let mut tailer = Tailer::new(path.clone(), false);
            let mut seen: Vec<u64> = Vec::new();
            let mut drained = false;
            let mut poll =
                |tailer: &mut Tailer, seen: &mut Vec<u64>, max_lines, max_bytes| match tailer
                    .poll(max_lines, max_bytes)
                {
                    Ok(batch) => {
                        rotated_seen += u64::from(batch.rotated);
                        truncated_seen += u64::from(batch.truncated);
                        assert_eq!(batch.skipped_oversize, 0);
                        seen.extend(batch.lines.iter().map(|line| line_number(line)));
                        !batch.more
                    }
                    Err(TailError::Missing { .. }) => true,
                    Err(err) => panic!("seed {seed}: {err}"),
                };

            while writer.next < writer.total || !writer.pending.is_empty() {
                writer.round(drained, tailer.offset(), &mut rng);
                let max_lines = 1 + rng.below(20) as usize;
                let max_bytes = 1 + rng.below(400) as usize;
                drained = poll(&mut tailer, &mut seen, max_lines, max_bytes);
            }
            if writer.missing {
                writer.file = Writer::create(&path);
            }
            while !poll(&mut tailer, &mut seen, 7, 300) {}
            // One more: nothing left anywhere.
            assert!(poll(&mut tailer, &mut seen, ALL_LINES, ALL_BYTES));

            let expected: Vec<u64> = (0..LINES_PER_SEED).collect();
            assert_eq!(seen.len(), expected.len(), "seed {seed}");
            assert_eq!(seen, expected, "seed {seed}");
            rotations += writer.rotations;
            truncations += writer.truncations;
        }
        // The test is only worth something if the writer did rotate and truncate.
        assert!(rotations > 50, "{rotations} rotations");
        assert!(truncations > 20, "{truncations} truncations");
        assert!(rotated_seen > 50, "{rotated_seen} rotations seen");
        assert_eq!(truncated_seen, truncations);
    }
}
