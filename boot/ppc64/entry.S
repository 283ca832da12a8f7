# secure-guest entry: endian switch, self-relocation, BSS, stack, then Rust.
    .section .text.entry, "ax"
    .globl _start
    .p2align 2
_start:
    SG_ENDIAN_ENTRY .Lsg_entry_le

    .p2align 2
.Lsg_entry_le:
    # Little-endian, 64-bit. r3/r4 = initrd, r5 = OF client interface, r30 = entry timebase.
    mr 25, 3
    mr 26, 4
    mr 27, 5
    bcl 20, 31, .Lsg_pc
.Lsg_pc:
    mflr 31
    # r29 = where the image runs (linked at 0, so this is also the relocation offset).
    addis 29, 31, (_start - .Lsg_pc)@ha
    addi 29, 29, (_start - .Lsg_pc)@l
    # r2 = TOC pointer, as compiled code expects it.
    addis 2, 31, (.TOC. - .Lsg_pc)@ha
    addi 2, 2, (.TOC. - .Lsg_pc)@l

    # Apply .rela.dyn: R_PPC64_RELATIVE (22) is *(base + offset) = base + addend. Anything
    # else is counted in r28 and reported once Rust runs (a static PIE should have none).
    addis 6, 31, (__sg_rela_start - .Lsg_pc)@ha
    addi 6, 6, (__sg_rela_start - .Lsg_pc)@l
    addis 7, 31, (__sg_rela_end - .Lsg_pc)@ha
    addi 7, 7, (__sg_rela_end - .Lsg_pc)@l
    li 28, 0
.Lsg_reloc:
    cmpld 6, 7
    bge .Lsg_reloc_done
    ld 8, 0(6)
    ld 9, 8(6)
    ld 10, 16(6)
    addi 6, 6, 24
    clrldi 9, 9, 32
    cmpldi 9, 0                     # R_PPC64_NONE
    beq .Lsg_reloc
    cmpldi 9, 22                    # R_PPC64_RELATIVE
    beq .Lsg_reloc_rel
    addi 28, 28, 1
    b .Lsg_reloc
.Lsg_reloc_rel:
    add 10, 10, 29
    stdx 10, 8, 29
    b .Lsg_reloc
.Lsg_reloc_done:

    # Apply .relr.dyn (SHT_RELR): an even entry is the offset of a word to relocate, and
    # starts a run; an odd entry is a bitmap for the 63 words after the run's cursor (bit
    # n+1 set: relocate word n), and moves the cursor on by 63 words. Relocating a word
    # adds the load base to the address the linker stored in it.
    addis 6, 31, (__sg_relr_start - .Lsg_pc)@ha
    addi 6, 6, (__sg_relr_start - .Lsg_pc)@l
    addis 7, 31, (__sg_relr_end - .Lsg_pc)@ha
    addi 7, 7, (__sg_relr_end - .Lsg_pc)@l
    li 11, 0                        # r11 = cursor (image offset of the next word)
.Lsg_relr:
    cmpld 6, 7
    bge .Lsg_relr_done
    ld 8, 0(6)
    addi 6, 6, 8
    andi. 9, 8, 1
    bne .Lsg_relr_bitmap
    ldx 10, 8, 29                   # address entry: relocate the word at r8
    add 10, 10, 29
    stdx 10, 8, 29
    addi 11, 8, 8
    b .Lsg_relr
.Lsg_relr_bitmap:
    mr 12, 11                       # r12 = word for bit 1
.Lsg_relr_bit:
    srdi. 8, 8, 1
    beq .Lsg_relr_bitmap_done
    andi. 9, 8, 1
    beq .Lsg_relr_next
    ldx 10, 12, 29
    add 10, 10, 29
    stdx 10, 12, 29
.Lsg_relr_next:
    addi 12, 12, 8
    b .Lsg_relr_bit
.Lsg_relr_bitmap_done:
    addi 11, 11, 63 * 8
    b .Lsg_relr
.Lsg_relr_done:

    # Clear BSS (stacks included). The linker script aligns both ends to 4 KiB, so it is a
    # whole number of 128-byte blocks; one counted loop of 16 stores per block keeps the
    # work under TCG to one translated-block run per 128 bytes.
    addis 6, 31, (__sg_bss_start - .Lsg_pc)@ha
    addi 6, 6, (__sg_bss_start - .Lsg_pc)@l
    addis 7, 31, (__sg_bss_end - .Lsg_pc)@ha
    addi 7, 7, (__sg_bss_end - .Lsg_pc)@l
    subf. 7, 6, 7
    beq .Lsg_bss_done
    srdi 7, 7, 7
    mtctr 7
    li 0, 0
.Lsg_bss:
    std 0, 0(6)
    std 0, 8(6)
    std 0, 16(6)
    std 0, 24(6)
    std 0, 32(6)
    std 0, 40(6)
    std 0, 48(6)
    std 0, 56(6)
    std 0, 64(6)
    std 0, 72(6)
    std 0, 80(6)
    std 0, 88(6)
    std 0, 96(6)
    std 0, 104(6)
    std 0, 112(6)
    std 0, 120(6)
    addi 6, 6, 128
    bdnz .Lsg_bss
.Lsg_bss_done:

    # Stack: a null back chain ends any stack walk here.
    addis 1, 31, (__sg_stack_top - .Lsg_pc)@ha
    addi 1, 1, (__sg_stack_top - .Lsg_pc)@l
    li 0, 0
    stdu 0, -32(1)

    # sg_ppc64_start(of_entry, base, entry_tb, initrd, initrd_size, bad_relocs) -> !
    mr 3, 27
    mr 4, 29
    mr 5, 30
    mr 6, 25
    mr 7, 26
    mr 8, 28
    bl sg_ppc64_start
    nop
.Lsg_hang:
    b .Lsg_hang
