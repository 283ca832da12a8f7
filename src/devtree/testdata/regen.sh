#!/bin/sh
# Regenerates the device-tree fixtures in this directory from the installed QEMU and dtc.
# The fixtures were produced with QEMU 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1) and
# dtc 1.6.x; the tests assert the values these command lines configure.
#
# pseries: QEMU builds the tree at machine reset, so `-M pseries,dumpdtb=FILE` (checked before
# the reset) says "This machine doesn't have an FDT" in QEMU 10; the HMP `dumpdtb` command on a
# stopped (-S) machine dumps the tree the guest would get (VOF passes it as is; SLOF reads it).
# microvm: the tree exists only as the fw_cfg file "etc/fdt" (no `dumpdtb`, no qtest accelerator
# in Debian's build), so fwcfg-dump.py boots a 64 KiB real-mode "BIOS" that copies it out.
# Dumps are then shrunk to their used size by pack-dtb.py (totalsize fixed up, nothing else).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

hmp_dump() { # OUT QEMU-ARGS...
    out=$1; shift
    (sleep 1; echo "dumpdtb $PWD/$out"; sleep 2; echo quit) |
        "$@" -S -display none -monitor stdio >"$tmp/log" 2>&1
    grep -q "DTB dumped" "$tmp/log" || { cat "$tmp/log"; exit 1; }
    python3 pack-dtb.py "$out"
}

# VOF, 2 single-thread cores, vty on a null chardev, one virtio PCI device.
hmp_dump pseries-vof.dtb qemu-system-ppc64 -M pseries,x-vof=on -m 512M -smp 2 -nodefaults \
    -serial null -device virtio-rng-pci
# SLOF (the default firmware), 2 cores, vty.
hmp_dump pseries-slof.dtb qemu-system-ppc64 -M pseries -m 512M -smp 2 -nodefaults -serial null
# 2 cores x 2 threads: each cpu node lists 2 threads in ibm,ppc-interrupt-server#s.
hmp_dump pseries-smt.dtb qemu-system-ppc64 -M pseries,x-vof=on -m 1G -smp 4,cores=2,threads=2 \
    -nodefaults -serial null

# microvm exactly as plain as it gets: rtc and two ioapics, empty /chosen.
python3 fwcfg-dump.py etc/fdt microvm.dtb -- -M microvm -m 256M -smp 2 -nodefaults
python3 pack-dtb.py microvm.dtb
# microvm with COM1, a PCIe host and three virtio-mmio transports (blk, rng, blk).
truncate -s 64K "$tmp/d0.img" "$tmp/d1.img"
python3 fwcfg-dump.py etc/fdt microvm-virtio.dtb -- -M microvm,pcie=on -m 256M -smp 2 \
    -nodefaults -serial null \
    -drive if=none,id=d0,format=raw,file="$tmp/d0.img" -device virtio-blk-device,drive=d0 \
    -device virtio-rng-device \
    -drive if=none,id=d1,format=raw,file="$tmp/d1.img" -device virtio-blk-device,drive=d1
python3 pack-dtb.py microvm-virtio.dtb

# Hand-written tree for what QEMU does not produce (aliases, reserved-memory, PCI bridges,
# bus ranges, ultravisor, 64-bit timebase): compiled by dtc.
dtc -q -I dts -O dtb -o crafted.dtb crafted.dts
