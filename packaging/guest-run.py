#!/usr/bin/env python3
"""Runs one command in an initramfs guest through its control channel.

    guest-run.py SOCKET COMMAND...
    guest-run.py SOCKET --clock-offset   prints "OFFSET_MS ERROR_MS": the
        guest's clock minus the host's, and at most how wrong that is (half
        the round trip of the one request, timed here around it)

SOCKET is the host end of the virtio-serial port org.quiesce.test.0, served
in the guest by quiesce-test-runner (tests/vm/guest/payload/): a request
"<id> <timeout_s> <command>", a reply "R <id> <exit> <start> <end>
<escaped output>". Prints the output and exits with the command's code.
The packaging scripts' counterpart of tests/vm/control_channel.cpp.
"""
import os
import socket
import sys
import time

sock_path, command = sys.argv[1], " ".join(sys.argv[2:])
clock_offset = command == "--clock-offset"
if clock_offset:
    command = "echo $EPOCHREALTIME"
deadline = time.time() + 120
while True:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
request_id = str(int(time.time() * 1000) % 1000000000)
sent_at = time.time()
# The runner ends the command after this many seconds (exit 124).
limit = int(os.environ.get("QUIESCE_GUEST_TIMEOUT_S", "60"))
s.sendall(f"{request_id} {limit} {command}\n".encode())
s.settimeout(limit + 30)
buf = b""
while True:
    data = s.recv(65536)
    if not data:
        sys.exit("guest-run.py: the channel closed before the reply")
    buf += data
    for line in buf.decode(errors="replace").split("\n")[:-1]:
        if line.startswith(f"R {request_id} "):
            parts = line.split(" ", 5)
            out = parts[5] if len(parts) > 5 else ""
            # The runner escapes "\\" and newlines onto the one line.
            text, i = "", 0
            while i < len(out):
                if out[i] == "\\" and i + 1 < len(out):
                    i += 1
                    text += "\n" if out[i] == "n" else out[i]
                else:
                    text += out[i]
                i += 1
            if clock_offset:
                received_at = time.time()
                guest_ms = float(text) * 1000
                middle_ms = (sent_at + received_at) / 2 * 1000
                print(f"{guest_ms - middle_ms:.0f} {(received_at - sent_at) / 2 * 1000:.0f}")
                sys.exit(0)
            sys.stdout.write(text)
            sys.exit(int(parts[2]))
