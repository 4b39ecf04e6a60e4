#!/usr/bin/env bash
# Build pyvmm's minimal Linux guest (vmlinux, bzImage, initramfs) from Debian's linux-source-6.1 package.
#
# Results land in ${PYVMM_CACHE:-~/.cache/pyvmm}/linux/{vmlinux,bzImage,initramfs.cpio.gz}, outside the
# clone, with a stamp holding a hash of our inputs (config fragment, patches, /init source, source package
# version): an unchanged tree reuses the cache, a change rebuilds.  Nothing is installed into the system
# but build tools.  See linux/README.md for why each piece is there.
#
# `build.sh --variant NAME FRAGMENT` builds the same kernel with one more config fragment into
# ~/.cache/pyvmm/linux-NAME instead (bench/ measures one).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_CACHE="${PYVMM_CACHE:-$HOME/.cache/pyvmm}"
CACHE="$ROOT_CACHE/linux"
DEB_DIR="$ROOT_CACHE/linux"      # downloaded .debs, shared with the variants
SRC_PKG="linux-source-6.1"
JOBS="${PYVMM_JOBS:-2}"
FRAGMENT="$HERE/guest.config"
EXTRA_FRAGMENT=()
VARIANT=""
if [ "${1:-}" = "--variant" ]; then          # see the header: vmlinux, bzImage, the quiet initramfs
    [ $# -eq 3 ] || { echo "usage: build.sh [--variant NAME FRAGMENT]" >&2; exit 2; }
    VARIANT="$2"
    [[ "$VARIANT" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "linux-guest: error: variant name '$VARIANT': letters, digits, - and _ only" >&2; exit 2; }
    EXTRA_FRAGMENT=("$(cd "$(dirname "$3")" && pwd)/$(basename "$3")")
    [ -f "${EXTRA_FRAGMENT[0]}" ] || { echo "linux-guest: error: no config fragment $3" >&2; exit 2; }
    CACHE="$ROOT_CACHE/linux-$VARIANT"
fi
PATCHES=("$HERE"/patches/*.patch)
INIT_SRC="$HERE/init.c"
SHELL_INIT="$HERE/init.sh"
USER_SRCS=("$HERE/memhog.c" "$HERE/sysrate.c")   # each one /bin/<name> of the shell initramfs
BB_PKG="busybox-static"

say() { echo "linux-guest${VARIANT:+ ($VARIANT)}: $*"; }
die() { trap - EXIT; echo "linux-guest: error: $*" >&2; exit 1; }

# download_deb PKG VERSION ARCH: the .deb in the cache (fetched once; an older version's file removed),
# its path left in DEB_PATH.  Packages are fetched with apt-get download and unpacked with dpkg-deb,
# never installed.
download_deb() {
    DEB_PATH="$DEB_DIR/${1}_${2//:/%3a}_$3.deb"
    # The directory is shared with the variants, whose builds hold their own cache's lock, not this one.
    exec 8>"$DEB_DIR/.download.lock"
    flock 8
    if [ ! -f "$DEB_PATH" ]; then
        rm -f "$DEB_DIR/${1}"_*.deb
        say "apt-get download $1 ($2)"
        # The cache lives in root's home, which apt's sandbox user cannot enter: download as the caller.
        (cd "$DEB_DIR" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$1=$2") \
            || die "apt-get download $1 failed"
    fi
    flock -u 8
}

# Any unexpected failure still ends with one line saying which step failed.
STEP="start"
trap 'rc=$?; [ $rc -ne 0 ] && echo "linux-guest: error: step \"$STEP\" failed (exit $rc); see output above" >&2' EXIT

mkdir -p "$CACHE" "$DEB_DIR"

# One build at a time per cache: test workers, a lab and `make linux-guest` may start this together, and a
# second build would unpack the source over the first one's tree.  A waiter then finds the stamps fresh.
STEP="lock"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
    say "another build holds $CACHE/.build.lock: waiting for it"
    flock 9
fi

# --- the stamp: our inputs and the source package version ------------------------------------------------
STEP="stamp"
pkg_version() {
    local v
    v="$(apt-cache policy "${1:-$SRC_PKG}" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
        return 1
    fi
    echo "$v"
}
VERSION="$(pkg_version || true)"
if [ -z "$VERSION" ]; then
    # A fresh machine's apt lists may be empty: refresh once.
    say "apt knows no $SRC_PKG: running apt-get update"
    apt-get update -qq || die "apt-get update failed"
    VERSION="$(pkg_version)" || die "Debian package $SRC_PKG not found by apt-cache"
fi
BB_VERSION="$(pkg_version "$BB_PKG")" || die "Debian package $BB_PKG not found by apt-cache"
# Two stamps, so that changing a user-space program does not rebuild the kernel: the kernel's inputs
# (config fragment, patches, source version) and the initramfs's (its sources, busybox's version).
KSTAMP="$(cat "$FRAGMENT" "${EXTRA_FRAGMENT[@]}" "${PATCHES[@]}" | sha256sum | cut -c1-16)-$SRC_PKG-$VERSION"
USTAMP="$(cat "$INIT_SRC" "$SHELL_INIT" "${USER_SRCS[@]}" | sha256sum | cut -c1-16)-$BB_PKG-$BB_VERSION"
STAMP="$KSTAMP+$USTAMP"
kernel_fresh() {
    [ -f "$CACHE/kernel.stamp" ] && [ "$(cat "$CACHE/kernel.stamp")" = "$KSTAMP" ] \
        && [ -f "$CACHE/vmlinux" ] && [ -f "$CACHE/bzImage" ] && [ -f "$CACHE/src/Makefile" ]
}
if kernel_fresh && [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$STAMP" ] \
   && [ -f "$CACHE/initramfs.cpio.gz" ] && { [ -n "$VARIANT" ] || [ -f "$CACHE/initramfs-shell.cpio" ]; }; then
    say "up to date in $CACHE (stamp $STAMP)"
    exit 0
fi
say "building into $CACHE (stamp $STAMP)"
START=$SECONDS
SRC="$CACHE/src"

# --- build tools ---------------------------------------------------------------------------------------
STEP="build tools"
need_pkgs=()
for tool_pkg in gcc:gcc make:make flex:flex bison:bison bc:bc cpio:cpio gzip:gzip lz4:lz4 perl:perl \
                xz:xz-utils dpkg-deb:dpkg patch:patch; do
    command -v "${tool_pkg%%:*}" >/dev/null || need_pkgs+=("${tool_pkg#*:}")
done
[ -f /usr/include/gelf.h ] || need_pkgs+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing build tools (${need_pkgs[*]}): run apt-get install -y ${need_pkgs[*]}"
    say "installing build tools: ${need_pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
        || die "apt-get install ${need_pkgs[*]} failed"
fi

# --- the kernel: source, patches, config, build (skipped while its stamp matches) ------------------
build_kernel() {
    rm -f "$CACHE/kernel.stamp"
    # --- the source: apt-get download + dpkg-deb -x, never installed -----------------------------------
    STEP="download source"
    download_deb "$SRC_PKG" "$VERSION" all
    DEB="$DEB_PATH"
    STEP="unpack source"
    say "unpacking $(basename "$DEB")"
    rm -rf "$CACHE/deb" "$CACHE/src"
    dpkg-deb -x "$DEB" "$CACHE/deb"
    mkdir -p "$CACHE/src"
    tar -xaf "$CACHE/deb/usr/src/$SRC_PKG.tar.xz" -C "$CACHE/src" --strip-components=1
    rm -rf "$CACHE/deb"

    # --- our host-quirk patches ------------------------------------------------------------------------
    STEP="apply patches"
    for p in "${PATCHES[@]}"; do
        say "patch $(basename "$p")"
        patch -d "$SRC" -p1 --quiet --forward < "$p" || die "patch $(basename "$p") does not apply to $SRC_PKG $VERSION"
    done

    # --- configuration: tinyconfig + our fragment, every option checked ------------------------------------
    STEP="configure"
    say "make tinyconfig + guest.config${VARIANT:+ + $(basename "${EXTRA_FRAGMENT[0]}")}"
    make -C "$SRC" -s tinyconfig >/dev/null
    "$SRC/scripts/kconfig/merge_config.sh" -m -O "$SRC" "$SRC/.config" "$FRAGMENT" "${EXTRA_FRAGMENT[@]}" >/dev/null
    make -C "$SRC" -s olddefconfig >/dev/null
    missing=()
    # What the last fragment sets wins: check each option's last word over both fragments.
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*) grep -qxF "$line" "$SRC/.config" || missing+=("$line") ;;
            "# CONFIG_"*" is not set") grep -qxF "$line" "$SRC/.config" || missing+=("${line#\# }") ;;
        esac
    done < <(cat "$FRAGMENT" "${EXTRA_FRAGMENT[@]}" | awk '
        /^CONFIG_/ { split($0, kv, "="); last[kv[1]] = $0; order[++n] = kv[1] }
        /^# CONFIG_.* is not set$/ { last[$2] = $0; order[++n] = $2 }
        END { for (i = 1; i <= n; i++) if (!(order[i] in seen)) { seen[order[i]] = 1; print last[order[i]] } }')
    [ ${#missing[@]} -eq 0 ] || die "kconfig dropped: ${missing[*]} (a dependency is missing from guest.config${VARIANT:+ or $(basename "${EXTRA_FRAGMENT[0]}")})"

    # --- the kernel -----------------------------------------------------------------------------------------
    STEP="build kernel"
    say "make -j$JOBS vmlinux bzImage (a few minutes on 2 cores)"
    T0=$SECONDS
    make -C "$SRC" -s -j"$JOBS" vmlinux bzImage KBUILD_BUILD_USER=pyvmm KBUILD_BUILD_HOST=pyvmm
    say "kernel built in $((SECONDS - T0)) s"
    cp "$SRC/vmlinux" "$CACHE/vmlinux.tmp" && mv "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
    cp "$SRC/arch/x86/boot/bzImage" "$CACHE/bzImage.tmp" && mv "$CACHE/bzImage.tmp" "$CACHE/bzImage"
    cp "$SRC/.config" "$CACHE/config"
    echo "$KSTAMP" > "$CACHE/kernel.stamp"
}
if kernel_fresh; then
    say "kernel up to date (stamp $KSTAMP): building the initramfs only"
else
    build_kernel
fi

# --- the initramfs: a static /init that never makes a system call --------------------------------------
STEP="build initramfs"
WORK="$CACHE/initramfs.work"
rm -rf "$WORK" && mkdir -p "$WORK"
gcc -Os -nostdlib -static -no-pie -fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
    -Wl,--build-id=none -o "$WORK/init" "$INIT_SRC"
# gen_init_cpio (built with the kernel) writes device nodes without needing root or mknod.
cat > "$WORK/list" <<EOF
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0755 0 0
dir /sys 0755 0 0
file /init $WORK/init 0755 0 0
EOF
[ -x "$SRC/usr/gen_init_cpio" ] || make -C "$SRC" -s usr/gen_init_cpio
"$SRC/usr/gen_init_cpio" "$WORK/list" | gzip -9 -n > "$WORK/initramfs.cpio.gz"

# --- the shell initramfs: Debian's busybox-static, a shell /init, the memory-pressure program ---------
# (not for a --variant, which bench/ boots with the quiet initramfs only)
build_shell_initramfs() {
    STEP="download busybox"
    download_deb "$BB_PKG" "$BB_VERSION" amd64
    BB_DEB="$DEB_PATH"
    STEP="build shell initramfs"
    say "shell initramfs: $(basename "$BB_DEB"), init.sh, ${USER_SRCS[*]##*/}"
    dpkg-deb -x "$BB_DEB" "$WORK/bb"
    BB="$WORK/bb/bin/busybox"
    [ -x "$BB" ] || die "$(basename "$BB_DEB") has no bin/busybox"
    for src in "${USER_SRCS[@]}"; do
        name="$(basename "$src" .c)"
        gcc -Os -static -Wall -o "$WORK/$name" "$src" || die "gcc $(basename "$src") failed"
    done
    {
        for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /root; do echo "dir $d 0755 0 0"; done
        echo "nod /dev/console 0600 0 0 c 5 1"
        echo "file /init $SHELL_INIT 0755 0 0"
        echo "file /bin/busybox $BB 0755 0 0"
        for src in "${USER_SRCS[@]}"; do
            name="$(basename "$src" .c)"
            echo "file /bin/$name $WORK/$name 0755 0 0"
        done
        # One symlink per applet, listed by the host-runnable static busybox itself.
        "$BB" --list-full | while read -r applet; do
            [ "$applet" = bin/busybox ] || echo "slink /$applet /bin/busybox 0777 0 0"
        done
    } > "$WORK/shell.list"
    # Left uncompressed: the kernel's inflate runs emulated here (over a minute for 1.3 MB of gzip), while
    # pyvmm loads 3 MB of plain cpio in no time.
    "$SRC/usr/gen_init_cpio" "$WORK/shell.list" > "$WORK/initramfs-shell.cpio"
}
RESULTS="vmlinux,bzImage,initramfs.cpio.gz"
if [ -z "$VARIANT" ]; then
    build_shell_initramfs
    RESULTS="$RESULTS,initramfs-shell.cpio"
fi

# --- results, then the stamp (last, so an interrupted build never looks complete) ----------------------
STEP="install results"
rm -f "$CACHE/stamp"
mv "$WORK/initramfs.cpio.gz" "$CACHE/initramfs.cpio.gz"
[ -n "$VARIANT" ] || mv "$WORK/initramfs-shell.cpio" "$CACHE/initramfs-shell.cpio"
rm -rf "$WORK"
echo "$STAMP" > "$CACHE/stamp"
say "done in $((SECONDS - START)) s: $CACHE/{$RESULTS}"
