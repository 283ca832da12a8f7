#!/usr/bin/env python3
"""Shrinks a QEMU device-tree dump to its used size, keeping every byte of it.

QEMU builds its trees in a fixed buffer (1 MiB for microvm, 2 MiB for pseries with VOF) and
dumps the whole buffer: `totalsize` covers the free space after the strings block. This sets
`totalsize` to the end of the last block and truncates the file there; the header, the reserve
map, the structure and strings blocks stay byte-for-byte what QEMU wrote (what libfdt's
fdt_pack() does when the blocks are already in order, which this checks).

usage: pack-dtb.py FILE
"""
import struct, sys

path = sys.argv[1]
d = bytearray(open(path, "rb").read())
magic, total, off_struct, off_strings, off_rsv, version, _last, _cpu, size_strings, size_struct = \
    struct.unpack(">10I", d[:40])
assert magic == 0xD00DFEED and version >= 17, "not an FDT v17 blob"
assert off_rsv < off_struct <= off_struct + size_struct <= off_strings, "blocks are not in order"
end = off_strings + size_strings
assert end <= total <= len(d)
struct.pack_into(">I", d, 4, end)
open(path, "wb").write(d[:end])
print(f"{path}: totalsize {total} -> {end}", file=sys.stderr)
