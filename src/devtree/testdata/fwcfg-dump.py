#!/usr/bin/env python3
"""Reads a fw_cfg file (default etc/fdt) from an x86 QEMU machine without any guest OS.

QEMU's microvm keeps its device tree only in fw_cfg ("etc/fdt"; `dumpdtb` says the machine has
no FDT), so this builds a 64 KiB real-mode "BIOS" that selects one fw_cfg item (I/O port 0x510),
copies N bytes of it (port 0x511) to isa-debugcon (port 0xe9), and exits through isa-debug-exit.
Run 1 dumps the file directory, run 2 the file.

usage: fwcfg-dump.py NAME OUT -- QEMU-ARGS...     (e.g. etc/fdt microvm.dtb -- -M microvm ...)
"""
import os, struct, subprocess, sys, tempfile

def bios(key, length):
    code = bytes([0xFA,                      # cli
                  0xBA, 0x10, 0x05,          # mov dx, 0x510
                  0xB8]) + struct.pack("<H", key) + bytes([  # mov ax, key
                  0xEF,                      # out dx, ax   (select)
                  0x66, 0xB9]) + struct.pack("<I", length) + bytes([  # mov ecx, length
                  0xBA, 0x11, 0x05,          # loop: mov dx, 0x511
                  0xEC,                      # in al, dx
                  0xBA, 0xE9, 0x00,          # mov dx, 0xe9
                  0xEE,                      # out dx, al
                  0x66, 0x49,                # dec ecx
                  0x75, 0xF4,                # jnz loop
                  0xBA, 0xF4, 0x00,          # mov dx, 0xf4
                  0xB0, 0x00,                # mov al, 0
                  0xEE,                      # out dx, al   (isa-debug-exit)
                  0xF4, 0xEB, 0xFD])         # hlt; jmp $-1
    img = bytearray(b"\xF4" * 0x10000)
    img[0:len(code)] = code
    img[0xFFF0:0xFFF3] = bytes([0xE9]) + struct.pack("<H", (0x0000 - 0xFFF3) & 0xFFFF)  # reset vector: jmp 0
    return bytes(img)

def run(key, length, qemu_args):
    with tempfile.TemporaryDirectory() as d:
        b, o = os.path.join(d, "bios.bin"), os.path.join(d, "out.bin")
        open(b, "wb").write(bios(key, length))
        subprocess.run(["qemu-system-x86_64", "-bios", b, "-display", "none",
                        "-chardev", "file,id=dbg,path=" + o,
                        "-device", "isa-debugcon,iobase=0xe9,chardev=dbg",
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"] + qemu_args,
                       timeout=300)
        return open(o, "rb").read()

name, out = sys.argv[1], sys.argv[2]
qemu_args = sys.argv[sys.argv.index("--") + 1:]
dir_ = run(0x19, 4 + 64 * 64, qemu_args)
count = struct.unpack(">I", dir_[:4])[0]
files = {}
for i in range(count):
    size, sel, _ = struct.unpack(">IHH", dir_[4 + 64 * i:12 + 64 * i])
    files[dir_[12 + 64 * i:68 + 64 * i].split(b"\0")[0].decode()] = (size, sel)
print("fw_cfg files:", sorted(files), file=sys.stderr)
size, sel = files[name]
data = run(sel, size, qemu_args)
assert len(data) == size, (len(data), size)
open(out, "wb").write(data)
print("wrote", out, size, "bytes", file=sys.stderr)
