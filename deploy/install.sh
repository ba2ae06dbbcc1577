#!/usr/bin/env bash
# hazgate install, upgrade, rollback and uninstall on Debian / Raspberry Pi OS (arm64, x86-64).
#
#   sudo deploy/install.sh [install] [options]   install or upgrade from this source tree
#   sudo deploy/install.sh rollback              switch back to the release before the current one
#   sudo deploy/install.sh devices               rewrite the serial-port drop-in from the config
#   sudo deploy/install.sh uninstall [--purge]   remove the program (--purge: config, data, user too)
#
# Options:
#   --destdir DIR      install into DIR as if it were / (also DESTDIR=DIR): no user, no chown,
#                      no systemctl; for images, packaging and tests
#   --wheelhouse DIR   install from wheels made with `pip wheel -c constraints.txt -w DIR .`
#                      (offline boxes), instead of building from this tree with PyPI access;
#                      run `python3 -c 'import agent; agent.write_build_file()'` in the tree
#                      first, so that the wheel names its commit
#   --pip-args "ARGS"  extra arguments for pip (an index mirror, a proxy)
#   --no-start         do not start or restart the service
#   --force            rebuild the release even if this exact one is installed
#   --purge            with uninstall: also /etc/hazgate, /var/lib/hazgate and the user
#
# An upgrade or a rollback first checks the installed config with the release it switches to; a
# release that refuses it is not switched to, and the running one stays (the problems are shown).
#
# Layout: /opt/hazgate/releases/<version>-<hash>/ (a virtual environment each; <version> is the
# tree's release, e.g. 0.1.0-g350b96b (agent.release_version), or the wheel's: its agent/_build.py, else its name),
# /opt/hazgate/current and /opt/hazgate/previous (symlinks), /etc/hazgate (config, never
# overwritten), /var/lib/hazgate (the store: survives upgrade, rollback and uninstall),
# /usr/local/lib/systemd/system/hazgate.service, /usr/local/bin/hazgate (runs as the user).
# Running it again with the same tree changes nothing (idempotent).
set -euo pipefail

PREFIX=/opt/hazgate
CONF=/etc/hazgate
STATE=/var/lib/hazgate
UNIT_DIR=/usr/local/lib/systemd/system
DROPIN_DIR=/etc/systemd/system/hazgate.service.d
WRAPPER=/usr/local/bin/hazgate
USER_NAME=hazgate
KEEP_RELEASES=3
if [ -z "${PYTHON:-}" ]; then  # the system's Python: what a plant box has, outside any home folder
  if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

action=install
D=${DESTDIR:-}
wheelhouse=""
pip_args=""
start=1
fresh_config=0
force=0
purge=0

say() { printf 'hazgate-install: %s\n' "$*"; }
die() { printf 'hazgate-install: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    install|uninstall|rollback|devices) action=$1 ;;
    --destdir) D=${2:?--destdir needs a folder}; shift ;;
    --destdir=*) D=${1#*=} ;;
    --wheelhouse) wheelhouse=$(cd "${2:?--wheelhouse needs a folder}" && pwd); shift ;;
    --pip-args) pip_args=${2-}; shift ;;
    --no-start) start=0 ;;
    --force) force=1 ;;
    --purge) purge=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see $0 --help)" ;;
  esac
  shift
done
if [ -n "$D" ]; then
  mkdir -p "$D"
  D=$(cd "$D" && pwd)
  start=0
fi

# --- helpers ------------------------------------------------------------------------------
staged() { [ -n "$D" ]; }
as_root() { staged || [ "$(id -u)" = 0 ] || die "run as root (sudo $0 $action), or give --destdir"; }
owner() {  # owner USER:GROUP PATH... (skipped when staging into a destdir)
  staged && return 0
  chown "$@"
}
have_systemd() { ! staged && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

check_python() {
  "$PYTHON" - <<'EOF' || die "python3 3.11 or newer with venv is needed: apt-get install -y python3 python3-venv"
import sys, venv, ensurepip  # noqa
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF
  local base
  base=$("$PYTHON" -c 'import sys; print(sys.base_prefix)')
  case "$base" in
    /root*|/home*|/run/user*)  # ProtectHome=yes hides it from the service
      if staged; then say "warning: $PYTHON lives in $base, which the service cannot see (ProtectHome=yes)"
      else die "$PYTHON lives in $base, which the service cannot see (ProtectHome=yes): use PYTHON=/usr/bin/python3"; fi ;;
  esac
}

make_user() {
  staged && return 0
  if ! getent group "$USER_NAME" >/dev/null; then groupadd --system "$USER_NAME"; fi
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --gid "$USER_NAME" --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin --comment "hazgate gateway agent" "$USER_NAME"
    say "created system user $USER_NAME"
  fi
}

source_version() {  # the tree's release: tag (or pyproject's version) plus commit (agent/__init__.py)
  [ -f "$SRC/pyproject.toml" ] || die "no pyproject.toml in $SRC: run the install.sh of a source tree"
  "$PYTHON" -c 'import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])
from agent import release_version; print(release_version(Path(sys.argv[1])))' "$SRC" | tr -c 'A-Za-z0-9.+_\n-' '_'
}

release_id() {  # <version>-<first 10 hex of a hash of what gets installed>
  # version: the wheel's (package metadata) or the source tree's (git describe, see source_version)
  local version hash
  if [ -n "$wheelhouse" ]; then
    local wheel
    wheel=$(ls "$wheelhouse"/hazgate-*.whl 2>/dev/null | sort | tail -n 1)
    [ -n "$wheel" ] || die "no hazgate-*.whl in $wheelhouse"
    version=$("$PYTHON" - "$wheel" <<'EOF' | tr -c 'A-Za-z0-9.+_\n-' '_'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:  # the release the wheel was built from, else its version
    text = z.read("agent/_build.py").decode() if "agent/_build.py" in z.namelist() else ""
found = re.search(r"^VERSION = '([^']+)'", text, re.M)
print(found.group(1) if found else sys.argv[1].rsplit("/", 1)[-1].split("-")[1])
EOF
)
    hash=$(cd "$wheelhouse" && find . -type f -name '*.whl' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-10)
  else
    version=$(source_version)
    hash=$(cd "$SRC" && find pyproject.toml constraints.txt agent drivers deploy docs config -type f \
             -not -name '*.pyc' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-10)
  fi
  printf '%s-%s\n' "$version" "$hash"
}

build_release() {  # build_release ID: a virtual environment at $PREFIX/releases/ID
  local rel=$1 dir="$D$PREFIX/releases/$1"
  if [ -f "$dir/.complete" ] && [ "$force" = 0 ]; then
    say "release $rel is already installed"
    return 0
  fi
  say "building release $rel in $PREFIX/releases/$rel"
  rm -rf "$dir"
  mkdir -p "$D$PREFIX/releases"
  "$PYTHON" -m venv "$dir"
  # shellcheck disable=SC2086 # pip_args is a list of words by design
  if [ -n "$wheelhouse" ]; then
    "$dir/bin/pip" install --quiet --no-index --find-links "$wheelhouse" $pip_args hazgate
  else  # built from a copy: the source tree stays as it was
    local build
    build=$(mktemp -d)
    cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/agent" "$SRC/drivers" "$build/"
    "$PYTHON" -c 'import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])
from agent import write_build_file; write_build_file(Path(sys.argv[1]), Path(sys.argv[2]) / "agent")' "$SRC" "$build" >/dev/null
    "$dir/bin/pip" install --quiet --disable-pip-version-check -c "$SRC/constraints.txt" $pip_args "$build"
    rm -rf "$build"
  fi
  mkdir -p "$dir/share/doc/hazgate" "$dir/share/hazgate"
  cp "$SRC"/docs/*.md "$SRC/README.md" "$dir/share/doc/hazgate/"
  rm -rf "$dir/share/hazgate/config" "$dir/share/hazgate/deploy"
  cp -r "$SRC/config" "$SRC/deploy" "$dir/share/hazgate/"
  if staged; then  # scripts must name the real path, not the staging one
    grep -rlF "$D$PREFIX" "$dir/bin" "$dir/pyvenv.cfg" 2>/dev/null | while read -r f; do
      [ -L "$f" ] || sed -i "s#$D$PREFIX#$PREFIX#g" "$f"
    done
  fi
  find "$dir" -name __pycache__ -prune -o -type d -exec chmod 0755 {} +
  chmod -R go-w "$dir"
  date -u +%Y-%m-%dT%H:%M:%SZ > "$dir/.complete"
}

config_accepted() {  # config_accepted RELEASE: does that release accept the installed config?
  local py="$D$PREFIX/releases/$1/bin/python" out
  [ -f "$D$CONF/gateway.toml" ] || return 0  # first install: the example config comes after the switch
  if staged || ! id "$USER_NAME" >/dev/null 2>&1; then
    out=$("$py" -I -m agent.cli validate -c "$D$CONF/gateway.toml" 2>&1) && return 0
  else  # as the service's user: what the service will see
    out=$(runuser -u "$USER_NAME" -- "$py" -I -m agent.cli validate -c "$CONF/gateway.toml" 2>&1) && return 0
  fi
  printf '%s\n' "$out" | sed 's/^/  /' >&2
  return 1
}

switch_to() {  # make release $1 current; the one before becomes previous
  local rel=$1 cur=""
  [ -L "$D$PREFIX/current" ] && cur=$(basename "$(readlink "$D$PREFIX/current")")
  if [ "$cur" = "$rel" ]; then
    return 0
  fi
  if [ -n "$cur" ]; then
    ln -sfn "releases/$cur" "$D$PREFIX/previous.new" && mv -T "$D$PREFIX/previous.new" "$D$PREFIX/previous"
  fi
  ln -sfn "releases/$rel" "$D$PREFIX/current.new" && mv -T "$D$PREFIX/current.new" "$D$PREFIX/current"
  say "current release: $rel${cur:+ (previous: $cur)}"
}

prune_releases() {  # keep current, previous and the newest others up to KEEP_RELEASES
  local keep=() rel n=0
  for link in current previous; do
    [ -L "$D$PREFIX/$link" ] && keep+=("$(basename "$(readlink "$D$PREFIX/$link")")")
  done
  for rel in $(ls -1t "$D$PREFIX/releases" 2>/dev/null); do
    n=$((n + 1))
    if [ $n -le $KEEP_RELEASES ] || [[ " ${keep[*]} " == *" $rel "* ]]; then continue; fi
    rm -rf "$D$PREFIX/releases/$rel"
    say "removed old release $rel"
  done
}

install_config() {  # /etc/hazgate from config/: files that exist are never overwritten
  local shipped="$D$PREFIX/current/share/hazgate/config" f rel target tmp
  install -d -m 0750 "$D$CONF" "$D$CONF/secrets" "$D$CONF/pki" "$D$CONF/points"
  owner "root:$USER_NAME" "$D$CONF" "$D$CONF/secrets" "$D$CONF/pki" "$D$CONF/points"
  tmp=$(mktemp)
  while read -r f; do
    rel=${f#"$shipped"/}
    [ "$rel" = plant.toml ] && continue  # the simulated plant's scenario: not for a plant box
    target="$D$CONF/$rel"
    cp "$f" "$tmp"
    if [ "$rel" = gateway.toml ]; then  # the example's paths, made right for an installed box
      sed -i -e 's#^data_dir = .*#data_dir = "/var/lib/hazgate"       \# the store; StateDirectory= of the unit#' "$tmp"
    fi
    if [ ! -e "$target" ]; then
      install -D -m 0640 "$tmp" "$target"
      owner "root:$USER_NAME" "$target"
      say "installed $CONF/$rel"
      if [ "$rel" = gateway.toml ]; then fresh_config=1; fi
    elif ! cmp -s "$tmp" "$target"; then  # edited here: keep it, put the new example beside it
      if [ ! -e "$target.dist" ] || ! cmp -s "$tmp" "$target.dist"; then
        install -m 0640 "$tmp" "$target.dist"
        owner "root:$USER_NAME" "$target.dist"
        say "kept your $CONF/$rel; the shipped version is in $CONF/$rel.dist"
      fi
    fi
  done < <(find "$shipped" -type f | LC_ALL=C sort)
  rm -f "$tmp"
}

serial_ports() {  # the serial ports of modbus-rtu devices in the installed config, one a line
  "$D$PREFIX/current/bin/python" - "$D$CONF/gateway.toml" <<'EOF' 2>/dev/null || true
import sys, tomllib
try:
    data = tomllib.load(open(sys.argv[1], "rb"))
except (OSError, tomllib.TOMLDecodeError):
    sys.exit(0)
ports = {d.get("port") for d in data.get("devices", []) if isinstance(d, dict) and d.get("protocol") == "modbus-rtu"}
print("\n".join(sorted(p for p in ports if isinstance(p, str) and p.startswith("/dev/"))))
EOF
}

write_dropin() {  # device access for exactly the configured serial ports
  local ports file="$D$DROPIN_DIR/10-serial-ports.conf"
  ports=$(serial_ports)
  if [ -z "$ports" ]; then
    if [ -e "$file" ]; then rm -f "$file"; say "no serial ports configured: removed $DROPIN_DIR/10-serial-ports.conf"; fi
    rmdir "$D$DROPIN_DIR" 2>/dev/null || true
    return 0
  fi
  install -d -m 0755 "$D$DROPIN_DIR"
  {
    echo "# Written by deploy/install.sh from $CONF/gateway.toml (modbus-rtu ports); run"
    echo "# 'install.sh devices' again after changing them. Serial ports belong to group dialout,"
    echo "# which a private user namespace cannot map: PrivateUsers is off when they are used."
    echo "[Service]"
    echo "PrivateUsers=no"
    echo "SupplementaryGroups=dialout"
    while read -r port; do echo "DeviceAllow=$port rw"; done <<< "$ports"
  } > "$file.new"
  chmod 0644 "$file.new"
  mv "$file.new" "$file"
  if ! staged && getent group dialout >/dev/null; then usermod -a -G dialout "$USER_NAME"; fi
  say "serial ports allowed: $(echo "$ports" | tr '\n' ' ')"
}

install_unit() {
  install -D -m 0644 "$D$PREFIX/current/share/hazgate/deploy/hazgate.service" "$D$UNIT_DIR/hazgate.service"
  install -D -m 0755 /dev/stdin "$D$WRAPPER" <<EOF
#!/bin/sh
# hazgate (deploy/install.sh): run as the service's user when called by root, so that status,
# buffer and validate see what the service sees and never leave root-owned files in the store.
BIN=$PREFIX/current/bin/hazgate
if [ "\$(id -u)" = 0 ] && id $USER_NAME >/dev/null 2>&1 && [ -z "\${HAZGATE_AS_ROOT:-}" ]; then
  exec runuser -u $USER_NAME -- "\$BIN" "\$@"
fi
exec "\$BIN" "\$@"
EOF
  if have_systemd; then
    systemctl daemon-reload
    systemctl enable --quiet hazgate.service
  else  # what 'systemctl enable' does
    install -d -m 0755 "$D/etc/systemd/system/multi-user.target.wants"
    ln -sfn "$UNIT_DIR/hazgate.service" "$D/etc/systemd/system/multi-user.target.wants/hazgate.service"
  fi
}

start_service() {
  [ "$start" = 1 ] && have_systemd || { say "not starting the service (--no-start, --destdir or no systemd)"; return 0; }
  if [ "$fresh_config" = 1 ]; then
    say "installed the example config: describe this plant in $CONF/gateway.toml (docs/device-maps.md),"
    say "check it with 'hazgate validate -c $CONF/gateway.toml', then: systemctl start hazgate"
    return 0
  fi
  if ! runuser -u "$USER_NAME" -- "$PREFIX/current/bin/hazgate" validate -c "$CONF/gateway.toml"; then
    say "the config has problems (above): fix $CONF/gateway.toml, then: systemctl start hazgate"
    return 0
  fi
  if systemctl is-active --quiet hazgate.service; then
    systemctl restart hazgate.service && say "restarted hazgate (the store in $STATE carries on)"
  else
    systemctl start hazgate.service && say "started hazgate"
  fi
}

# --- actions ----------------------------------------------------------------------------------
do_install() {
  as_root
  check_python
  make_user
  local rel
  rel=$(release_id)
  build_release "$rel"
  local cur=""
  [ -L "$D$PREFIX/current" ] && cur=$(basename "$(readlink "$D$PREFIX/current")")
  if [ -n "$cur" ] && [ "$cur" != "$rel" ] && ! config_accepted "$rel"; then
    die "release $rel refuses $CONF/gateway.toml (problems above): not switched; $cur stays installed and running. Fix the config for the new release (hazgate validate with $PREFIX/releases/$rel/bin/hazgate), then run install.sh again"
  fi
  switch_to "$rel"
  prune_releases
  install_config
  install -d -m 0750 "$D$STATE"
  owner "$USER_NAME:$USER_NAME" "$D$STATE"
  install_unit
  write_dropin
  if have_systemd; then systemctl daemon-reload; fi
  start_service
  say "done: $PREFIX/current -> releases/$rel"
}

do_rollback() {
  as_root
  [ -L "$D$PREFIX/previous" ] || die "no previous release to go back to"
  local prev cur
  prev=$(basename "$(readlink "$D$PREFIX/previous")")
  cur=$(basename "$(readlink "$D$PREFIX/current")")
  [ -f "$D$PREFIX/releases/$prev/.complete" ] || die "previous release $prev is missing or incomplete"
  config_accepted "$prev" || die "release $prev refuses $CONF/gateway.toml (problems above): not rolled back; $cur stays current and running"
  ln -sfn "releases/$cur" "$D$PREFIX/previous.new" && mv -T "$D$PREFIX/previous.new" "$D$PREFIX/previous"
  ln -sfn "releases/$prev" "$D$PREFIX/current.new" && mv -T "$D$PREFIX/current.new" "$D$PREFIX/current"
  say "rolled back: current $prev (previous $cur)"
  install_unit
  if have_systemd && [ "$start" = 1 ]; then
    systemctl daemon-reload
    systemctl restart hazgate.service && say "restarted hazgate (the store in $STATE carries on)"
  fi
}

do_uninstall() {
  as_root
  if have_systemd; then
    systemctl disable --now --quiet hazgate.service 2>/dev/null || true
  fi
  rm -f "$D/etc/systemd/system/multi-user.target.wants/hazgate.service" "$D$UNIT_DIR/hazgate.service" \
        "$D$DROPIN_DIR/10-serial-ports.conf" "$D$WRAPPER"
  rmdir "$D$DROPIN_DIR" 2>/dev/null || true
  rm -rf "$D$PREFIX"
  if have_systemd; then systemctl daemon-reload; fi
  if [ "$purge" = 1 ]; then
    rm -rf "$D$CONF" "$D$STATE"
    if ! staged && id "$USER_NAME" >/dev/null 2>&1; then userdel "$USER_NAME" 2>/dev/null || true; fi
    say "removed hazgate, its config ($CONF), its store ($STATE) and its user"
  else
    say "removed hazgate; kept $CONF (config) and $STATE (the store, with anything not yet sent)"
  fi
}

case "$action" in
  install) do_install ;;
  rollback) do_rollback ;;
  devices)
    as_root
    write_dropin
    if have_systemd; then systemctl daemon-reload; say "restart to apply: systemctl restart hazgate"; fi ;;
  uninstall) do_uninstall ;;
esac
