#!/bin/bash
# Run at boot by quiesce-test-payload.service with the payload disk mounted
# at $1: starts the test runner, puts the tests' drop-in in place, and has
# the agent's .deb installed the way a user does (apt install ./...deb) by
# qt-install-deb in a unit of its own: the package's postinst starts
# quiesce-agent.service, which is ordered after this service, so installing
# it from here would wait for itself.
set -eu
payload=$1
install -m 0755 "$payload/quiesce-test-runner" "$payload/qt-hold" "$payload/qt-probe" \
  "$payload/qt-dirty" "$payload/qt-wait-probe" "$payload/qt-wait-unit" "$payload/qt-blocked" \
  "$payload/qt-install-deb" "$payload/quiesce-test-dbus-writer" /usr/local/sbin/
# A transient unit: no daemon-reload before the runner answers. Never the OOM
# killer's choice; nothing the tests do stops it.
systemd-run --no-block --unit=quiesce-test-runner --description="Quiesce test runner" \
  -p DefaultDependencies=no -p Restart=always -p RestartSec=200ms -p OOMScoreAdjust=-1000 \
  /usr/local/sbin/quiesce-test-runner
# The packages and the test config stay reachable after the payload disk is
# unmounted (the upgrade and purge cases use them).
install -d -m 0755 /run/quiesce-test-debs
install -m 0644 "$payload"/debs/*.deb "$payload/agent.json" "$payload/manifest" /run/quiesce-test-debs/
install -d -m 0755 /etc/systemd/system/quiesce-agent.service.d
install -m 0644 "$payload/quiesce-agent-test.conf" /etc/systemd/system/quiesce-agent.service.d/test.conf
systemd-run --no-block --unit=quiesce-test-install-deb --description="Install the quiesce .deb" \
  -p DefaultDependencies=no /usr/local/sbin/qt-install-deb
