#!/usr/bin/env bash
# Sequential virtio-blk read throughput: secure-guest against a stock Debian Linux guest running
# `dd if=/dev/vda of=/dev/null bs=64k iflag=direct`, on the same QEMU configuration (x86_64 q35,
# TCG, one 64 MiB raw disk with random content, virtio-blk-pci modern).
#
#   scripts/linux-dd-compare.sh            # 3 alternating rounds, then the table
#   ROUNDS=5 scripts/linux-dd-compare.sh
#
# Runs as root on Debian 12 (amd64) and uses only Debian packages: the kernel comes from
# `apt-get download` of linux-image-cloud-amd64 (the image package it depends on), busybox from
# busybox-static. Both are extracted with dpkg-deb and cached under target/linux-dd/, so reruns do
# not touch apt. The Linux guest boots from a small initramfs (scripts/linux-dd/init) and prints
# `LINUX-DD ... bytes=N ns=N` lines measured inside the guest.
#
# Each round boots, in this order: Linux (stock command line), Linux with mitigations=off,
# secure-guest (default queue depth), secure-guest with sg.blk.qd=1, and secure-guest with
# sg.blk.read=64K (its fixed cost: device init, get-id and one request); then the host reads the
# image itself with coreutils dd iflag=direct (the floor set by the host's storage).
#
# Environment:
#   ROUNDS=N             rounds (default 3)
#   LINUX_RUNS=LIST      queue depths of the Linux reads in each boot (default 1,1,4: a cold dd, a
#                        warm dd, 4 dd processes in parallel on quarters of the disk)
#   LINUX_PKG=NAME       kernel package (default linux-image-cloud-amd64, resolved to the image
#                        package it depends on; or a concrete linux-image-<abi>-cloud-amd64)
#   LINUX_DD_REFRESH=1   ask apt again for the kernel and busybox even when they are cached
#   QEMU=PATH            qemu-system-x86_64 binary, or a directory holding it
#   TIMEOUT=SECS         per QEMU run (default 300)
#   KEEP=1               keep the temporary directory (disk image, console logs)
#   DISK_CACHE=MODE      the drive's cache= (default none, as briefed; writeback takes the host's
#                        storage out of the measurement, for a diagnosis)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
LINUX_RUNS=${LINUX_RUNS:-1,1,4}
LINUX_PKG=${LINUX_PKG:-linux-image-cloud-amd64}
TIMEOUT=${TIMEOUT:-300}
CACHE=$ROOT/target/linux-dd
SG_IMAGE=$ROOT/build/secure-guest-x86_64
DISK_MIB=64
DISK_CACHE=${DISK_CACHE:-none}

say() { printf 'linux-dd: %s\n' "$*" >&2; }
die() { printf 'linux-dd: error: %s\n' "$*" >&2; exit 1; }

case "$DISK_CACHE" in none | writeback | writethrough | directsync | unsafe) ;; *) die "DISK_CACHE: none, writeback, writethrough, directsync or unsafe, not '$DISK_CACHE'" ;; esac
case "$ROUNDS" in '' | *[!0-9]* | 0) die "ROUNDS must be a positive integer, not '$ROUNDS'" ;; esac
case "$LINUX_RUNS" in '' | *[!0-9,]* | ,* | *, | *,,*) die "LINUX_RUNS must be like 1,1,4, not '$LINUX_RUNS'" ;; esac
for qd in ${LINUX_RUNS//,/ }; do
  [ "$qd" -ge 1 ] && [ $(((DISK_MIB * 16) % qd)) -eq 0 ] ||
    die "LINUX_RUNS: $qd does not divide the disk's $((DISK_MIB * 16)) blocks of 64 KiB"
done
[ "$(uname -m)" = x86_64 ] || die "needs an x86_64 host (runs the amd64 busybox to build the initramfs)"

# --- host tools --------------------------------------------------------------------------------
apt_install() { # packages...
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 ||
    die "missing $*; install them (Debian: apt-get install $*) or run as root"
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } ||
    die "apt-get install $* failed"
}
missing=()
for t in jq:jq gzip:gzip timeout:coreutils dpkg-deb:dpkg; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
done
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

QEMU=${QEMU:-qemu-system-x86_64}
[ -d "$QEMU" ] && QEMU=$QEMU/qemu-system-x86_64
if [ ! -e "$SG_IMAGE" ]; then
  say "building $SG_IMAGE (make images)"
  make images >&2 || die "make images failed"
fi
if ! command -v "$QEMU" >/dev/null 2>&1; then
  scripts/setup.sh >&2 || die "scripts/setup.sh failed"
  command -v "$QEMU" >/dev/null 2>&1 || die "no QEMU at '$QEMU'"
fi
QEMU=$(command -v "$QEMU")
SG_SHA=$(sha256sum "$SG_IMAGE" | cut -c1-16)

# --- kernel and busybox, cached under target/linux-dd/ ------------------------------------------
APT_UPDATED=
apt_update() { # once per run, as root
  [ -z "$APT_UPDATED" ] || return 1
  [ "$(id -u)" = 0 ] || die "apt cannot find or fetch the packages; run as root so that apt-get update can run"
  say "apt-get update"
  apt-get update -qq >/dev/null || die "apt-get update failed"
  APT_UPDATED=1
}
apt_download() { # dir package: downloads the candidate .deb of package into dir
  (cd "$1" && apt-get download -qq -o APT::Sandbox::User=root "$2" >/dev/null 2>&1)
}
resolve_kernel() { # prints the linux-image-<abi>-... package that LINUX_PKG stands for
  local dep pkg
  if [[ $LINUX_PKG =~ ^linux-image-[0-9] ]]; then echo "$LINUX_PKG"; return; fi
  dep=$(apt-cache show --no-all-versions "$LINUX_PKG" 2>/dev/null | sed -n 's/^Depends: //p' | head -n 1)
  [ -n "$dep" ] || return 1
  pkg=$(tr ',' '\n' <<<"$dep" | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1)
  [ -n "$pkg" ] || die "$LINUX_PKG depends on no linux-image-<abi> package ($dep)"
  echo "$pkg"
}

fetch_kernel() {
  local pkg dl
  rm -rf "$CACHE"/dl.* # what an interrupted fetch left
  dl=$(mktemp -d "$CACHE/dl.XXXXXX")
  # With stale or missing apt lists: update once, resolve again, download again.
  while :; do
    if pkg=$(resolve_kernel); then
      say "fetching $pkg and busybox-static (apt-get download)"
      if apt_download "$dl" "$pkg" && apt_download "$dl" busybox-static; then break; fi
      apt_update || die "apt-get download $pkg busybox-static failed"
    else
      apt_update || die "apt-cache knows no package $LINUX_PKG"
    fi
    rm -f "$dl"/*.deb
  done
  local kdeb bdeb; kdeb=$(ls "$dl"/linux-image-*.deb) bdeb=$(ls "$dl"/busybox-static_*.deb)
  mkdir -p "$dl/k" "$dl/b"
  dpkg-deb -x "$kdeb" "$dl/k"
  dpkg-deb -x "$bdeb" "$dl/b"
  local kver kdebver bbver
  kver=$(ls "$dl/k/lib/modules")
  kdebver=$(dpkg-deb -f "$kdeb" Version)
  bbver=$(dpkg-deb -f "$bdeb" Version)
  [ -f "$dl/k/boot/vmlinuz-$kver" ] || die "$pkg has no /boot/vmlinuz-$kver"
  local bb=$dl/b/bin/busybox
  [ -x "$bb" ] || die "busybox-static has no /bin/busybox"

  # The virtio drivers the guest needs: built in (=y), or modules with their dependencies.
  local cfg=$dl/k/boot/config-$kver mods=() sym m
  for sym in VIRTIO_PCI:virtio_pci VIRTIO_BLK:virtio_blk; do
    case "$(sed -n "s/^CONFIG_${sym%%:*}=//p" "$cfg")" in
      y) ;;
      m) mods+=("${sym#*:}") ;;
      *) die "$pkg: CONFIG_${sym%%:*} is neither built in nor a module" ;;
    esac
  done
  local out=$CACHE/kernel-$kver-$kdebver
  rm -rf "$out"; mkdir -p "$out/modules"
  cp "$dl/k/boot/vmlinuz-$kver" "$out/vmlinuz"
  cp "$cfg" "$out/config"
  : >"$out/modules.order"
  if [ ${#mods[@]} -gt 0 ]; then
    "$bb" depmod -b "$dl/k" "$kver" || die "depmod failed"
    local dep_file=$dl/k/lib/modules/$kver/modules.dep
    declare -A seen=()
    load() { # module path (relative to lib/modules/KVER): its dependencies first, then itself
      local path=$1 d
      [ -z "${seen[$path]:-}" ] || return 0
      seen[$path]=1
      for d in $(sed -n "s|^$path: *||p" "$dep_file"); do load "$d"; done
      cp "$dl/k/lib/modules/$kver/$path" "$out/modules/"
      basename "$path" >>"$out/modules.order"
    }
    for m in "${mods[@]}"; do
      local p; p=$(sed -n "s|^\([^:]*/$m\.ko\):.*|\1|p" "$dep_file")
      [ -n "$p" ] || die "$pkg has no $m.ko"
      load "$p"
    done
  fi
  local bbdir=$CACHE/busybox-${bbver//:/_}
  mkdir -p "$bbdir"
  cp "$bb" "$bbdir/busybox"
  printf 'KVER=%q\nKPKG=%q\nKDEBVER=%q\nKDIR=%q\nBBVER=%q\nBB=%q\n' "$kver" "$pkg" "$kdebver" \
    "$out" "$bbver" "$bbdir/busybox" >"$CACHE/current.env"
  rm -rf "$dl"
}

mkdir -p "$CACHE"
[ -f "$CACHE/CACHEDIR.TAG" ] || printf 'Signature: 8a477f597d28d172789f06886806bc55\n' >"$CACHE/CACHEDIR.TAG"
if [ -n "${LINUX_DD_REFRESH:-}" ] || [ ! -f "$CACHE/current.env" ]; then
  fetch_kernel
fi
# shellcheck disable=SC1091 # KVER KPKG KDEBVER KDIR BBVER BB, written by fetch_kernel
. "$CACHE/current.env"
[ -f "$KDIR/vmlinuz" ] && [ -x "$BB" ] || { fetch_kernel; . "$CACHE/current.env"; }
say "kernel $KPKG $KDEBVER ($KVER); busybox-static $BBVER; cache $CACHE"
if [ -s "$KDIR/modules.order" ]; then say "modules: $(tr '\n' ' ' <"$KDIR/modules.order")"; fi

# --- temporary directory, disk image, initramfs --------------------------------------------------
TMP=$(mktemp -d "$CACHE/run.XXXXXX")
cleanup() {
  local rc=$?
  if [ -n "${KEEP:-}" ]; then
    say "kept $TMP"
  elif [ "$rc" != 0 ]; then
    rm -rf "$TMP/disk.img" "$TMP/initramfs"
    say "kept the logs in $TMP"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IMG=$TMP/disk.img
head -c $((DISK_MIB << 20)) /dev/urandom >"$IMG"
# cache=none opens the image with O_DIRECT: make sure this filesystem takes it.
dd if="$IMG" of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null ||
  die "$TMP does not support O_DIRECT (needed by cache=none)"

# The initramfs is rebuilt on every run (about a second) and kept in the cache, so that the
# printed Linux command line still works after the run.
INITRD=$CACHE/initramfs-$KVER.cpio.gz
stage=$TMP/initramfs
mkdir -p "$stage/bin" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/tmp" "$stage/etc/linux-dd" "$stage/lib/modules"
cp "$BB" "$stage/bin/busybox"
cp scripts/linux-dd/init "$stage/init"
chmod 755 "$stage/init" "$stage/bin/busybox"
cp "$KDIR/modules.order" "$stage/etc/linux-dd/modules"
if [ -s "$KDIR/modules.order" ]; then cp "$KDIR"/modules/*.ko "$stage/lib/modules/"; fi
(cd "$stage" && find . | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null | gzip -6 >"$INITRD.tmp")
mv "$INITRD.tmp" "$INITRD"

# --- the QEMU command lines ----------------------------------------------------------------------
# shellcheck disable=SC2054 # the commas are QEMU's
COMMON=(-M q35 -accel tcg -m 512M -nodefaults -nographic -no-reboot -serial stdio
  -drive "file=$IMG,if=none,id=d0,format=raw,cache=$DISK_CACHE,aio=threads"
  -device virtio-blk-pci,drive=d0,disable-legacy=on)
LINUX_APPEND="console=ttyS0 panic=-1 quiet loglevel=3 ldd.runs=$LINUX_RUNS"
linux_cmd() { # extra kernel command line words
  CMD=("$QEMU" "${COMMON[@]}" -kernel "$KDIR/vmlinuz" -initrd "$INITRD" -append "$LINUX_APPEND${1:+ $1}")
}
sg_cmd() { # secure-guest options
  # shellcheck disable=SC2054
  CMD=("$QEMU" "${COMMON[@]}" -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$SG_IMAGE" -append "$1")
}

# run_qemu LOG EXPECTED_STATUS: runs "${CMD[@]}", the console stamped line by line with the host's
# wall clock ($EPOCHREALTIME) into LOG.
stamp() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do printf '%s %s\n' "$EPOCHREALTIME" "${line%$'\r'}"; done
}
run_qemu() {
  local log=$1 want=$2 rc
  set +e
  timeout "$TIMEOUT" "${CMD[@]}" </dev/null 2>&1 | stamp >"$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" != "$want" ]; then
    tail -n 20 "$log" | cut -d' ' -f2- >&2
    [ "$rc" != 124 ] || die "QEMU timed out after ${TIMEOUT}s ($log)"
    die "QEMU exited $rc, expected $want ($log)"
  fi
}

# Result rows: name -> space-separated MB/s (guest clock) and MB/s (host clock) per round.
declare -A GUEST=() HOST=() NOTE=()
ORDER=()
add() { # row guest_mbs host_mbs note
  [ -n "${GUEST[$1]+x}" ] || ORDER+=("$1")
  GUEST[$1]="${GUEST[$1]:-} $2"
  HOST[$1]="${HOST[$1]:-} $3"
  NOTE[$1]=$4
}
mbs() { awk -v b="$1" -v ns="$2" 'BEGIN { if (ns > 0) printf "%.1f", b * 1000 / ns; else print "nan" }'; }

parse_linux() { # log label
  local log=$1 label=$2 info run qd bytes ns ios sect t0 t1 name
  info=$(LC_ALL=C sed -n 's/^[0-9.]* LINUX-DD-INFO //p' "$log")
  [ -n "$info" ] || die "$label: no LINUX-DD-INFO line ($log)"
  grep -aq '^[0-9.]* LINUX-DD-END status=ok' "$log" || {
    grep -a 'LINUX-DD' "$log" | cut -d' ' -f2- >&2
    die "$label: the guest did not end with status=ok ($log)"
  }
  LINUX_INFO=$info
  while read -r t1 _ run qd _ bytes ns ios sect; do
    run=${run#run=} qd=${qd#qd=} bytes=${bytes#bytes=} ns=${ns#ns=} ios=${ios#ios=} sect=${sect#sectors=}
    t0=$(LC_ALL=C sed -n "s/^\([0-9.]*\) LINUX-DD-START run=$run .*/\1/p" "$log")
    case "$run:$qd" in
      1:1) name="$label, dd QD1 cold" ;;
      *:1) name="$label, dd QD1 warm (run $run)" ;;
      *) name="$label, ${qd}x dd parallel (run $run)" ;;
    esac
    add "$name" "$(mbs "$bytes" "$ns")" "$(awk -v b="$bytes" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", b / (z - a) / 1e6 }')" \
      "QD$qd, $ios requests, $((sect * 512 / (ios > 0 ? ios : 1))) B each"
  done < <(grep -a '^[0-9.]* LINUX-DD run=' "$log")
}

parse_sg() { # log label [norow]: sets SG_BYTES, SG_US; adds a table row unless norow
  local log=$1 label=$2 recs n
  recs=$TMP/records.json
  # "HOSTTIME @sg {json}" -> one JSON object per record, with the host time added as "host_t".
  LC_ALL=C sed -n 's/^\([0-9.]*\) @sg \(.*\)$/{"host_t":\1,"r":\2}/p' "$log" | jq -s . >"$recs" ||
    die "$label: unparsable report ($log)"
  n=$(jq '[.[] | select(.r.event == "virtio" and .r.device == "blk")] | length' "$recs")
  [ "$n" = 1 ] || die "$label: expected one blk virtio record, found $n ($log)"
  jq -e '.[-1].r.event == "end" and .[-1].r.verdict == "pass"' "$recs" >/dev/null ||
    die "$label: the run did not pass ($log)"
  # The interval from the record before the blk virtio record to that record: device init, get-id,
  # the whole read and its CRC32C.
  jq -r 'to_entries as $e
    | ($e | map(select(.value.r.event == "virtio" and .value.r.device == "blk")) | .[0]) as $v
    | $e[$v.key - 1].value as $p
    | [$v.value.r.read_bytes, $v.value.r.t_us - $p.r.t_us, $v.value.host_t - $p.host_t,
       $p.r.event, $v.value.r.result, $v.value.r.requests, $v.value.r.notifications,
       $v.value.r.queues[0].size, $v.value.r.queues[0].ring] | @tsv' "$recs" >"$TMP/sg.tsv"
  local bytes us host prev result req notif qsize ring
  IFS=$'\t' read -r bytes us host prev result req notif qsize ring <"$TMP/sg.tsv"
  [ "$result" = ok ] || die "$label: blk result $result ($log)"
  SG_NOTE="queue $qsize $ring, $req requests, $notif notifications; interval from the $prev record"
  SG_BYTES=$bytes SG_US=$us SG_PREV=$prev
  SG_GUEST=$(jq -r '.[0].r.guest // "?"' "$recs")
  [ -n "${3:-}" ] || add "$label" "$(mbs "$bytes" "$((us * 1000))")" "$(awk -v b="$bytes" -v s="$host" 'BEGIN { printf "%.1f", b / s / 1e6 }')" "$SG_NOTE"
}

# --- the runs --------------------------------------------------------------------------------------
say "temporary directory $TMP; disk $IMG (${DISK_MIB} MiB, random)"
echo "QEMU command lines (the console goes to stdout; every round runs these, in this order):"
shell_words() { # prints its arguments as one shell command line, quoting only where needed
  local a out=
  for a; do
    if [[ $a =~ ^[A-Za-z0-9_./,=:@%+-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
  done
  printf '%s\n' "${out% }"
}
linux_cmd ""; printf '  linux:            '; shell_words "${CMD[@]}"
linux_cmd "mitigations=off"; printf '  linux mit=off:    '; shell_words "${CMD[@]}"
sg_cmd "sg.blk.req=64K"; printf '  secure-guest:     '; shell_words "${CMD[@]}"
sg_cmd "sg.blk.req=64K sg.blk.qd=1"; printf '  secure-guest qd1: '; shell_words "${CMD[@]}"
sg_cmd "sg.blk.req=64K sg.blk.read=64K"; printf '  secure-guest 64K: '; shell_words "${CMD[@]}"
printf '  host floor:       '; shell_words dd "if=$IMG" of=/dev/null bs=64k iflag=direct
echo "  (the disk image is deleted at the end unless KEEP=1; the kernel and initramfs stay cached)"

host_dd() { # the image read on the host the way cache=none reads it: O_DIRECT, QD1, 64 KiB
  local t0 t1
  t0=$EPOCHREALTIME
  dd if="$IMG" of=/dev/null bs=64k iflag=direct 2>/dev/null || die "host dd of $IMG failed"
  t1=$EPOCHREALTIME
  local m; m=$(awk -v b=$((DISK_MIB << 20)) -v a="$t0" -v z="$t1" 'BEGIN { printf "%.1f", b / (z - a) / 1e6 }')
  add "host floor: dd QD1 O_DIRECT on the image" "$m" "$m" "no guest: the host storage under cache=none"
}

SG_FIXED=()
for r in $(seq 1 "$ROUNDS"); do
  say "round $r/$ROUNDS"
  linux_cmd ""; run_qemu "$TMP/linux-$r.log" 0; parse_linux "$TMP/linux-$r.log" "linux"
  linux_cmd "mitigations=off"; run_qemu "$TMP/linux-mit-$r.log" 0; parse_linux "$TMP/linux-mit-$r.log" "linux mitigations=off"
  sg_cmd "sg.blk.req=64K"; run_qemu "$TMP/sg-$r.log" 1; parse_sg "$TMP/sg-$r.log" "secure-guest, default qd"
  full_bytes=$SG_BYTES full_us=$SG_US
  sg_cmd "sg.blk.req=64K sg.blk.qd=1"; run_qemu "$TMP/sg-qd1-$r.log" 1; parse_sg "$TMP/sg-qd1-$r.log" "secure-guest, sg.blk.qd=1"
  qd1_bytes=$SG_BYTES qd1_us=$SG_US
  sg_cmd "sg.blk.req=64K sg.blk.read=64K"; run_qemu "$TMP/sg-64k-$r.log" 1
  parse_sg "$TMP/sg-64k-$r.log" "secure-guest, sg.blk.read=64K" norow
  SG_FIXED+=("$SG_US")
  # Less the fixed cost: the bytes after the first request over the time after it.
  add "secure-guest, default qd, less fixed cost" "$(mbs $((full_bytes - SG_BYTES)) $(((full_us - SG_US) * 1000)))" "-" \
    "(read_bytes - 64K) / (interval - the sg.blk.read=64K interval of the same round)"
  add "secure-guest, sg.blk.qd=1, less fixed cost" "$(mbs $((qd1_bytes - SG_BYTES)) $(((qd1_us - SG_US) * 1000)))" "-" \
    "the same for sg.blk.qd=1"
  host_dd
done

[ "$(sha256sum "$SG_IMAGE" | cut -c1-16)" = "$SG_SHA" ] ||
  say "warning: $SG_IMAGE changed during the run (rebuilt?): the secure-guest rows mix two images"

# --- the table -------------------------------------------------------------------------------------
median() { tr ' ' '\n' | awk '$1 != "" && $1 != "-"' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { tr ' ' '\n' | awk '$1 != "" && $1 != "-"' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }
declare -A MED=()
echo
echo "Sequential read of the whole ${DISK_MIB} MiB disk, 64 KiB requests, q35 TCG, cache=$DISK_CACHE; MB/s = 10^6 bytes/s;"
echo "median of $ROUNDS alternating rounds (range); 'host' = the same interval timed on the host"
echo "from the console lines' arrival."
printf '%-48s %9s %15s %9s  %s\n' "what" "MB/s" "range" "host" "notes"
for row in "${ORDER[@]}"; do
  MED[$row]=$(median <<<"${GUEST[$row]}")
  printf '%-48s %9s %15s %9s  %s\n' "$row" "${MED[$row]}" "$(minmax <<<"${GUEST[$row]}")" \
    "$(median <<<"${HOST[$row]}")" "${NOTE[$row]}"
done
fixed=$(median <<<"${SG_FIXED[*]}")
echo "secure-guest fixed cost (sg.blk.read=64K: init, get-id, one 64 KiB request, CRC): median ${fixed} us"
echo
ratio() { # row row: the first median over the second
  if [ -z "${MED[$1]:-}" ] || [ -z "${MED[$2]:-}" ]; then echo n/a; return; fi
  awk -v a="${MED[$1]}" -v b="${MED[$2]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}
echo "ratios (secure-guest / linux, medians):"
printf '  %-62s %s\n' "secure-guest default qd / linux dd QD1 cold" "$(ratio "secure-guest, default qd" "linux, dd QD1 cold")"
printf '  %-62s %s\n' "secure-guest qd=1 / linux dd QD1 cold (apples to apples)" "$(ratio "secure-guest, sg.blk.qd=1" "linux, dd QD1 cold")"
printf '  %-62s %s\n' "secure-guest qd=1 / linux dd QD1 warm (run 2)" "$(ratio "secure-guest, sg.blk.qd=1" "linux, dd QD1 warm (run 2)")"
printf '  %-62s %s\n' "secure-guest qd=1 / linux mitigations=off dd QD1 cold" "$(ratio "secure-guest, sg.blk.qd=1" "linux mitigations=off, dd QD1 cold")"
for row in "${ORDER[@]}"; do
  case "$row" in "linux, "*"x dd parallel"*)
    printf '  %-62s %s\n' "secure-guest default qd / $row" "$(ratio "secure-guest, default qd" "$row")" ;;
  esac
done
echo
echo "linux guest: $KPKG $KDEBVER, $LINUX_INFO"
echo "secure-guest: $SG_IMAGE (guest $SG_GUEST, sha256 $SG_SHA), record before blk virtio: $SG_PREV"
cat <<'NOTES'
Notes:
- secure-guest: interval = t_us(blk virtio record) - t_us(the record before it). It includes
  device init, get-id and the CRC32C (in software, slice-by-8) of every byte read; the linux dd
  figure includes none of these. The "less fixed cost" rows remove init, get-id and the first
  request; the CRC of the rest stays in.
- secure-guest polls the used ring (its vCPU spins); linux sleeps in HLT and takes an interrupt
  per completion.
- linux: ns from /proc/timer_list (CLOCK_MONOTONIC) around the dd processes, fork/exec included.
  busybox dd keeps one request in flight (QD1, like any dd); the parallel rows are several dd
  processes on disjoint ranges of the disk, so up to that many requests in flight. The QD1 "cold"
  read is the boot's first (TCG translates the read path on it, as secure-guest's only read does).
- cache=none: every request is an O_DIRECT read of the image on the host (the "host floor" row
  is that alone, at QD1). Everything runs on a shared 2-core machine: expect wide ranges.
NOTES
echo "- an empty dd (count=0) costs linux about $(grep -ah 'LINUX-DD-NULL' "$TMP"/linux-[0-9]*.log | sed 's/.*ns=//' | median | awk '{ printf "%.1f", $1 / 1e6 }') ms (median)."
