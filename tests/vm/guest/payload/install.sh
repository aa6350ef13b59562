#!/bin/bash
# Run at boot by quiesce-test-payload.service with the payload disk mounted
# at $1: starts the test runner, then installs the agent build the way its
# package would (binaries, the repo's unit file as is, the config), with the
# tests' drop-in, and starts the agent.
set -eu
payload=$1
install -m 0755 "$payload/quiesce-test-runner" "$payload/qt-hold" "$payload/qt-probe" \
  "$payload/qt-dirty" "$payload/qt-wait-probe" "$payload/qt-wait-unit" "$payload/qt-blocked" /usr/local/sbin/
# A transient unit: no daemon-reload before the runner answers. Never the OOM
# killer's choice; nothing the tests do stops it.
systemd-run --no-block --unit=quiesce-test-runner --description="Quiesce test runner" \
  -p DefaultDependencies=no -p Restart=always -p RestartSec=200ms -p OOMScoreAdjust=-1000 \
  /usr/local/sbin/quiesce-test-runner
install -m 0755 "$payload/bin/quiesce-agent" "$payload/bin/quiesce-freeze-holder" /usr/sbin/
install -m 0755 "$payload/bin/quiescectl" /usr/bin/
install -d -m 0755 /etc/quiesce /etc/systemd/system/quiesce-agent.service.d
install -m 0644 "$payload/agent.json" /etc/quiesce/agent.json
install -m 0644 "$payload/quiesce-agent.service" /etc/systemd/system/quiesce-agent.service
install -m 0644 "$payload/quiesce-agent-test.conf" /etc/systemd/system/quiesce-agent.service.d/test.conf
# The package ships the state dir (nothing creates it on the unit's start path).
install -d -m 0750 /var/lib/quiesce
cp "$payload/manifest" /etc/quiesce/test-payload.manifest
systemctl daemon-reload
systemctl --no-block start quiesce-agent.service
