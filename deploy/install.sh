#!/usr/bin/env bash
# Install or remove the plantfloor edge agent as a systemd service.
#
#   deploy/install.sh [install|uninstall] [--root DIR] [--source DIR] [--no-venv]
#
#   install     (default) venv in /opt/plantfloor/venv with the project installed from the
#               source tree, /etc/plantfloor/plantfloor.yaml from config/kyushu.yaml unless a
#               config is already there, /etc/plantfloor/secrets (0700 root), the unit in
#               /etc/systemd/system, enabled. Running it again upgrades in place.
#   uninstall   disable and remove the unit and /opt/plantfloor; keeps /etc/plantfloor
#               (config and secrets) and /var/lib/plantfloor (the state database).
#
#   --root DIR  install below DIR instead of / (also: DESTDIR). systemctl is only used when
#               the root is / and systemd is running; otherwise the enablement symlink is
#               made by hand. A venv is tied to the path it was built at: one built below
#               DIR works at DIR/opt/plantfloor/venv, or at /opt/plantfloor/venv in a chroot.
#   --source D  the plantfloor source tree (default: the tree this script is in)
#   --no-venv   skip building the venv (also: PLANTFLOOR_SKIP_VENV=1)
#   PYTHON      interpreter for the venv (default python3; 3.11 or newer)
#
# The service is not started: put the secrets in place and run `plantfloor check` first.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

action=install
root="${DESTDIR:-/}"
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
skip_venv="${PLANTFLOOR_SKIP_VENV:-0}"
python="${PYTHON:-python3}"

while (($#)); do
    case "$1" in
        install|uninstall) action="$1" ;;
        --root) root="${2:?--root needs a directory}"; shift ;;
        --root=*) root="${1#--root=}" ;;
        --source) source_dir="${2:?--source needs a directory}"; shift ;;
        --source=*) source_dir="${1#--source=}" ;;
        --no-venv) skip_venv=1 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
    esac
    shift
done

[[ -n "$root" ]] || root=/
root="$(mkdir -p "$root" && cd "$root" && pwd)"
# Paths below are written as ${R}/etc/...: with root / that is just /etc/...
R="${root%/}"

opt="$R/opt/plantfloor"
venv="$opt/venv"
etc="$R/etc/plantfloor"
unit_dir="$R/etc/systemd/system"
unit="$unit_dir/plantfloor.service"
wants="$unit_dir/multi-user.target.wants/plantfloor.service"

say() { printf 'plantfloor: %s\n' "$*"; }

live_systemd() {
    # Only the real root of a machine booted with systemd may be told to enable units.
    [[ "$root" == / && -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

install_venv() {
    if [[ "$skip_venv" == 1 ]]; then
        say "skipping the venv (--no-venv)"
        return
    fi
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "install.sh: $python is older than Python 3.11" >&2; exit 1; }
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    # A directory requirement is always rebuilt and reinstalled: this is also the upgrade.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$source_dir"
    say "installed $("$venv/bin/plantfloor" --version 2>/dev/null || echo plantfloor) in ${venv#"$R"}"
}

do_install() {
    [[ -f "$source_dir/pyproject.toml" && -f "$source_dir/deploy/plantfloor.service" ]] || {
        echo "install.sh: $source_dir is not a plantfloor source tree" >&2; exit 2; }
    umask 022

    install -d -m 0755 "$opt" "$opt/share" "$opt/docs"
    install_venv
    install -m 0644 "$source_dir/config/kyushu.yaml" "$opt/share/plantfloor.example.yaml"
    install -m 0644 "$source_dir/docs/operations.md" "$opt/docs/operations.md"

    # The dynamic service user reads the config and the public certificates; only systemd
    # (as root) reads secrets/, and hands them over as credentials.
    install -d -m 0755 "$etc" "$etc/opcua"
    install -d -m 0700 "$etc/secrets"
    if ((EUID == 0)); then
        chown root:root "$etc/secrets"
    else
        say "warning: not root, ${etc#"$R"}/secrets is owned by $(id -un)"
    fi
    if [[ -e "$etc/plantfloor.yaml" ]]; then
        say "keeping the existing ${etc#"$R"}/plantfloor.yaml"
    else
        install -m 0644 "$source_dir/config/kyushu.yaml" "$etc/plantfloor.yaml"
        say "wrote ${etc#"$R"}/plantfloor.yaml from config/kyushu.yaml: edit it for this site"
    fi

    install -d -m 0755 "$unit_dir"
    install -m 0644 "$source_dir/deploy/plantfloor.service" "$unit"
    if live_systemd; then
        systemctl daemon-reload
        systemctl enable plantfloor.service
    else
        install -d -m 0755 "$(dirname "$wants")"
        ln -sfn /etc/systemd/system/plantfloor.service "$wants"
    fi

    cat <<EOF
plantfloor: installed. Next:
  1. put the MQTT password in /etc/plantfloor/secrets/mqtt-password (and the OPC UA
     client key in /etc/plantfloor/secrets/opcua-client-key.pem), mode 0600, owner root
  2. /opt/plantfloor/venv/bin/plantfloor check /etc/plantfloor/plantfloor.yaml
  3. systemctl restart plantfloor && systemctl status plantfloor
EOF
}

do_uninstall() {
    if live_systemd; then
        systemctl disable --now plantfloor.service || true
    fi
    rm -f "$wants" "$unit"
    rm -rf "$opt"
    if live_systemd; then
        systemctl daemon-reload
    fi
    say "removed the service and ${opt#"$R"}; kept ${etc#"$R"} (config, secrets) and /var/lib/plantfloor (state)"
}

case "$action" in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
