#!/bin/bash
# Run at boot by quiesce-test-payload.service with the payload disk mounted
# at $1: installs the agent build the way its package would (binaries, the
# repo's unit file as is, the config), the tests' drop-in, and the test
# runner, then starts the runner and the agent.
set -eu
payload=$1
install -m 0755 "$payload/bin/quiesce-agent" "$payload/bin/quiesce-freeze-holder" /usr/sbin/
install -m 0755 "$payload/bin/quiescectl" /usr/bin/
install -d -m 0755 /etc/quiesce /etc/systemd/system/quiesce-agent.service.d
install -m 0644 "$payload/agent.json" /etc/quiesce/agent.json
install -m 0644 "$payload/quiesce-agent.service" /etc/systemd/system/quiesce-agent.service
install -m 0644 "$payload/quiesce-agent-test.conf" /etc/systemd/system/quiesce-agent.service.d/test.conf
# The package ships the state dir (the unit does not create it on start).
install -d -m 0750 /var/lib/quiesce
install -m 0755 "$payload/quiesce-test-runner" "$payload/qt-hold" "$payload/qt-probe" \
  "$payload/qt-dirty" /usr/local/sbin/
install -m 0644 "$payload/quiesce-test-runner.service" /etc/systemd/system/
cp "$payload/manifest" /etc/quiesce/test-payload.manifest
sync
systemctl daemon-reload
systemctl enable quiesce-agent.service
systemctl --no-block start quiesce-test-runner.service quiesce-agent.service
