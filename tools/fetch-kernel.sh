#!/usr/bin/env bash
# fetch-kernel.sh SUITE FLAVOUR DIR
#
# Puts the arm64 Linux kernel of one Debian release at DIR/vmlinuz,
# downloading it once: SUITE is a Debian suite (bookworm, trixie, sid,
# bookworm-backports, ...), FLAVOUR the kernel flavour (arm64, or arm64-16k
# for 16 KiB pages). The emulated arm64 machine boots this kernel: Debian's
# arm64 kernels have KVM built in, so inside the machine there is a real
# arm64 /dev/kvm. DIR/package names the package it came from.
#
# What it downloads, each file checked before anything reads it, as apt
# checks it:
#   1. the suite's InRelease, by apt-get update told to fetch no list at all
#      (Acquire::IndexTargets::deb::Packages::DefaultEnabled=false): apt keeps
#      it only when it carries a good signature by a key of the Debian archive
#      keyring (/usr/share/keyrings/debian-archive-keyring.gpg, package
#      debian-archive-keyring; apt asks gpgv on Debian 12, sqv on 13) and is
#      still valid (Valid-Until, unless apt's settings say not to check it).
#      Its signed text must name SUITE;
#   2. the suite's list of arm64 packages, main/binary-arm64/Packages.xz
#      (about 10 MB), which must have the SHA256 and size the signed text gives;
#   3. the one package that holds the kernel, linux-image-VERSION-FLAVOUR (from
#      Linux 7.x, linux-binary-VERSION-FLAVOUR), which must have the SHA256
#      and size that list gives.
# 2 and 3 are downloaded by apt's own downloader (apt-helper download-file),
# which refuses a file whose SHA256 is not the one given. So the list, 59 MB
# unpacked, is read once, by one awk, where apt's commands would each turn
# all of it into their cache first. apt runs with a private state and sources
# (tools/private-apt.sh): the machine's apt state and configuration are never
# changed (its settings, a proxy say, apply), and no root is needed. A large
# download says how far it is.
#
# The mirror is the first Debian mirror of the machine's own sources, or
# deb.debian.org; KVM_HELLO_MIRROR=URL chooses another. A stable release's
# security suite is read too (its kernel updates come that way): the newer
# kernel of the two is taken. KVM_HELLO_KEYRING=FILE checks the signatures
# with another keyring. (Debian's installer has a smaller kernel package,
# kernel-image-VERSION-FLAVOUR-di, 15 MB without the modules; but its list
# has lagged behind the security suite's kernels, so it can be an older
# kernel than this one.)
#
# To use a kernel you already have instead: KVM_HELLO_KERNEL=/path/to/Image.
set -euo pipefail

usage="usage: fetch-kernel.sh SUITE FLAVOUR DIR"
suite=${1:?$usage} flavour=${2:?$usage} dir=${3:?$usage}
kernel="$dir/vmlinuz"
[ -s "$kernel" ] && exit 0

keyring=${KVM_HELLO_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
[[ $keyring == /* ]] || keyring=$PWD/$keyring  # apt's Signed-By takes only a full path
apt_helper=/usr/lib/apt/apt-helper
fail() {
  echo "fetch-kernel: $*" >&2
  echo "fetch-kernel: to boot an arm64 kernel you have instead: make run KVM_HELLO_KERNEL=/path/to/Image" >&2
  exit 1
}
[ -r "$keyring" ] || fail "$keyring is missing (package debian-archive-keyring): the download could not be checked"
for tool in apt-get dpkg-deb "$apt_helper"; do
  command -v "$tool" >/dev/null || fail "there is no $tool (packages apt and dpkg): the download needs it"
done

# The machine's Debian mirror, when its sources name one; otherwise Debian's own.
machine_mirror() {
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}'
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '/^deb / {print ($2 ~ /^\[/ ? $3 : $2)}'
}
mirror=${KVM_HELLO_MIRROR:-$(machine_mirror | grep -E '/debian/?$' | head -n 1 || true)}
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}
# Each place read: "MIRROR SUITE". A stable release's kernel updates come
# through its security suite: read it too.
places=("$mirror $suite")
case $suite in
  bullseye | bookworm | trixie)
    if [ -z "${KVM_HELLO_MIRROR:-}" ]; then
      security=$(machine_mirror | grep -E '/debian-security/?$' | head -n 1 || true)
      security=${security:-http://deb.debian.org/debian-security}
      places+=("${security%/} $suite-security")
    fi ;;
esac

work="$dir/download"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
megabytes() { awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1e6 }'; }
downloaded=0

# fetch URL FILE [SHA256 SIZE]: apt's downloader puts URL at FILE, refusing
# it when a SHA256 is given and the file's is another. A download of SIZE
# bytes says how far it is, a line every 5 s (whole lines, at a terminal
# too: the packages' install may be saying its own beside it).
fetch() {
  local url=$1 file=$2 sha256=${3:-} size=${4:-0} pid tenths=0 done_bytes
  "$apt_helper" -qq -o APT::Sandbox::User="$(id -un)" download-file "$url" "$file" ${sha256:+"SHA256:$sha256"} \
    >"$work/fetch.log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.1
    tenths=$((tenths + 1))
    if [ "$size" -gt 0 ] && [ $((tenths % 50)) = 0 ]; then
      done_bytes=$(stat -c %s "$file" 2>/dev/null || echo 0)
      echo "fetch-kernel: $(megabytes "$done_bytes") of $(megabytes "$size") MB, $((done_bytes * 100 / size))%"
    fi
  done
  wait "$pid" || fail "downloading $url failed (the mirror's file is not the one its signed list names, or it" \
    "could not be reached): $(grep -E '^(E|W):|Hash Sum|Err' "$work/fetch.log" | head -n 2 | tr '\n' ' ')"
  downloaded=$((downloaded + $(stat -c %s "$file")))
}

# signed_releases: step 1 for every place, by apt; then each suite's
# signed text at $work/SUITE.Release.
signed_releases() {
  local place url suite inrelease
  mkdir -p "$work/sources"
  for place in "${places[@]}"; do
    read -r url suite <<<"$place"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n\n' "$url" "$suite" "$keyring"
  done >"$work/sources/kernel.sources"
  # shellcheck source=tools/private-apt.sh
  . "$(dirname "$0")/private-apt.sh"
  private_apt "$work/apt" "$work/sources"
  apt-get "${apt_opts[@]}" -o Acquire::IndexTargets::deb::Packages::DefaultEnabled=false update \
    >"$work/update.log" 2>&1 || true
  for place in "${places[@]}"; do
    read -r url suite <<<"$place"
    inrelease=$(ls "$work/apt/lists/"*"_dists_${suite}_InRelease" 2>/dev/null || true)
    [ -n "$inrelease" ] || fail "$url/dists/$suite/InRelease was refused (not signed by a key of $keyring, out of" \
      "date, or not reached): $(grep -E '^(E|W):' "$work/update.log" | head -n 2 | tr '\n' ' ')"
    # The text between the armour's header and its signature (a line that
    # begins with "-" is dash-escaped: "- -...").
    awk '/^-----BEGIN PGP SIGNATURE-----$/ { exit } text { sub(/^- /, ""); print } /^$/ { text = 1 }' \
      "$inrelease" >"$work/$suite.Release"
    awk -v suite="$suite" '($1 == "Suite:" || $1 == "Codename:") && $2 == suite { found = 1 } END { exit !found }' \
      "$work/$suite.Release" || fail "$url/dists/$suite/InRelease is signed, but for another suite than $suite:" \
      "$(grep -E '^(Suite|Codename):' "$work/$suite.Release" | tr '\n' ' ')"
  done
}

# kernel_packages MIRROR SUITE: every linux-image-* and linux-binary-*
# package of the suite's arm64 list, a line each added to $work/kernels:
# NAME VERSION URL SIZE SHA256 DEPENDS..., read as step 2 above says.
kernel_packages() {
  local release="$work/$2.Release" list="$work/$2.Packages.xz" hash size
  read -r hash size < <(awk '/^[^ ]/ { in_sha256 = ($1 == "SHA256:") }
    in_sha256 && $3 == "main/binary-arm64/Packages.xz" { print $1, $2 }' "$release")
  [ -n "${hash:-}" ] || fail "$1 $2's signed Release lists no main/binary-arm64/Packages.xz: it has no arm64 packages"
  echo "fetch-kernel: $2's list of arm64 packages ($(megabytes "$size") MB)"
  fetch "$1/dists/$2/main/binary-arm64/Packages.xz" "$list" "$hash" "$size"
  "$apt_helper" cat-file "$list" | awk -v base="$1" '
    /^Package: / { name = $2 } /^Version: / { version = $2 } /^Filename: / { file = $2 }
    /^Size: / { size = $2 } /^SHA256: / { sha256 = $2 } /^Depends: / { depends = substr($0, 10) }
    /^$/ { if (name ~ /^linux-(image|binary)-/) print name, version, base "/" file, size, sha256, depends
           name = depends = "" }' >>"$work/kernels"
}

# newest NAME: the line of $work/kernels of package NAME with the highest version.
newest() {
  local line best="" best_version="" version
  while read -r line; do
    read -r _ version _ <<<"$line"
    if [ -z "$best" ] || dpkg --compare-versions "$version" gt "$best_version"; then
      best=$line best_version=$version
    fi
  done < <(awk -v name="$1" '$1 == name' "$work/kernels")
  echo "$best"
}
# depends_on LINE PATTERN: the first package LINE depends on whose name matches PATTERN.
depends_on() {
  cut -d' ' -f6- <<<"$1" | sed 's/([^)]*)//g; s/[|,]/\n/g' | awk -v pattern="$2" '$1 ~ pattern { print $1; exit }'
}

echo "fetch-kernel: Debian $suite's arm64 kernel ($flavour), once, into $dir (from ${places[*]%% *}; signed by a" \
  "key of $keyring, checked; your apt setup is untouched)"
signed_releases
for place in "${places[@]}"; do
  read -r url suite_here <<<"$place"
  kernel_packages "$url" "$suite_here"
done

# linux-image-FLAVOUR is a meta package; the kernel is the package it depends
# on. From Linux 7.x Debian splits that one too: linux-image-VERSION is empty
# and depends on linux-binary-VERSION, which holds the kernel image.
meta=$(newest "linux-image-$flavour")
[ -n "$meta" ] || fail "Debian $suite has no arm64 kernel package linux-image-$flavour at ${places[*]%% *}"
image=$(newest "$(depends_on "$meta" '^linux-image-[0-9]')")
[ -n "$image" ] || fail "Debian $suite's linux-image-$flavour depends on no linux-image-VERSION package it has"
holder=$image
binary=$(depends_on "$image" '^linux-binary-')
[ -z "$binary" ] || holder=$(newest "$binary")
[ -n "$holder" ] || fail "Debian $suite has no package $binary, which holds the kernel of ${image%% *}"

read -r image_package version _ <<<"$image"
read -r package _ url size sha256 _ <<<"$holder"
echo "fetch-kernel: $package $version: $(megabytes "$size") MB"
fetch "$url" "$work/kernel.deb" "$sha256" "$size"

# The kernel is ./boot/vmlinuz-VERSION in Linux 6.x's linux-image,
# ./usr/lib/modules/VERSION/vmlinuz in 7.x's linux-binary. It comes before
# the modules: tar stops at the first match (--occurrence) and leaves the
# rest of the package, most of it, unread.
for pattern in './boot/vmlinuz-*' './usr/lib/modules/*/vmlinuz'; do
  { dpkg-deb --fsys-tarfile "$work/kernel.deb" 2>/dev/null || true; } |
    tar -x -C "$work" --wildcards --no-wildcards-match-slash --occurrence=1 "$pattern" 2>/dev/null || true
  image_file=$(find "$work/boot" "$work/usr" -name 'vmlinuz*' -type f 2>/dev/null | head -n 1 || true)
  [ -z "$image_file" ] || break
done
[ -s "${image_file:-}" ] || fail "$package holds no kernel image (looked in /boot and /usr/lib/modules)"
mv "$image_file" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
echo "$image_package $version (Debian $suite, from ${url%%/pool/*})" >"$dir/package"
echo "fetch-kernel: downloaded $(megabytes "$downloaded") MB; kept $kernel ($(megabytes "$(stat -c %s "$kernel")") MB):" \
  "$image_package $version"
