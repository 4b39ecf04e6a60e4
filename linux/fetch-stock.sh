#!/usr/bin/env bash
# Fetch Debian's stock cloud kernel (the bzImage of linux-image-*-cloud-amd64) into the cache, unpacked
# with dpkg-deb, installed nowhere.  Prints the path of the vmlinuz.  Used by the slow end-to-end test
# that boots an unpatched distribution kernel through the Linux boot protocol and ACPI.
set -euo pipefail
CACHE="${PYVMM_CACHE:-$HOME/.cache/pyvmm}/stock"
mkdir -p "$CACHE"
cd "$CACHE"
vmlinuz=$(ls x/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
if [ -n "$vmlinuz" ]; then
  echo "$CACHE/$vmlinuz"
  exit 0
fi
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq >&2
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$pkg" ] || { echo "fetch-stock: Debian's linux-image-cloud-amd64 is not in the package lists" >&2; exit 1; }
apt-get download "$pkg" >&2 2>/dev/null || apt-get download "$pkg" >&2
dpkg-deb -x "$pkg"_*.deb x
rm -f "$pkg"_*.deb
ls "$CACHE"/x/boot/vmlinuz-* | head -n1
