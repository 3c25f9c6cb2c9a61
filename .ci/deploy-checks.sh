#!/usr/bin/env bash
# Deployment checks: the systemd unit's sandbox exposure, the install script's syntax, and
# the container build when a docker engine is usable (skipped, and said so, otherwise).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

max_exposure=2.0
status=0

if command -v systemd-analyze >/dev/null; then
    for unit in plantfloor.service plantfloor-board.service plantfloor-site-board.service; do
        report="$(systemd-analyze security --offline=yes "deploy/$unit" 2>&1)" || true
        score="$(sed -n "s/.*Overall exposure level for ${unit//./\\.}: \([0-9.]*\).*/\1/p" <<<"$report")"
        if [[ -z "$score" ]]; then
            echo "deploy-checks: could not read the exposure level of $unit:" >&2
            echo "$report" >&2
            status=1
        elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
            echo "deploy-checks: $unit exposure $score (at most $max_exposure): ok"
        else
            echo "$report" | grep '✗' >&2 || true
            echo "deploy-checks: $unit exposure $score is above $max_exposure" >&2
            status=1
        fi
    done
else
    echo "deploy-checks: systemd-analyze not installed: exposure check skipped"
fi

bash -n deploy/install.sh
if command -v shellcheck >/dev/null; then
    shellcheck deploy/install.sh .ci/deploy-checks.sh
fi

if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
    docker build --file deploy/Dockerfile --tag plantfloor:ci .
    docker run --rm --read-only --entrypoint plantfloor plantfloor:ci --version
    docker run --rm --read-only --entrypoint plantfloor plantfloor:ci \
        check /etc/plantfloor/plantfloor.yaml
else
    echo "deploy-checks: no usable docker engine: container build skipped"
fi

exit "$status"
