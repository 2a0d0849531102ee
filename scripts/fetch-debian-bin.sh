#!/usr/bin/env bash
# Put binaries of a Debian package into DIR without installing the package (no system service starts):
# `apt-get download` + `dpkg-deb -x`. Used for test peers: prometheus (metrics test) and docker-registry
# (a real third-party OCI registry for the push/pull test). The lists are refreshed once if the package is
# unknown (that step needs root).
#   scripts/fetch-debian-bin.sh PACKAGE DIR BINARY...
set -euo pipefail
package=$1 dest=$2
shift 2
command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download -qq "$package" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  apt-get download -qq "$package" >/dev/null
fi
dpkg-deb -x "${package}"_*.deb root
cd - >/dev/null
for binary in "$@"; do
  install -m 0755 "$work/root/usr/bin/$binary" "$dest/"
done
echo "$package: installed $* into $dest"
