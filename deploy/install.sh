#!/usr/bin/env bash
# Install or remove the plantfloor edge agent (and the roll-up) as systemd services.
#
#   deploy/install.sh [install|uninstall] [--rollup] [--no-agent] [--board] [--root DIR] [--source DIR] [--no-venv]
#
#   install     (default) venv in /opt/plantfloor/venv with the project installed from the
#               source tree, /etc/plantfloor/plantfloor.yaml from config/kyushu.yaml unless a
#               config is already there, /etc/plantfloor/secrets (0700 root), the units
#               (plantfloor.service, plantfloor-rollup.service, plantfloor-board.service,
#               plantfloor-site-board.service) in /etc/systemd/system, the agent's enabled.
#               Running it again upgrades in place.
#   uninstall   disable and remove the units and /opt/plantfloor; keeps /etc/plantfloor
#               (configs and secrets) and /var/lib/plantfloor (the state database).
#
#   --rollup    this host also runs a roll-up replica: /etc/plantfloor/rollup.yaml from
#               config/rollup.yaml unless a config is already there, plantfloor-rollup.service
#               enabled. Without it the roll-up's unit is installed but left as it is.
#   --no-agent  this host runs no agent (a site server: use with --rollup): no
#               /etc/plantfloor/plantfloor.yaml is written and plantfloor.service is not
#               enabled (an enablement made before is left as it is).
#   --board     this host also serves the web board (docs/board.md): the venv gets the
#               board's packages (plantfloor[board]) and its unit is enabled: the gateway's
#               (plantfloor-board.service) beside an agent, the site's
#               (plantfloor-site-board.service) on a site server (--rollup --no-agent).
#   --root DIR  install below DIR instead of / (also: DESTDIR). systemctl is only used when
#               the root is / and systemd is running; otherwise the enablement symlink is
#               made by hand. A venv is tied to the path it was built at: one built below
#               DIR works at DIR/opt/plantfloor/venv, or at /opt/plantfloor/venv in a chroot.
#   --source D  the plantfloor source tree (default: the tree this script is in)
#   --no-venv   skip building the venv (also: PLANTFLOOR_SKIP_VENV=1)
#   PYTHON      interpreter for the venv (default python3; 3.11 or newer)
#
# The services are not started: put the secrets in place and run the checks first.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

action=install
root="${DESTDIR:-/}"
source_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
skip_venv="${PLANTFLOOR_SKIP_VENV:-0}"
with_rollup=0
with_agent=1
with_board=0
python="${PYTHON:-python3}"

while (($#)); do
    case "$1" in
        install|uninstall) action="$1" ;;
        --root) root="${2:?--root needs a directory}"; shift ;;
        --root=*) root="${1#--root=}" ;;
        --source) source_dir="${2:?--source needs a directory}"; shift ;;
        --source=*) source_dir="${1#--source=}" ;;
        --no-venv) skip_venv=1 ;;
        --rollup) with_rollup=1 ;;
        --no-agent) with_agent=0 ;;
        --board) with_board=1 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
    esac
    shift
done
if ((with_board && !with_agent && !with_rollup)); then
    echo "install.sh: --board serves an agent's figures or a roll-up's: use it without --no-agent, or with --rollup" >&2
    exit 2
fi

[[ -n "$root" ]] || root=/
root="$(mkdir -p "$root" && cd "$root" && pwd)"
# Paths below are written as ${R}/etc/...: with root / that is just /etc/...
R="${root%/}"

opt="$R/opt/plantfloor"
venv="$opt/venv"
etc="$R/etc/plantfloor"
unit_dir="$R/etc/systemd/system"
wants_dir="$unit_dir/multi-user.target.wants"
units=(plantfloor.service plantfloor-rollup.service plantfloor-board.service
       plantfloor-site-board.service)

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
    # the site service's PostgreSQL driver and the board's web stack are extras: only a
    # host that runs them installs them
    local extras=() req="$source_dir"
    if ((with_rollup)); then extras+=(rollup); fi
    if ((with_board)); then extras+=(board); fi
    if ((${#extras[@]})); then
        req="$source_dir[$(IFS=,; echo "${extras[*]}")]"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$req"
    say "installed $("$venv/bin/plantfloor" --version 2>/dev/null || echo plantfloor) in ${venv#"$R"}"
}

do_install() {
    [[ -f "$source_dir/pyproject.toml" && -f "$source_dir/deploy/plantfloor.service" &&
       -f "$source_dir/deploy/plantfloor-rollup.service" &&
       -f "$source_dir/deploy/plantfloor-board.service" &&
       -f "$source_dir/deploy/plantfloor-site-board.service" ]] || {
        echo "install.sh: $source_dir is not a plantfloor source tree" >&2; exit 2; }
    umask 022

    install -d -m 0755 "$opt" "$opt/share" "$opt/docs"
    install_venv
    install -m 0644 "$source_dir/config/kyushu.yaml" "$opt/share/plantfloor.example.yaml"
    install -m 0644 "$source_dir/config/rollup.yaml" "$opt/share/rollup.example.yaml"
    # what the units' Documentation= names
    install -m 0644 "$source_dir/docs/operations.md" "$source_dir/docs/scale-out.md" \
        "$source_dir/docs/board.md" "$opt/docs/"

    # The dynamic service user reads the config and the public certificates; only systemd
    # (as root) reads secrets/, and hands them over as credentials.
    install -d -m 0755 "$etc" "$etc/opcua"
    install -d -m 0700 "$etc/secrets"
    if ((EUID == 0)); then
        chown root:root "$etc/secrets"
    else
        say "warning: not root, ${etc#"$R"}/secrets is owned by $(id -un)"
    fi
    local enable=()
    if ((with_agent)); then
        install_config kyushu.yaml plantfloor.yaml
        enable+=(plantfloor.service)
    fi
    if ((with_rollup)); then
        install_config rollup.yaml rollup.yaml
        enable+=(plantfloor-rollup.service)
    fi
    local board_unit=""
    if ((with_board)); then
        if ((with_agent)); then
            board_unit=plantfloor-board.service
        else
            board_unit=plantfloor-site-board.service
        fi
        enable+=("$board_unit")
    fi

    install -d -m 0755 "$unit_dir"
    local u
    for u in "${units[@]}"; do
        install -m 0644 "$source_dir/deploy/$u" "$unit_dir/$u"
    done
    if live_systemd; then
        systemctl daemon-reload
        if ((${#enable[@]})); then
            systemctl enable "${enable[@]}"
        fi
    elif ((${#enable[@]})); then
        install -d -m 0755 "$wants_dir"
        for u in "${enable[@]}"; do
            ln -sfn "/etc/systemd/system/$u" "$wants_dir/$u"
        done
    fi

    if ((!with_agent && !with_rollup)); then
        say "installed; no service enabled (--no-agent without --rollup)"
        return
    fi
    echo "plantfloor: installed. Next:"
    if ((with_agent)); then
        cat <<EOF
  the agent (plantfloor.service, docs/operations.md):
  1. put the MQTT password in /etc/plantfloor/secrets/mqtt-password (and the OPC UA
     client key in /etc/plantfloor/secrets/opcua-client-key.pem), mode 0600, owner root
  2. /opt/plantfloor/venv/bin/plantfloor check /etc/plantfloor/plantfloor.yaml
  3. systemctl restart plantfloor && systemctl status plantfloor
EOF
    fi
    if ((with_rollup)); then
        cat <<EOF
  the roll-up (plantfloor-rollup.service, docs/scale-out.md):
  1. put the MQTT password in /etc/plantfloor/secrets/mqtt-password and the PostgreSQL
     password in /etc/plantfloor/secrets/pg-password, mode 0600, owner root
  2. /opt/plantfloor/venv/bin/plantfloor rollup /etc/plantfloor/rollup.yaml --check
  3. systemctl restart plantfloor-rollup && systemctl status plantfloor-rollup
EOF
    fi
    if [[ -n "$board_unit" ]]; then
        cat <<EOF
  the board ($board_unit, docs/board.md):
  1. optional: an access token in /etc/plantfloor/secrets/board-token, board.credential_file:
     board-token in the config and LoadCredential=board-token:... in a drop-in
  2. systemctl restart ${board_unit%.service} && curl -s http://127.0.0.1:8470/healthz
EOF
    fi
}

# install_config EXAMPLE NAME: /etc/plantfloor/NAME from config/EXAMPLE, unless there is one
install_config() {
    if [[ -e "$etc/$2" ]]; then
        say "keeping the existing ${etc#"$R"}/$2"
    else
        install -m 0644 "$source_dir/config/$1" "$etc/$2"
        say "wrote ${etc#"$R"}/$2 from config/$1: edit it for this site"
    fi
}

do_uninstall() {
    local u
    if live_systemd; then
        systemctl disable --now "${units[@]}" || true
    fi
    for u in "${units[@]}"; do
        rm -f "$wants_dir/$u" "$unit_dir/$u"
    done
    rm -rf "$opt"
    if live_systemd; then
        systemctl daemon-reload
    fi
    say "removed the services and ${opt#"$R"}; kept ${etc#"$R"} (configs, secrets) and /var/lib/plantfloor (state)"
}

case "$action" in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
