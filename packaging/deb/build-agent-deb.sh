#!/usr/bin/env bash
# Builds the agent's .deb from the static agent with Debian's own
# dpkg-deb: nothing to install or compile (cargo-deb took ~3 min to build
# on every fresh machine for what is a tar of four files and a control file).
#
#   bash packaging/build-static.sh                      # the static agent first
#   bash packaging/deb/build-agent-deb.sh               # -> target/debian/ircap-agent_<version>-1_amd64.deb
#   bash packaging/deb/build-agent-deb.sh --arch aarch64 --out DIR
#
# The package: /usr/bin/ircap-agent (the static binary, byte for byte),
# /lib/systemd/system/ircap-agent.service, the conffile
# /etc/ircap/agent.toml (0600), the copyright file, and the maintainer
# scripts of packaging/deb/agent/ (which start nothing). No Depends: the
# binary is static.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

arch=x86_64
out="${CARGO_TARGET_DIR:-$root/target}/debian"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --arch) arch=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--arch x86_64|aarch64] [--out DIR]" >&2; exit 2 ;;
    esac
done
case "$arch" in
    x86_64) deb_arch=amd64 ;;
    aarch64) deb_arch=arm64 ;;
    *) echo "$0: unknown --arch $arch (x86_64 or aarch64)" >&2; exit 2 ;;
esac

binary="$root/dist/ircap-agent-$arch-linux-musl"
if [ ! -x "$binary" ]; then
    echo "$0: $binary is missing: run packaging/build-static.sh first" >&2
    exit 1
fi
# The one version, from the workspace manifest.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
[ -n "$version" ] || { echo "$0: no version in $root/Cargo.toml" >&2; exit 1; }
deb_version="$version-1"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
umask 022
install -D -m 0755 "$binary" "$stage/usr/bin/ircap-agent"
install -D -m 0644 "$root/packaging/systemd/ircap-agent.service" \
    "$stage/lib/systemd/system/ircap-agent.service"
install -D -m 0600 "$root/packaging/config/agent.toml" "$stage/etc/ircap/agent.toml"
install -d -m 0755 "$stage/usr/share/doc/ircap-agent"
cat > "$stage/usr/share/doc/ircap-agent/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ircap

Files: *
Copyright: ircap authors
License: Apache-2.0
EOF
chmod 0644 "$stage/usr/share/doc/ircap-agent/copyright"

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$root/packaging/deb/agent/$script" "$stage/DEBIAN/$script"
done
echo /etc/ircap/agent.toml > "$stage/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: ircap-agent
Version: $deb_version
Architecture: $deb_arch
Section: admin
Priority: optional
Maintainer: ircap maintainers <ircap@users.noreply.github.com>
Installed-Size: $installed_kib
Description: ircap on-host agent: captures a Linux host's volatile state
 Captures a Linux host's volatile state (processes, connections, memory maps,
 logs, ...) into SHA-256-hashed captures and streams them over mutual TLS to an
 ircap collector. Ships the static agent, a hardened systemd unit for daemon
 mode and a default /etc/ircap/agent.toml. Installing it starts nothing: the
 service runs once the host has its own identity and an administrator enables
 it.
EOF
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)

# Reproducible: every time stamp is the last commit's (or SOURCE_DATE_EPOCH),
# so the same tree and binary give the same .deb, byte for byte.
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
find "$stage" -exec touch -h -d "@$epoch" {} +
mkdir -p "$out"
deb="$out/ircap-agent_${deb_version}_${deb_arch}.deb"
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
