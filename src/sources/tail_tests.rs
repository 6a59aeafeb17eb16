//! The tests of `tail.rs`: a real file in a temporary folder, changed the way loggers and
//! logrotate change it (append, rename, copytruncate, delete, a FIFO over the path), then
//! polled; and a seeded stress run of random rotations that must lose and repeat nothing.

use super::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Caps large enough that no test below reaches them unless it means to.
const ALL_LINES: usize = 1_000_000;
const ALL_BYTES: usize = 1 << 30;

/// A fresh temporary folder and the log path in it; the folder is removed when the
/// first value is dropped, so a test keeps it for as long as it uses the path.
fn log_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    (dir, path)
}

/// A handle that appends to `path` (creating it), as a logger holds one: it keeps
/// reaching the same file after the path is renamed or deleted.
fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

fn append(path: &Path, data: &[u8]) {
    open_append(path).write_all(data).unwrap();
}

/// Cuts the file at `path` to 0 bytes in place: same inode, as copytruncate does.
fn truncate(path: &Path) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

/// Writes the lines `{"n":0}` to `{"n":count-1}` to `path` and returns them.
fn append_numbered(path: &Path, count: usize) -> Vec<String> {
    let all: Vec<String> = (0..count).map(|n| format!("{{\"n\":{n}}}")).collect();
    append(path, format!("{}\n", all.join("\n")).as_bytes());
    all
}

/// Writes `data` to `path`, follows it from its beginning, and checks that the first
/// poll returns exactly the lines `first`.
#[track_caller]
fn follow_from_start(path: &Path, data: &[u8], first: &[&str]) -> Tailer {
    append(path, data);
    let mut tailer = Tailer::new(path.to_path_buf(), false);
    assert_eq!(lines(&poll_all(&mut tailer)), first);
    tailer
}

#[track_caller]
fn poll_all(tailer: &mut Tailer) -> TailBatch {
    let batch = tailer.poll(ALL_LINES, ALL_BYTES).unwrap();
    assert!(!batch.more);
    batch
}

/// A poll that must fail, with caps that never stop it first.
#[track_caller]
fn poll_err(tailer: &mut Tailer) -> TailError {
    tailer.poll(ALL_LINES, ALL_BYTES).unwrap_err()
}

fn lines(batch: &TailBatch) -> Vec<&str> {
    batch.lines.iter().map(String::as_str).collect()
}

#[test]
fn appends_across_polls_are_each_returned_once() {
    let (_dir, path) = log_path();
    let mut tailer = follow_from_start(
        &path,
        b"{\"n\":1}\n{\"n\":2}\n",
        &["{\"n\":1}", "{\"n\":2}"],
    );
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
    let (_dir, path) = log_path();
    let mut tailer = follow_from_start(&path, b"first\n{\"half\":", &["first"]);
    append(&path, b"tr");
    assert!(lines(&poll_all(&mut tailer)).is_empty());
    append(&path, b"ue}\nnext\n");
    assert_eq!(lines(&poll_all(&mut tailer)), ["{\"half\":true}", "next"]);
}

#[test]
fn rename_rotation_reads_the_old_file_to_its_end_then_the_new_one() {
    let (dir, path) = log_path();
    let rotated = dir.path().join("events.jsonl.1");
    let mut writer = open_append(&path);
    let mut tailer = follow_from_start(&path, b"a\nb\n", &["a", "b"]);

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

/// Truncates the followed file, writes `refill` to it before the next poll, and checks
/// that the poll restarts at 0 and returns exactly the lines `want`.
#[track_caller]
fn truncate_and_refill(tailer: &mut Tailer, path: &Path, refill: &[u8], want: &[&str]) {
    truncate(path);
    append(path, refill);
    let batch = poll_all(tailer);
    assert!(batch.truncated);
    assert_eq!(lines(&batch), want);
}

#[test]
fn unfinished_line_of_a_replaced_file_is_dropped_not_glued_to_the_next() {
    let (dir, path) = log_path();
    let mut tailer = follow_from_start(&path, b"a\n{\"cut\":", &["a"]);

    fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
    append(&path, b"b\n{\"cut\":");
    let batch = poll_all(&mut tailer);
    assert!(batch.rotated);
    assert_eq!(lines(&batch), ["b"]);

    truncate_and_refill(&mut tailer, &path, b"c\n", &["c"]);
}

#[test]
fn copytruncate_restarts_at_the_beginning() {
    let (dir, path) = log_path();
    let mut tailer = follow_from_start(&path, b"one\ntwo\n", &["one", "two"]);

    fs::copy(&path, dir.path().join("events.jsonl.1")).unwrap();
    truncate(&path);
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
    let (_dir, path) = log_path();
    let mut tailer = follow_from_start(&path, b"a long first line\n", &["a long first line"]);
    truncate_and_refill(&mut tailer, &path, b"new\n", &["new"]);
}

#[test]
fn truncation_refilled_past_the_offset_is_noticed_by_the_byte_before_it() {
    let (_dir, path) = log_path();
    let mut tailer = follow_from_start(&path, b"{\"n\":1}\n", &["{\"n\":1}"]);
    // Same inode, now longer than the offset; byte 7 was '\n', now it is 'x'.
    truncate_and_refill(
        &mut tailer,
        &path,
        b"{\"pad\":\"xxxx\"}\n",
        &["{\"pad\":\"xxxx\"}"],
    );
}

#[test]
fn delete_and_recreate_is_a_rotation() {
    let (_dir, path) = log_path();
    let mut writer = open_append(&path);
    let mut tailer = follow_from_start(&path, b"a\n", &["a"]);

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
    let (_dir, path) = log_path();
    let mut writer = open_append(&path);
    let mut tailer = follow_from_start(&path, b"a\n", &["a"]);

    writer.write_all(b"b\n").unwrap();
    fs::remove_file(&path).unwrap();
    // The lines still reachable through the held handle come first.
    assert_eq!(lines(&poll_all(&mut tailer)), ["b"]);
    let err = poll_err(&mut tailer);
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
        let (_dir, path) = log_path();
        let mut tailer = Tailer::new(path.clone(), start_at_end);

        for _ in 0..2 {
            let err = poll_err(&mut tailer);
            assert!(matches!(err, TailError::Missing { .. }), "{err:?}");
        }
        append(&path, b"a\nb\n");
        let batch = poll_all(&mut tailer);
        assert_eq!(lines(&batch), ["a", "b"], "start_at_end={start_at_end}");
        assert!(!batch.rotated);
    }
}

/// Writes `data` to `path` and follows it from its end: the first poll must return
/// no lines.
#[track_caller]
fn follow_from_end(path: &Path, data: &[u8]) -> Tailer {
    append(path, data);
    let mut tailer = Tailer::new(path.to_path_buf(), true);
    assert!(lines(&poll_all(&mut tailer)).is_empty());
    tailer
}

#[test]
fn start_at_end_returns_only_lines_finished_after_the_first_poll() {
    let (_dir, path) = log_path();
    let mut tailer = follow_from_end(&path, b"old 1\nold 2\n");
    assert_eq!(tailer.offset(), 12);
    append(&path, b"new\n");
    assert_eq!(lines(&poll_all(&mut tailer)), ["new"]);

    // From the beginning, the same file gives everything.
    let mut from_start = Tailer::new(path.clone(), false);
    assert_eq!(lines(&poll_all(&mut from_start)), ["old 1", "old 2", "new"]);
}

#[test]
fn start_at_end_keeps_an_unfinished_last_line_whole() {
    let (dir, path) = log_path();
    let mut tailer = follow_from_end(&path, b"old\n{\"n\":");
    append(&path, b"2}\n");
    assert_eq!(lines(&poll_all(&mut tailer)), ["{\"n\":2}"]);

    // A file that is one unfinished line is kept from byte 0.
    let single = dir.path().join("single.jsonl");
    let mut tailer = follow_from_end(&single, b"{\"n\":");
    append(&single, b"1}\n");
    assert_eq!(lines(&poll_all(&mut tailer)), ["{\"n\":1}"]);
}

#[test]
fn start_at_end_drops_an_unfinished_line_already_too_long() {
    let (_dir, path) = log_path();
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
    let (_dir, path) = log_path();
    let all = append_numbered(&path, 10);
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
    let (_dir, path) = log_path();
    append(&path, b"a\nb\nunfinished");
    let mut tailer = Tailer::new(path.clone(), false);
    let batch = tailer.poll(2, ALL_BYTES).unwrap();
    assert_eq!(lines(&batch), ["a", "b"]);
    assert!(!batch.more);
}

#[test]
fn max_bytes_cap_reads_no_more_than_asked_and_loses_nothing() {
    let (_dir, path) = log_path();
    let all = append_numbered(&path, 20);
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
    let (_dir, path) = log_path();

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
    let (_dir, path) = log_path();
    follow_from_start(
        &path,
        b"{\"s\":\"\xff\"}\nok\n",
        &["{\"s\":\"\u{FFFD}\"}", "ok"],
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
    let err = poll_err(&mut tailer);
    assert!(matches!(err, TailError::Io { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read {}: ", path.display())));
}

/// Issue 14 item 4: a FIFO renamed over the log blocked the poll in `open()` forever.
#[test]
fn a_fifo_or_device_renamed_over_the_log_is_refused_after_the_old_file_is_finished() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, path) = log_path();
    let mut tailer = follow_from_start(&path, b"a\n", &["a"]);
    let mut old = open_append(&path);

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
    let err = poll_err(&mut tailer);
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
    let err = poll_err(&mut tailer);
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
        let (_dir, path) = log_path();
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
        let mut poll = |tailer: &mut Tailer, seen: &mut Vec<u64>, max_lines, max_bytes| match tailer
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
