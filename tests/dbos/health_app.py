"""A small real DBOS app for tests/dbos_health.rs (issue 9): stdlib + dbos only.

It makes the three DBOS failures that a gap between steps does not show, on a SQLite
system database:

- `waiter`:  prepare -> DBOS.recv("wake", timeout_seconds=2) -> finish.
  Nobody sends to the topic: the recv is a 2 s intended wait that ends on its timeout.
  The test stops the process (SIGSTOP) inside the wait, so it ends long past its deadline.
- `blocker`: prepare -> block_until_file(path) -> finish.
  The second step polls for a file that the test creates when it wants the workflow to
  finish. Killed while in that step, the workflow stays PENDING; DBOS recovers it at the
  next `DBOS.launch()` (re-enqueued, dequeued with `recovery_attempts` + 1) and runs the
  step again.
- `queued`:  prepare -> work(label, hold) on queue "q" (global concurrency 1).
  A held one waits inside `work` for `go LABEL`, so everything behind it stays ENQUEUED.

    python health_app.py --db /abs/path/dbos.sqlite [--journal default|wal|delete]

`--journal default` leaves the file to DBOS, which keeps SQLite's rollback journal
(`delete`); `wal` and `delete` set the mode before DBOS opens the file.

Commands on stdin, one per line:

    wait LABEL          start a `waiter` workflow
    block LABEL PATH    start a `blocker` workflow that finishes once PATH exists
    enqueue LABEL hold|free
                        enqueue a `queued` workflow on "q"; `hold` waits for `go LABEL`
    go LABEL            release a held `queued` workflow
    quit                shut DBOS down and exit (so does end of input)

Machine-readable lines on stdout (flushed; DBOS logs go to stderr):

    READY journal_mode=<mode> pid=<pid>
    STARTED <label> <workflow_id>
    PHASE <phase> <label> <workflow_id> <epoch seconds>
        waiting        just before DBOS.recv
        blocking       block_until_file started (again after each recovery)
        working        work started
        done           the workflow's last step finished
    ERROR <message>
"""

import argparse
import os
import sqlite3
import sys
import threading
import time

from dbos import DBOS

# DBOS app names: at least 3 characters, lowercase.
APP_NAME = "stallwatch-health-test"
# The recv's timeout.
RECV_TIMEOUT_SECONDS = 2
# The concurrency-limited queue and how often DBOS looks for work on it.
QUEUE_NAME = "q"
QUEUE_POLL_SECONDS = 0.2
# How often block_until_file looks for its file.
FILE_POLL_SECONDS = 0.05
# How long a free `work` step takes.
WORK_SECONDS = 0.05

_out_lock = threading.Lock()
# label -> event a held `queued` workflow waits on inside `work`.
_gates = {}
_gates_lock = threading.Lock()


def say(*fields):
    with _out_lock:
        print(*fields, flush=True)


def phase(name, label):
    say("PHASE", name, label, DBOS.workflow_id, f"{time.time():.6f}")


def gate(label):
    with _gates_lock:
        return _gates.setdefault(label, threading.Event())


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
    DBOS.recv("wake", timeout_seconds=RECV_TIMEOUT_SECONDS)
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


def prepare_file(path, journal):
    """Creates the database file in the requested journal mode before DBOS opens it
    (WAL mode is persistent); `default` leaves it to DBOS."""
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
    parser.add_argument("--db", required=True)
    parser.add_argument("--journal", choices=["default", "wal", "delete"], default="default")
    args = parser.parse_args()
    if not os.path.isabs(args.db):
        parser.error("--db must be an absolute path")

    prepare_file(args.db, args.journal)
    DBOS(config={"name": APP_NAME, "system_database_url": f"sqlite:///{args.db}"})
    # Recovers the workflows a killed run left PENDING.
    DBOS.launch()
    queue = DBOS.register_queue(
        QUEUE_NAME, global_concurrency=1, polling_interval_sec=QUEUE_POLL_SECONDS
    )
    say("READY", f"journal_mode={journal_mode(args.db)}", f"pid={os.getpid()}")

    handles = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "wait" and len(words) == 2:
            handle = DBOS.start_workflow(waiter, words[1])
        elif words[0] == "block" and len(words) == 3:
            handle = DBOS.start_workflow(blocker, words[1], words[2])
        elif words[0] == "enqueue" and len(words) == 3 and words[2] in ("hold", "free"):
            label, hold = words[1], words[2] == "hold"
            if hold:
                gate(label)
            handle = queue.enqueue(queued, label, hold)
        elif words[0] == "go" and len(words) == 2:
            gate(words[1]).set()
            continue
        elif words[0] == "quit":
            break
        else:
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
