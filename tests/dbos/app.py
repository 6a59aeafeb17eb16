"""A small real DBOS app for tests/dbos_sqlite.rs (issue 4): stdlib + dbos only.

Its workflow `reply` runs the steps of the DBOS incident in docs/design.md, in order:

    parse -> DBOS.recv(topic, timeout_seconds=2) -> generate -> send

on a SQLite system database. Nobody sends to the topic, so the recv is a 2 s intended
wait (or as long as `run` asks) that ends on its timeout.

    python app.py --db /abs/path/dbos.sqlite [--journal wal|delete]

(`STALLWATCH_DBOS_DB` may give the path instead of `--db`.)

The test drives it over stdin, one command per line:

    run LABEL free [RECV_SECONDS]   start a workflow that runs straight through
    run LABEL hold [RECV_SECONDS]   start one that, after `generate`, waits for `go LABEL`
                                    before `send`
    run LABEL hold-parse [RECV_S]   start one that, after `parse`, waits for `go LABEL`
                                    before `DBOS.recv` (the founding incident's gap)
    go LABEL                        release a held workflow
    quit                            shut DBOS down and exit (so does end of input)

(RECV_SECONDS: the recv's timeout, default 2)

and reads machine-readable lines on stdout (flushed; DBOS logs go to stderr):

    READY journal_mode=<mode> pid=<pid>
    STARTED <label> <workflow_id>
    PHASE parse-done <label> <workflow_id> <epoch seconds>
    PHASE recv-start <label> <workflow_id> <epoch seconds>   (just before DBOS.recv)
    PHASE generate-done <label> <workflow_id> <epoch seconds>
    PHASE done <label> <workflow_id> <epoch seconds>
    ERROR <message>

A held workflow makes the test's timing exact: the test stops the process (SIGSTOP or a
cgroup freezer) as soon as it reads `generate-done`, writes `go`, and resumes it when it
chooses; `send` starts within milliseconds of the resume, so the gap DBOS records between
`generate` and `send` is the stop and nothing else. `recv-start` lets a test stop the
process inside the wait: DBOS writes the wait's `DBOS.sleep` placeholder, whose output is
the deadline, within milliseconds after it.

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

# DBOS app names: at least 3 characters, lowercase.
APP_NAME = "stallwatch-test"
# The recv's timeout: the "debounce" of the incident, shortened.
RECV_TIMEOUT_SECONDS = 2
# How long each step works, so every step has a measurable, non-zero duration.
PARSE_SECONDS = 0.05
GENERATE_SECONDS = 0.12
SEND_SECONDS = 0.03

_out_lock = threading.Lock()
# label -> event a held workflow waits on between `generate` and `send`.
_gates = {}
_gates_lock = threading.Lock()


def say(*fields):
    with _out_lock:
        print(*fields, flush=True)


def gate(label):
    with _gates_lock:
        return _gates.setdefault(label, threading.Event())


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
def reply(label, hold, recv_seconds=RECV_TIMEOUT_SECONDS):
    parse(label)
    say("PHASE", "parse-done", label, DBOS.workflow_id, f"{time.time():.6f}")
    if hold == "hold-parse":
        gate(label).wait()
    say("PHASE", "recv-start", label, DBOS.workflow_id, f"{time.time():.6f}")
    DBOS.recv("debounce", timeout_seconds=recv_seconds)
    generate(label)
    say("PHASE", "generate-done", label, DBOS.workflow_id, f"{time.time():.6f}")
    if hold == "hold":
        gate(label).wait()
    send(label)
    say("PHASE", "done", label, DBOS.workflow_id, f"{time.time():.6f}")
    return label


def prepare(path, journal):
    """Creates the database file in the requested journal mode before DBOS opens it:
    DBOS itself leaves SQLite in rollback-journal mode, and WAL mode is persistent."""
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
    parser.add_argument("--db", default=os.environ.get("STALLWATCH_DBOS_DB"))
    parser.add_argument("--journal", choices=["wal", "delete"], default="wal")
    args = parser.parse_args()
    if not args.db or not os.path.isabs(args.db):
        parser.error("--db (or STALLWATCH_DBOS_DB) must be an absolute path")

    prepare(args.db, args.journal)
    DBOS(config={"name": APP_NAME, "system_database_url": f"sqlite:///{args.db}"})
    DBOS.launch()
    say("READY", f"journal_mode={journal_mode(args.db)}", f"pid={os.getpid()}")

    handles = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "run" and len(words) in (3, 4) and words[2] in ("hold", "hold-parse", "free"):
            label, hold = words[1], words[2]
            try:
                recv_seconds = float(words[3]) if len(words) == 4 else RECV_TIMEOUT_SECONDS
            except ValueError:
                say("ERROR", f"RECV_SECONDS is not a number: {line.strip()!r}")
                continue
            if hold != "free":
                gate(label)
            handle = DBOS.start_workflow(reply, label, hold, recv_seconds)
            handles.append(handle)
            say("STARTED", label, handle.get_workflow_id())
        elif words[0] == "go" and len(words) == 2:
            gate(words[1]).set()
        elif words[0] == "quit":
            break
        else:
            say("ERROR", f"unknown command {line.strip()!r}")
    # Release anything still held so shutdown does not hang, and let workflows finish.
    with _gates_lock:
        for event in _gates.values():
            event.set()
    for handle in handles:
        handle.get_result()
    DBOS.destroy()


if __name__ == "__main__":
    main()
