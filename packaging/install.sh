#!/bin/sh
# install.sh: installs netmux from a release (a URL) or a `cargo xtask dist`
# directory, after checking every file it uses against SHA256SUMS.
#
#   curl -fsSLO https://RELEASE/install.sh && sh install.sh https://RELEASE
#   sh install.sh target/dist
#
# Where dpkg exists it installs the .deb (binaries, systemd unit, config,
# man pages, completions, the netmuxd user and netmux group); elsewhere the
# static binaries followed by `netmux install`.
#
# Options:
#   --root DIR         install into DIR instead of / (staging, tests)
#   --method deb|binaries
#                      force one way (default: deb when dpkg exists)
#   --prefix DIR       binaries' prefix for --method binaries (/usr/local)
#   --arch ARCH        architecture to install (default: uname -m)
#   --sha256sums HASH  also require SHA256SUMS itself to have this SHA-256
#                      (take it from the release notes: then a tampered
#                      mirror cannot swap files and sums together)
#
# Nothing is installed unless every check passes; any mismatch stops it
# with the file named.
set -eu

prog=install.sh
die() {
    echo "$prog: $*" >&2
    exit 1
}

root=/
method=
prefix=/usr/local
arch=$(uname -m)
sums_pin=
source=

while [ $# -gt 0 ]; do
    case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
    --method) [ $# -ge 2 ] || die "--method needs deb or binaries"; method=$2; shift 2 ;;
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --arch) [ $# -ge 2 ] || die "--arch needs an architecture"; arch=$2; shift 2 ;;
    --sha256sums) [ $# -ge 2 ] || die "--sha256sums needs a SHA-256 in hex"; sums_pin=$2; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$source" ] || die "one source only (got $source and $1)"; source=$1; shift ;;
    esac
done
[ -n "$source" ] || die "no source: give a release URL or a dist directory, e.g. sh install.sh target/dist"

case "$method" in
"" | deb | binaries) ;;
*) die "--method must be deb or binaries, not $method" ;;
esac

# Architecture: the name in the binaries' file names and Debian's.
case "$arch" in
x86_64 | amd64) platform=x86_64-linux; debarch=amd64 ;;
aarch64 | arm64) platform=aarch64-linux; debarch=arm64 ;;
*) die "unsupported architecture $arch: netmux is built for x86_64 (and aarch64 once released)" ;;
esac
[ "$(uname -s)" = Linux ] || die "this installer is for Linux; on macOS build from source and run \`sudo netmux install\`"

if [ "$root" = / ] && [ "$(id -u)" != 0 ]; then
    die "installing into / needs root: run it with sudo (or pass --root DIR to stage into a directory)"
fi
if [ "$root" != / ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root=$(cd "$root" && pwd)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/netmux-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# fetch NAME: copies or downloads NAME from the source into $tmp.
fetch() {
    case "$source" in
    http://* | https://*)
        url="${source%/}/$1"
        if command -v curl >/dev/null 2>&1; then
            curl -fsSL --proto '=http,https' -o "$tmp/$1" "$url" || die "downloading $url failed"
        elif command -v wget >/dev/null 2>&1; then
            wget -q -O "$tmp/$1" "$url" || die "downloading $url failed"
        else
            die "neither curl nor wget is installed: install one, or download the release into a directory and pass that"
        fi
        ;;
    *)
        src="${source#file://}"
        [ -f "$src/$1" ] || die "$src/$1 does not exist (is $src a \`cargo xtask dist\` directory?)"
        cp "$src/$1" "$tmp/$1"
        ;;
    esac
}

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        die "no sha256sum or shasum to verify downloads: install coreutils"
    fi
}

fetch SHA256SUMS
if [ -n "$sums_pin" ]; then
    got=$(sha256 "$tmp/SHA256SUMS")
    [ "$got" = "$sums_pin" ] || die "checksum mismatch for SHA256SUMS: expected $sums_pin, got $got; nothing was installed"
fi

# verify NAME: fetches NAME and checks it against its line in SHA256SUMS.
verify() {
    want=$(awk -v f="$1" '$2 == f || $2 == "*" f { print $1; exit }' "$tmp/SHA256SUMS")
    [ -n "$want" ] || die "SHA256SUMS has no entry for $1: refusing to install a file it does not vouch for"
    fetch "$1"
    got=$(sha256 "$tmp/$1")
    [ "$got" = "$want" ] || die "checksum mismatch for $1: expected $want, got $got (a corrupt or altered download); nothing was installed"
}

# What this release has for the architecture.
deb=$(awk -v a="_$debarch.deb" 'substr($2, length($2) - length(a) + 1) == a { print $2; exit }' "$tmp/SHA256SUMS")
if ! grep -q " netmuxd-$platform\$" "$tmp/SHA256SUMS" && [ -z "$deb" ]; then
    have=$(awk '{ print $2 }' "$tmp/SHA256SUMS" | sed -n 's/^netmuxd-//p' | tr '\n' ' ')
    die "this release has no build for $arch ($platform); it has: ${have:-none}"
fi

if [ -z "$method" ]; then
    if command -v dpkg >/dev/null 2>&1 && [ -n "$deb" ]; then method=deb; else method=binaries; fi
fi

if [ "$method" = deb ]; then
    command -v dpkg >/dev/null 2>&1 || die "--method deb needs dpkg"
    [ -n "$deb" ] || die "this release has no .deb for $debarch: use --method binaries"
    verify "$deb"
    if [ "$root" = / ]; then
        dpkg -i "$tmp/$deb"
    else
        # Maintainer scripts run on this system's tools, with DPKG_ROOT=$root.
        dpkg --root="$root" --force-script-chrootless -i "$tmp/$deb"
    fi
    echo "$prog: installed $deb"
else
    for b in netmux netmuxd; do
        verify "$b-$platform"
    done
    mkdir "$tmp/bin"
    for b in netmux netmuxd; do
        mv "$tmp/$b-$platform" "$tmp/bin/$b"
        chmod 0755 "$tmp/bin/$b"
    done
    "$tmp/bin/netmux" install --from "$tmp/bin" --root "$root" --prefix "$prefix"
    echo "$prog: installed netmux and netmuxd into $prefix/bin"
fi
echo "$prog: next: sudo usermod -aG netmux \"\$USER\" (log in again), then netmux doctor"
