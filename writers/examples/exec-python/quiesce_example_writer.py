#!/usr/bin/env python3
"""An example out-of-process Quiesce writer (docs/exec-writer-protocol.md).

It protects one file lock: applications that take a shared flock(2) on the
lock file before writing (the classic "flock /var/lib/app/write.lock" pattern)
are paused while the writer holds the lock exclusively, from freeze to thaw.
Without QUIESCE_EXAMPLE_LOCK_FILE it only logs each phase, which is still a
complete, conforming writer to start from.

Configure it in agent.json:

    {"type": "exec", "name": "example",
     "options": {"command": ["/usr/bin/python3", "/usr/share/quiesce/examples/quiesce_example_writer.py"],
                 "env": {"QUIESCE_EXAMPLE_LOCK_FILE": "/var/lib/app/write.lock"}}}

The protocol in short: say hello on stdout, then read one JSON request per
line on stdin and write exactly one JSON reply per line on stdout. Anything
for humans goes to stderr, which the agent copies into its log. Exit when
stdin closes.
"""

import fcntl
import json
import os
import sys
import time

PROTOCOL = 1
CAPABILITIES = ["identify", "prepare", "freeze", "thaw", "post_snapshot", "abort", "post_restore"]


def log(message):
    # stderr goes to the agent log, a line at a time.
    print(message, file=sys.stderr, flush=True)


def send(message):
    # One line per message; flush, or the agent waits for a reply in our buffer.
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class LockWriter:
    def __init__(self, lock_path):
        self.lock_path = lock_path
        self.fd = None          # open while we hold the lock
        self.held_since = None
        self.last_hold_ms = None

    def identify(self, request):
        components = []
        if self.lock_path:
            components.append({"kind": "file", "name": "lock", "path": self.lock_path})
        return {"identity": {"components": components,
                             "metadata": {"lock_file": self.lock_path or None,
                                          "python": sys.version.split()[0]}}}

    def prepare(self, request):
        # The slow work before the hold window: make sure the lock file exists,
        # so freeze only has to take the lock.
        if self.lock_path:
            with open(self.lock_path, "a"):
                pass
        return {}

    def freeze(self, request):
        if self.fd is not None:
            return {}  # already holding (a repeated freeze is harmless)
        if not self.lock_path:
            log("freeze: no lock file configured; nothing to hold")
            self.held_since = time.monotonic()
            return {}
        # Wait for writers holding the lock shared, but never past our deadline:
        # a late answer is a timeout and gets this process killed.
        deadline = time.monotonic() + request.get("deadline_ms", 10000) / 1000.0 - 0.05
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return error("retryable", "lock %s is busy" % self.lock_path)
                time.sleep(0.01)
        self.fd = fd
        self.held_since = time.monotonic()
        log("freeze: holding %s" % self.lock_path)
        return {}

    def release(self):
        if self.held_since is not None:
            self.last_hold_ms = int((time.monotonic() - self.held_since) * 1000)
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            log("released %s after %d ms" % (self.lock_path, self.last_hold_ms))
        self.held_since = None

    def thaw(self, request):
        # Idempotent: a thaw without a freeze, or a second thaw, is fine.
        # The lock is held by this process, so while it lives the hold is kept.
        self.release()
        return {"hold_continuous": True}

    def post_snapshot(self, request):
        return {"artifacts": {"lock_file": self.lock_path or None,
                              "held_ms": self.last_hold_ms,
                              "snapshot_id": request.get("snapshot_id")}}

    def abort(self, request):
        self.release()
        return {}

    def post_restore(self, request):
        log("post_restore: restored from checkpoint %s" % request.get("checkpoint_id"))
        return {}


def error(error_class, message):
    return {"ok": False, "error": {"class": error_class, "message": message}}


def main():
    writer = LockWriter(os.environ.get("QUIESCE_EXAMPLE_LOCK_FILE", ""))
    send({"quiesce_exec": PROTOCOL, "name": "example-python", "capabilities": CAPABILITIES})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        phase = request.get("phase")
        handler = getattr(writer, phase, None) if phase in CAPABILITIES else None
        try:
            if handler is None:
                reply = error("non_retryable", "unknown phase %r" % phase)
            else:
                reply = handler(request)
        except Exception as e:  # report, do not die: dying is also a failure, a vaguer one
            reply = error("non_retryable", "%s failed: %s" % (phase, e))
        reply.setdefault("ok", True)
        reply["id"] = request["id"]
        send(reply)
    # stdin closed: the agent is done with us; the lock goes with the process.
    writer.release()


if __name__ == "__main__":
    main()
