"""The real DBOS app of the tests (tests/common/dbos.rs drives it): stdlib + dbos only.

    python app.py MODE (--db /abs/path/dbos.sqlite [--journal default|wal|delete] | --url URL)

`--db` is a SQLite system database; `--journal` sets its mode before DBOS opens the file
(WAL mode is persistent; `default`, the mode DBOS leaves it in: the rollback journal,
`delete`); without `--journal`, WAL. `--url` is any system database URL DBOS takes,
e.g. `postgresql://postgres@127.0.0.1:5432/db`. (`STALLWATCH_DBOS_DB` may give the
`--db` path.)

MODE picks the workflows and the commands on stdin:

reply (tests/dbos_sqlite.rs, issue 4; report_analyze.rs, run_child.rs, postgres_sources.rs)
    Its workflow `reply` runs the steps of the DBOS incident in docs/design.md, in order:

        parse -> DBOS.recv(topic, timeout_seconds=2) -> generate -> send

    Nobody sends to the topic, so the recv is a 2 s intended wait (or as long as `run`
    asks) that ends on its timeout.

        run LABEL free [RECV_SECONDS]   start a workflow that runs straight through
        run LABEL hold [RECV_SECONDS]   start one that, after `generate`, waits for
                                        `go LABEL` before `send`
        run LABEL hold-parse [RECV_S]   start one that, after `parse`, waits for
                                        `go LABEL` before `DBOS.recv` (the founding
                                        incident's gap)

    (RECV_SECONDS: the recv's timeout, default 2.) Phases: `parse-done`, `recv-start`
    (just before DBOS.recv), `generate-done`, `done`.

    A held workflow makes the test's timing exact: the test stops the process (SIGSTOP
    or a cgroup freezer) as soon as it reads `generate-done`, writes `go`, and resumes it
    when it chooses; `send` starts within milliseconds of the resume, so the gap DBOS
    records between `generate` and `send` is the stop and nothing else. `recv-start` lets
    a test stop the process inside the wait: DBOS writes the wait's `DBOS.sleep`
    placeholder, whose output is the deadline, within milliseconds after it.

health (tests/dbos_health.rs, issue 9): the three DBOS failures a gap between steps does
not show.
    - `waiter`:  prepare -> DBOS.recv("wake", timeout_seconds=2) -> finish.
      Nobody sends to the topic: the recv is a 2 s intended wait that ends on its
      timeout. The test stops the process (SIGSTOP) inside the wait, so it ends long past
      its deadline.
    - `blocker`: prepare -> block_until_file(path) -> finish.
      The second step polls for a file that the test creates when it wants the workflow
      to finish. Killed while in that step, the workflow stays PENDING; DBOS recovers it
      at the next `DBOS.launch()` (re-enqueued, dequeued with `recovery_attempts` + 1)
      and runs the step again.
    - `queued`:  prepare -> work(label, hold) on queue "q" (global concurrency 1).
      A held one waits inside `work` for `go LABEL`, so everything behind it stays
      ENQUEUED.

        wait LABEL                  start a `waiter` workflow
        block LABEL PATH            start a `blocker` workflow that finishes once PATH
                                    exists
        enqueue LABEL hold|free     enqueue a `queued` workflow on "q"; `hold` waits for
                                    `go LABEL`

    Phases: `waiting` (just before DBOS.recv), `blocking` (block_until_file started, again
    after each recovery), `working` (work started), `done`.

trace (tests/otlp_traces.rs): its workflow `ingest` runs, in order:

        fetch -> crunch (a long step) -> DBOS.recv(topic, timeout_seconds=1) -> [hold] -> store

    Nobody sends to the topic: the recv is a 1 s intended wait. A held workflow waits
    after the recv for `go LABEL`, so the test makes a gap of the length it chooses
    between the recv and `store`.

        run LABEL CRUNCH_SECONDS free|hold   start a workflow

    Phases: `crunch-start` (inside the step, as it begins), `waiting` (after the recv,
    before the hold), `done`.

Every mode also takes

    go LABEL        release a held workflow
    quit            shut DBOS down and exit (so does end of input)

and prints machine-readable lines on stdout (flushed; DBOS logs go to stderr):

    READY [journal_mode=<mode>] pid=<pid>      (journal_mode: a SQLite system database)
    STARTED <label> <workflow_id>
    PHASE <phase> <label> <workflow_id> <epoch seconds>
    ERROR <message>

Under libfaketime (FAKETIME_TIMESTAMP_FILE set, as tests that step the wall clock run it),
`time.sleep` becomes a `select` timeout: libfaketime 0.9.10 breaks Python's absolute
CLOCK_MONOTONIC `clock_nanosleep` (EINVAL, wolfcw/libfaketime#426); a relative timeout
is not faked, so DBOS and the steps keep their real timing.
"""

import argparse
import os
import sqlite3
import sys
import threading
import time

if os.environ.get("FAKETIME_TIMESTAMP_FILE"):
    import select

    time.sleep = lambda seconds: select.select([], [], [], max(0.0, seconds))

from dbos import DBOS  # noqa: E402  (after the sleep fix, which DBOS's threads need)

_out_lock = threading.Lock()
# label -> event a held workflow waits on.
_gates = {}
_gates_lock = threading.Lock()


class Usage(Exception):
    """A command line this mode does not take; said as `ERROR <message>`."""


def say(*fields):
    with _out_lock:
        print(*fields, flush=True)


def phase(name, label):
    say("PHASE", name, label, DBOS.workflow_id, f"{time.time():.6f}")


def gate(label):
    with _gates_lock:
        return _gates.setdefault(label, threading.Event())


def number(word, what, line):
    try:
        return float(word)
    except ValueError:
        raise Usage(f"{what} is not a number: {line!r}") from None


# ---- reply ------------------------------------------------------------------------------

# The recv's timeout: the "debounce" of the incident, shortened.
REPLY_RECV_TIMEOUT_SECONDS = 2
# How long each step works, so every step has a measurable, non-zero duration.
PARSE_SECONDS = 0.05
GENERATE_SECONDS = 0.12
SEND_SECONDS = 0.03


@DBOS.step()
def parse(label):
    time.sleep(PARSE_SECONDS)
    return f"parsed {label}"


@DBOS.step()
def generate(label):
    time.sleep(GENERATE_SECONDS)
    return f"reply to {label}"


@DBOS.step()
def send(label):
    time.sleep(SEND_SECONDS)
    return f"sent {label}"


@DBOS.workflow()
def reply(label, hold, recv_seconds=REPLY_RECV_TIMEOUT_SECONDS):
    parse(label)
    phase("parse-done", label)
    if hold == "hold-parse":
        gate(label).wait()
    phase("recv-start", label)
    DBOS.recv("debounce", timeout_seconds=recv_seconds)
    generate(label)
    phase("generate-done", label)
    if hold == "hold":
        gate(label).wait()
    send(label)
    phase("done", label)
    return label


def reply_command(words, line):
    if words[0] == "run" and len(words) in (3, 4) and words[2] in ("hold", "hold-parse", "free"):
        label, hold = words[1], words[2]
        recv_seconds = (
            number(words[3], "RECV_SECONDS", line) if len(words) == 4 else REPLY_RECV_TIMEOUT_SECONDS
        )
        if hold != "free":
            gate(label)
        return DBOS.start_workflow(reply, label, hold, recv_seconds)
    return None


# ---- health -----------------------------------------------------------------------------

# The recv's timeout.
HEALTH_RECV_TIMEOUT_SECONDS = 2
# The concurrency-limited queue and how often DBOS looks for work on it.
QUEUE_NAME = "q"
QUEUE_POLL_SECONDS = 0.2
# How often block_until_file looks for its file.
FILE_POLL_SECONDS = 0.05
# How long a free `work` step takes.
WORK_SECONDS = 0.05


@DBOS.step()
def prepare(label):
    return f"prepared {label}"


@DBOS.step()
def finish(label):
    return f"finished {label}"


@DBOS.workflow()
def waiter(label):
    prepare(label)
    phase("waiting", label)
    DBOS.recv("wake", timeout_seconds=HEALTH_RECV_TIMEOUT_SECONDS)
    finish(label)
    phase("done", label)
    return label


@DBOS.step()
def block_until_file(label, path):
    phase("blocking", label)
    while not os.path.exists(path):
        time.sleep(FILE_POLL_SECONDS)
    return f"unblocked {label}"


@DBOS.workflow()
def blocker(label, path):
    prepare(label)
    block_until_file(label, path)
    finish(label)
    phase("done", label)
    return label


@DBOS.step()
def work(label, hold):
    phase("working", label)
    if hold:
        gate(label).wait()
    else:
        time.sleep(WORK_SECONDS)
    return f"worked {label}"


@DBOS.workflow()
def queued(label, hold):
    prepare(label)
    work(label, hold)
    phase("done", label)
    return label


def health_command(words, line):
    if words[0] == "wait" and len(words) == 2:
        return DBOS.start_workflow(waiter, words[1])
    if words[0] == "block" and len(words) == 3:
        return DBOS.start_workflow(blocker, words[1], words[2])
    if words[0] == "enqueue" and len(words) == 3 and words[2] in ("hold", "free"):
        label, hold = words[1], words[2] == "hold"
        if hold:
            gate(label)
        return _health_queue.enqueue(queued, label, hold)
    return None


# The queue, registered after DBOS.launch() (health_launched).
_health_queue = None


def health_launched():
    global _health_queue
    _health_queue = DBOS.register_queue(
        QUEUE_NAME, global_concurrency=1, polling_interval_sec=QUEUE_POLL_SECONDS
    )


# ---- trace ------------------------------------------------------------------------------

TRACE_RECV_TIMEOUT_SECONDS = 1
FETCH_SECONDS = 0.05
STORE_SECONDS = 0.04


@DBOS.step()
def fetch(label):
    time.sleep(FETCH_SECONDS)
    return f"fetched {label}"


@DBOS.step()
def crunch(label, seconds):
    phase("crunch-start", label)
    time.sleep(seconds)
    return f"crunched {label}"


@DBOS.step()
def store(label):
    time.sleep(STORE_SECONDS)
    return f"stored {label}"


@DBOS.workflow()
def ingest(label, crunch_seconds, hold):
    fetch(label)
    crunch(label, crunch_seconds)
    DBOS.recv("debounce", timeout_seconds=TRACE_RECV_TIMEOUT_SECONDS)
    phase("waiting", label)
    if hold:
        gate(label).wait()
    store(label)
    phase("done", label)
    return label


def trace_command(words, line):
    if words[0] == "run" and len(words) == 4 and words[3] in ("free", "hold"):
        label = words[1]
        seconds = number(words[2], "CRUNCH_SECONDS", line)
        hold = words[3] == "hold"
        if hold:
            gate(label)
        return DBOS.start_workflow(ingest, label, seconds, hold)
    return None


# ---- the modes --------------------------------------------------------------------------

# mode -> (DBOS app name: at least 3 characters, lowercase; its commands; what it does
# after DBOS.launch()).
MODES = {
    "reply": ("stallwatch-test", reply_command, lambda: None),
    "health": ("stallwatch-health-test", health_command, health_launched),
    "trace": ("stallwatch-trace-test", trace_command, lambda: None),
}


def prepare_file(path, journal):
    """Creates the database file in the requested journal mode before DBOS opens it
    (DBOS itself leaves SQLite in rollback-journal mode; WAL mode is persistent);
    `default` leaves it to DBOS."""
    if journal == "default":
        return
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
    finally:
        conn.close()
    if mode.lower() != journal:
        raise SystemExit(f"{path}: journal_mode is {mode}, wanted {journal}")


def journal_mode(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--db", default=os.environ.get("STALLWATCH_DBOS_DB"))
    parser.add_argument("--url")
    parser.add_argument("--journal", choices=["default", "wal", "delete"], default="wal")
    args = parser.parse_args()
    if args.url and args.db:
        parser.error("give --db (a SQLite file) or --url, not both")
    if not args.url and (not args.db or not os.path.isabs(args.db)):
        parser.error("--db (or STALLWATCH_DBOS_DB) must be an absolute path, or give --url")
    app_name, command, launched = MODES[args.mode]

    if args.url:
        url = args.url
    else:
        prepare_file(args.db, args.journal)
        url = f"sqlite:///{args.db}"
    DBOS(config={"name": app_name, "system_database_url": url})
    # Recovers the workflows a killed run left PENDING.
    DBOS.launch()
    launched()
    ready = [] if args.url else [f"journal_mode={journal_mode(args.db)}"]
    say("READY", *ready, f"pid={os.getpid()}")

    handles = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "go" and len(words) == 2:
            gate(words[1]).set()
            continue
        if words[0] == "quit":
            break
        try:
            handle = command(words, line.strip())
        except Usage as e:
            say("ERROR", str(e))
            continue
        if handle is None:
            say("ERROR", f"unknown command {line.strip()!r}")
            continue
        handles.append(handle)
        say("STARTED", words[1], handle.get_workflow_id())
    # Release anything still held so shutdown does not hang, and let workflows finish.
    with _gates_lock:
        for event in _gates.values():
            event.set()
    for handle in handles:
        handle.get_result()
    DBOS.destroy()


if __name__ == "__main__":
    main()
