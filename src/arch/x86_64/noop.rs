//! The x86_64 no-op payload: a PVH note and an entry that exits at once through
//! `isa-debug-exit` (code 0, QEMU exit status 1), else triple-faults (QEMU with `-no-reboot`
//! exits). It measures what QEMU and the firmware cost without any guest work.

core::arch::global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long noop_start32
    .balign 4
    .popsection

    .pushsection .text.entry, "ax"
    .code32
    .global noop_start32
noop_start32:
    mov $0xf4, %dx
    xor %eax, %eax
    outl %eax, %dx
    lidt (noop_empty_idt)
    int3
1:  hlt
    jmp 1b
    .balign 8
noop_empty_idt:
    .word 0
    .long 0
    .code64
    .popsection

    .pushsection .bss.boot, "aw", @nobits
    .popsection
"#,
    options(att_syntax)
);
