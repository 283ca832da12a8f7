//! PVH entry: QEMU (through SeaBIOS+pvh.bin, qboot, or directly) enters at `pvh_start32` in
//! 32-bit protected mode with paging off and `ebx` pointing at the `hvm_start_info`.
//! The code records the TSC, clears BSS (not the page directories and stack, see below), identity-maps the first 64 GiB with 2 MiB pages,
//! enters long mode and calls `x86_64_rust_entry(start_info, entry_tsc)`.

core::arch::global_asm!(
    r#"
    /* XEN_ELFNOTE_PHYS32_ENTRY: tells QEMU this ELF has a PVH entry point. */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4
    .popsection

    .pushsection .text.entry, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    /* The first thing: when did we start. */
    rdtsc
    mov %eax, (entry_tsc)
    mov %edx, (entry_tsc + 4)
    mov %ebx, (pvh_start_info)
    cld

    /* Clear BSS (page tables and the stack live there). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT; PDPT[i] -> page_dirs[i] for 64 GiB; each PD entry a 2 MiB page. */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, (boot_pml4)
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $boot_page_dirs, %eax
    or $3, %eax
    mov %eax, boot_pdpt(,%ecx,8)
    inc %ecx
    cmp $64, %ecx
    jb 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax          /* present, writable, 2 MiB */
    mov %eax, boot_page_dirs(,%ecx,8)
    mov %ecx, %eax
    shr $11, %eax           /* bits 32.. of the physical address */
    mov %eax, boot_page_dirs+4(,%ecx,8)
    inc %ecx
    cmp $(64 * 512), %ecx
    jb 2b

    /* PAE, CR3, EFER.LME, then paging: long mode (compatibility until the far jump). */
    mov %cr4, %eax
    or $(1 << 5), %eax
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    lgdt (boot_gdt_ptr)
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp
    mov (pvh_start_info), %edi
    mov (entry_tsc), %rsi
    call x86_64_rust_entry
3:  hlt
    jmp 3b
    .popsection

    .pushsection .rodata.gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
    .popsection

    .pushsection .data.entry, "aw"
    .balign 8
    .global entry_tsc
entry_tsc:
    .quad 0
    .global pvh_start_info
pvh_start_info:
    .quad 0
    .popsection

    .pushsection .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
    .popsection

    /* Not cleared at entry (the linker script puts it after __bss_end): every page-directory
       entry is written by the loop above, and the stack is written before it is read. Zeroing
       these 384 KiB would only cost boot time. */
    .pushsection .noclear.boot, "aw", @nobits
    .balign 4096
boot_page_dirs:
    .skip 4096 * 64
boot_stack:
    .skip 128 * 1024
    .global boot_stack_top
boot_stack_top:
    .popsection
"#,
    options(att_syntax)
);

// Exception stubs: one per vector 0..32. Vectors where the CPU pushes an error code keep it;
// the others push 0 so the frame looks the same. Then the vector number, then the common path.
core::arch::global_asm!(
    r#"
    .pushsection .text.exceptions, "ax"
    .macro EXC_STUB n, has_error
    .balign 16
exc_stub_\n:
    .if \has_error == 0
    push $0
    .endif
    push $\n
    jmp exc_common
    .endm

    EXC_STUB 0, 0
    EXC_STUB 1, 0
    EXC_STUB 2, 0
    EXC_STUB 3, 0
    EXC_STUB 4, 0
    EXC_STUB 5, 0
    EXC_STUB 6, 0
    EXC_STUB 7, 0
    EXC_STUB 8, 1
    EXC_STUB 9, 0
    EXC_STUB 10, 1
    EXC_STUB 11, 1
    EXC_STUB 12, 1
    EXC_STUB 13, 1
    EXC_STUB 14, 1
    EXC_STUB 15, 0
    EXC_STUB 16, 0
    EXC_STUB 17, 1
    EXC_STUB 18, 0
    EXC_STUB 19, 0
    EXC_STUB 20, 0
    EXC_STUB 21, 1
    EXC_STUB 22, 0
    EXC_STUB 23, 0
    EXC_STUB 24, 0
    EXC_STUB 25, 0
    EXC_STUB 26, 0
    EXC_STUB 27, 0
    EXC_STUB 28, 0
    EXC_STUB 29, 1
    EXC_STUB 30, 1
    EXC_STUB 31, 0

exc_common:
    /* rsp -> [vector, error, rip, cs, rflags, rsp, ss] */
    mov %rsp, %rdi
    and $-16, %rsp
    call x86_64_exception
4:  hlt
    jmp 4b

    .global exc_stub_table
    .balign 8
exc_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\n
    .endr
    .popsection
"#,
    options(att_syntax)
);
