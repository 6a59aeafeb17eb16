"""A small real DBOS app for tests/otlp_traces.rs: stdlib + dbos only.

Its workflow `ingest` runs, in order:

    fetch -> crunch (a long step) -> DBOS.recv(topic, timeout_seconds=1) -> [hold] -> store

on a SQLite system database (WAL mode). Nobody sends to the topic: the recv is a 1 s
intended wait. A held workflow waits after the recv for `go LABEL`, so the test makes a
gap of the length it chooses between the recv and `store`.

    python trace_app.py --db /abs/path/dbos.sqlite

Commands on stdin, one per line:

    run LABEL CRUNCH_SECONDS free|hold   start a workflow
    go LABEL                             release a held workflow
    quit                                 shut DBOS down and exit (so does end of input)

Lines on stdout (flushed; DBOS logs go to stderr):

    READY pid=<pid>
    STARTED <label> <workflow_id>
    PHASE crunch-start <label> <workflow_id> <epoch seconds>   (inside the step, as it begins)
    PHASE waiting <label> <workflow_id> <epoch seconds>        (after the recv, before the hold)
    PHASE done <label> <workflow_id> <epoch seconds>
    ERROR <message>
"""

import argparse
import sqlite3
import os
import sys
import threading
import time

from dbos import DBOS

APP_NAME = "stallwatch-trace-test"
RECV_TIMEOUT_SECONDS = 1
FETCH_SECONDS = 0.05
STORE_SECONDS = 0.04

_out_lock = threading.Lock()
_gates = {}
_gates_lock = threading.Lock()


def say(*fields):
    with _out_lock:
        print(*fields, flush=True)


def gate(label):
    with _gates_lock:
        return _gates.setdefault(label, threading.Event())


@DBOS.step()
def fetch(label):
    time.sleep(FETCH_SECONDS)
    return f"fetched {label}"


@DBOS.step()
def crunch(label, seconds):
    say("PHASE", "crunch-start", label, DBOS.workflow_id, f"{time.time():.6f}")
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
    DBOS.recv("debounce", timeout_seconds=RECV_TIMEOUT_SECONDS)
    say("PHASE", "waiting", label, DBOS.workflow_id, f"{time.time():.6f}")
    if hold:
        gate(label).wait()
    store(label)
    say("PHASE", "done", label, DBOS.workflow_id, f"{time.time():.6f}")
    return label


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    if not os.path.isabs(args.db):
        parser.error("--db must be an absolute path")
    conn = sqlite3.connect(args.db)
    try:
        conn.execute("PRAGMA journal_mode=wal").fetchone()
    finally:
        conn.close()

    DBOS(config={"name": APP_NAME, "system_database_url": f"sqlite:///{args.db}"})
    DBOS.launch()
    say("READY", f"pid={os.getpid()}")

    handles = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "run" and len(words) == 4 and words[3] in ("free", "hold"):
            label = words[1]
            try:
                seconds = float(words[2])
            except ValueError:
                say("ERROR", f"CRUNCH_SECONDS is not a number: {line.strip()!r}")
                continue
            hold = words[3] == "hold"
            if hold:
                gate(label)
            handle = DBOS.start_workflow(ingest, label, seconds, hold)
            handles.append(handle)
            say("STARTED", label, handle.get_workflow_id())
        elif words[0] == "go" and len(words) == 2:
            gate(words[1]).set()
        elif words[0] == "quit":
            break
        else:
            say("ERROR", f"unknown command {line.strip()!r}")
    with _gates_lock:
        for event in _gates.values():
            event.set()
    for handle in handles:
        handle.get_result()
    DBOS.destroy()


if __name__ == "__main__":
    main()
