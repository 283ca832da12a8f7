//! The ppc64le no-op payload: the same endian trampoline as secure-guest, then RTAS
//! power-off at once. It measures what QEMU and the firmware cost by themselves.
//!
//! It does not talk to Open Firmware at all, so it hard-codes QEMU's RTAS token for
//! `power-off`: 0x2003 (hw/ppc/spapr.h RTAS_POWER_OFF = RTAS_TOKEN_BASE 0x2000 + 3, the value
//! /rtas `power-off` carries on every QEMU pseries machine). secure-guest itself always reads
//! the token from /rtas. The argument block is position-independent data in the image, written
//! big-endian as RTAS wants it; H_RTAS (0xf000) runs the call in QEMU, which then exits 0.
use core::arch::global_asm;

global_asm!(
    concat!(
        include_str!("../../../boot/ppc64/be.S"),
        include_str!("../../../boot/ppc64/trampoline.S"),
        r#"
    .section .text.entry, "ax"
    .globl _start
    .p2align 2
_start:
    SG_ENDIAN_ENTRY .Lnoop_le
    .p2align 2
.Lnoop_le:
    bcl 20, 31, .Lnoop_pc
.Lnoop_pc:
    mflr 4
    addi 4, 4, (.Lnoop_rtas_args - .Lnoop_pc)
    li 3, 0
    ori 3, 3, 0xf000                # H_RTAS
    sc 1
.Lnoop_hang:
    b .Lnoop_hang

    # RTAS block: token, nargs 2, nret 1, args 0 0, one return cell (big-endian words).
    .p2align 3
.Lnoop_rtas_args:
    BEWORD 0x2003
    BEWORD 2
    BEWORD 1
    BEWORD 0
    BEWORD 0
    BEWORD 0xffffffff
"#
    ),
    options(raw)
);
