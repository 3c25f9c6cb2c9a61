#!/usr/bin/env bash
# Inputs of the systemd unit test (tests/test_systemd_unit.py), cached outside the
# repository so that reruns, and later CI runs on the same machine, reuse them:
#
#   cache.sh rootfs            a minimal Debian 12 that boots under systemd-nspawn (systemd,
#                              Python, Mosquitto, PostgreSQL with its cluster 15/main), as a
#                              tarball. The cluster's port is the first one free on this machine
#                              when it was made (5432, or 5433 when a server runs here): the
#                              test reads it with pg_lsclusters
#   cache.sh wheels PYTHON     every wheel an offline `pip install` of the source tree needs
#                              inside that Debian: the dependencies in pyproject.toml, those of
#                              its rollup extra, and the build backend (PYTHON runs pip download)
#
# Each prints the path it made or found. An entry is named by a hash of what goes into it,
# so a changed package list or pyproject.toml makes a new one. Concurrent runs wait for each
# other (flock). Environment: PLANTFLOOR_CI_CACHE, the folder (default /var/cache/plantfloor-ci);
# PLANTFLOOR_CI_MIRROR, the Debian mirror (default: the one in this machine's apt sources).
set -euo pipefail

SUITE=bookworm
SUITE_PYTHON=3.11          # the python3 of $SUITE: the wheels must fit it
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,mosquitto,mosquitto-clients,iproute2,postgresql
CACHE=${PLANTFLOOR_CI_CACHE:-/var/cache/plantfloor-ci}
work=                      # the scratch folder of this run, removed on exit
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

die() { echo "cache.sh: $*" >&2; exit 1; }

mirror() {
    if [[ -n "${PLANTFLOOR_CI_MIRROR:-}" ]]; then
        echo "$PLANTFLOOR_CI_MIRROR"; return
    fi
    local uri
    # deb822 stanzas (sources.list.d/*.sources): the URI of a "deb" stanza serving $SUITE
    uri=$(awk -v suite="$SUITE" -v RS= '
        /(^|\n)Types:([^\n]*[ \t])?deb([ \t\n]|$)/ {
            u = ""; s = ""
            n = split($0, l, "\n")
            for (i = 1; i <= n; i++) {
                if (l[i] ~ /^URIs:/) u = l[i]
                if (l[i] ~ /^Suites:/) s = l[i]
            }
            if (s ~ ("[ \t]" suite "([ \t]|$)")) { split(u, f, /[ \t]+/); print f[2]; exit }
        }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    # one-line sources: deb [options] URI SUITE COMPONENTS...
    if [[ -z "$uri" ]]; then
        uri=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
              awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Unmount anything a failed debootstrap left mounted below $1, then remove $1 without ever
# crossing into another file system.
remove_tree() {
    local m
    [[ -e "$1" ]] || return 0
    awk -v top="$1/" 'index($2 "/", top) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$1"
}

compressor() {
    if command -v zstd >/dev/null; then echo zst; else echo gz; fi
}

rootfs() {
    local arch key ext tarball
    command -v dpkg >/dev/null || die "not a Debian-based machine (no dpkg)"
    arch=$(dpkg --print-architecture)
    key=$(printf '%s\n' v1 "$SUITE" minbase "$PACKAGES" "$arch" | sha256sum | cut -c1-16)
    ext=$(compressor)
    tarball="$CACHE/debian-$SUITE-$arch-$key.tar.$ext"
    if [[ -s "$tarball" ]]; then echo "$tarball"; return; fi
    command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] ||
        die "debootstrap is not installed (apt-get install debootstrap)"
    work=$(mktemp -d "$CACHE/.rootfs.XXXXXX")
    trap 'remove_tree "$work"' EXIT
    if ! PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include="$PACKAGES" \
            "$SUITE" "$work/root" "$(mirror)" >"$work/debootstrap.log" 2>&1; then
        tail -n 40 "$work/debootstrap.log" >&2
        die "debootstrap of $SUITE from $(mirror) failed"
    fi
    # not needed to boot, and most of the size
    rm -f "$work"/root/var/cache/apt/archives/*.deb
    rm -rf "$work"/root/var/lib/apt/lists/*
    tar -C "$work/root" --numeric-owner --xattrs -c . | { if [[ $ext == zst ]]; then zstd -q -T0; else gzip -1; fi; } \
        >"$work/rootfs.tar.$ext"
    mv -f "$work/rootfs.tar.$ext" "$tarball"
    echo "$tarball"
}

wheels() {
    local python=${1:?wheels needs the python that runs pip download}
    local reqs machine key dir platforms=() n reqs_list
    reqs=$("$python" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
# install.sh --rollup installs plantfloor[rollup]: the roll-up's extra is needed too
print("\n".join(data["build-system"]["requires"] + data["project"]["dependencies"]
                + data["project"]["optional-dependencies"]["rollup"]))
EOF
)
    machine=$(uname -m)
    key=$(printf '%s\n' v1 "$SUITE_PYTHON" "$machine" "$reqs" | sha256sum | cut -c1-16)
    dir="$CACHE/wheels-py$SUITE_PYTHON-$machine-$key"
    if [[ -d "$dir" ]]; then echo "$dir"; return; fi
    # every manylinux tag the glibc of $SUITE (2.36) runs
    for n in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${n}_$machine"); done
    platforms+=(--platform "manylinux2014_$machine" --platform "manylinux2010_$machine"
                --platform "manylinux1_$machine")
    work=$(mktemp -d "$CACHE/.wheels.XXXXXX")
    trap 'remove_tree "$work"' EXIT
    mapfile -t reqs_list <<<"$reqs"
    if ! "$python" -m pip download --quiet --disable-pip-version-check --dest "$work/wheels" \
            --only-binary=:all: --python-version "$SUITE_PYTHON" --implementation cp \
            --abi "cp${SUITE_PYTHON/./}" "${platforms[@]}" "${reqs_list[@]}" >"$work/pip.log" 2>&1; then
        grep -v 'is ignored' "$work/pip.log" | tail -n 40 >&2
        die "pip download of the dependencies failed"
    fi
    mv "$work/wheels" "$dir"
    echo "$dir"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 1200 9 || die "another run holds $CACHE/.lock for more than 20 minutes"
case "${1:-}" in
    rootfs) rootfs ;;
    wheels) shift; wheels "$@" ;;
    *) echo "usage: cache.sh rootfs | cache.sh wheels PYTHON" >&2; exit 2 ;;
esac
