# memcpy, memmove, memset, memcmp, bcmp.
#
# The powerpc64le-unknown-linux-gnu target expects a C library to provide these and its
# compiler_builtins leaves them out, so the guest brings its own. They are assembly so that
# the compiler cannot turn their loops back into calls to themselves.
#
# Shape: below 16 bytes, a byte loop. Otherwise a byte head brings the destination to an
# 8-byte boundary, 64-byte blocks of doublewords follow, then single doublewords, then a byte
# tail. The source is read with doubleword loads whatever its alignment: in little-endian
# mode POWER8 and later (and QEMU TCG) load unaligned doublewords from ordinary cacheable
# memory without an alignment interrupt. Unaligned accesses to cache-inhibited storage (MMIO)
# may still raise one, so these functions are for normal RAM only; device registers go
# through volatile accesses of their natural size, never through memcpy/memset.
#
# ELFv2: only volatile registers are used (r0, r3-r12, ctr, cr0); r3 is preserved as the
# return value of memcpy/memmove/memset.
    .section .text.sg_mem, "ax"
    .p2align 4

# void *memmove(void *dst, const void *src, size_t n): forward unless dst lies inside src.
    .globl memmove
memmove:
    subf 7, 4, 3
    cmpld 7, 5
    bge memcpy                      # dst - src >= n (unsigned): a forward copy is safe
    add 4, 4, 5                     # backward: both cursors at the end
    add 6, 3, 5
    cmpldi 5, 16
    blt .Lsg_mm_bytes
    andi. 7, 6, 7                   # bytes above the last 8-aligned dst address
    beq .Lsg_mm_aligned
    subf 5, 7, 5
    mtctr 7
.Lsg_mm_head:
    lbzu 8, -1(4)
    stbu 8, -1(6)
    bdnz .Lsg_mm_head
.Lsg_mm_aligned:
    # dst > src, so every group's stores land above the source still to be read.
    srdi. 7, 5, 6
    beq .Lsg_mm_dw
    mtctr 7
.Lsg_mm_64:
    ld 7, -8(4)
    ld 8, -16(4)
    ld 9, -24(4)
    ld 10, -32(4)
    std 7, -8(6)
    std 8, -16(6)
    std 9, -24(6)
    std 10, -32(6)
    ld 7, -40(4)
    ld 8, -48(4)
    ld 9, -56(4)
    ld 10, -64(4)
    addi 4, 4, -64
    std 7, -40(6)
    std 8, -48(6)
    std 9, -56(6)
    std 10, -64(6)
    addi 6, 6, -64
    bdnz .Lsg_mm_64
    andi. 5, 5, 63
.Lsg_mm_dw:
    srdi. 7, 5, 3
    beq .Lsg_mm_bytes
    mtctr 7
.Lsg_mm_dwl:
    ldu 8, -8(4)
    stdu 8, -8(6)
    bdnz .Lsg_mm_dwl
    andi. 5, 5, 7
.Lsg_mm_bytes:
    cmpldi 5, 0
    beqlr
    mtctr 5
.Lsg_mm_b:
    lbzu 8, -1(4)
    stbu 8, -1(6)
    bdnz .Lsg_mm_b
    blr

# void *memcpy(void *dst, const void *src, size_t n)
    .globl memcpy
    .p2align 4
memcpy:
    mr 6, 3
    cmpldi 5, 16
    blt .Lsg_mc_bytes
    neg 7, 6
    andi. 7, 7, 7                   # bytes up to the next 8-aligned dst address
    beq .Lsg_mc_aligned
    subf 5, 7, 5
    mtctr 7
.Lsg_mc_head:
    lbz 8, 0(4)
    addi 4, 4, 1
    stb 8, 0(6)
    addi 6, 6, 1
    bdnz .Lsg_mc_head
.Lsg_mc_aligned:
    srdi. 7, 5, 6
    beq .Lsg_mc_dw
    mtctr 7
.Lsg_mc_64:
    ld 7, 0(4)
    ld 8, 8(4)
    ld 9, 16(4)
    ld 10, 24(4)
    std 7, 0(6)
    std 8, 8(6)
    std 9, 16(6)
    std 10, 24(6)
    ld 7, 32(4)
    ld 8, 40(4)
    ld 9, 48(4)
    ld 10, 56(4)
    addi 4, 4, 64
    std 7, 32(6)
    std 8, 40(6)
    std 9, 48(6)
    std 10, 56(6)
    addi 6, 6, 64
    bdnz .Lsg_mc_64
    andi. 5, 5, 63
.Lsg_mc_dw:
    srdi. 7, 5, 3
    beq .Lsg_mc_bytes
    mtctr 7
.Lsg_mc_dwl:
    ld 8, 0(4)
    addi 4, 4, 8
    std 8, 0(6)
    addi 6, 6, 8
    bdnz .Lsg_mc_dwl
    andi. 5, 5, 7
.Lsg_mc_bytes:
    cmpldi 5, 0
    beqlr
    mtctr 5
.Lsg_mc_b:
    lbz 8, 0(4)
    addi 4, 4, 1
    stb 8, 0(6)
    addi 6, 6, 1
    bdnz .Lsg_mc_b
    blr

# void *memset(void *dst, int c, size_t n)
    .globl memset
    .p2align 4
memset:
    mr 6, 3
    clrldi 4, 4, 56
    cmpldi 5, 16
    blt .Lsg_ms_bytes
    rldimi 4, 4, 8, 48              # the byte in all eight byte lanes
    rldimi 4, 4, 16, 32
    rldimi 4, 4, 32, 0
    neg 7, 6
    andi. 7, 7, 7
    beq .Lsg_ms_aligned
    subf 5, 7, 5
    mtctr 7
.Lsg_ms_head:
    stb 4, 0(6)
    addi 6, 6, 1
    bdnz .Lsg_ms_head
.Lsg_ms_aligned:
    srdi. 7, 5, 6
    beq .Lsg_ms_dw
    mtctr 7
.Lsg_ms_64:
    std 4, 0(6)
    std 4, 8(6)
    std 4, 16(6)
    std 4, 24(6)
    std 4, 32(6)
    std 4, 40(6)
    std 4, 48(6)
    std 4, 56(6)
    addi 6, 6, 64
    bdnz .Lsg_ms_64
    andi. 5, 5, 63
.Lsg_ms_dw:
    srdi. 7, 5, 3
    beq .Lsg_ms_bytes
    mtctr 7
.Lsg_ms_dwl:
    std 4, 0(6)
    addi 6, 6, 8
    bdnz .Lsg_ms_dwl
    andi. 5, 5, 7
.Lsg_ms_bytes:
    cmpldi 5, 0
    beqlr
    mtctr 5
.Lsg_ms_b:
    stb 4, 0(6)
    addi 6, 6, 1
    bdnz .Lsg_ms_b
    blr

# int memcmp(const void *a, const void *b, size_t n); bcmp only needs zero / non-zero.
# Doublewords while they are equal; the first unequal doubleword, and the tail, are settled
# byte by byte, so the result is the difference of the first differing bytes (unsigned).
    .globl memcmp
    .globl bcmp
    .p2align 4
memcmp:
bcmp:
    srdi. 7, 5, 3
    beq .Lsg_cmp_bytes
    mtctr 7
.Lsg_cmp_dw:
    ld 7, 0(3)
    ld 8, 0(4)
    cmpld 7, 8
    bne .Lsg_cmp_last8
    addi 3, 3, 8
    addi 4, 4, 8
    bdnz .Lsg_cmp_dw
    andi. 5, 5, 7
    b .Lsg_cmp_bytes
.Lsg_cmp_last8:
    li 5, 8                         # the difference is within these eight bytes
.Lsg_cmp_bytes:
    cmpldi 5, 0
    beq .Lsg_cmp_equal
    mtctr 5
.Lsg_cmp_b:
    lbz 7, 0(3)
    lbz 8, 0(4)
    subf. 9, 8, 7
    bne .Lsg_cmp_differ
    addi 3, 3, 1
    addi 4, 4, 1
    bdnz .Lsg_cmp_b
.Lsg_cmp_equal:
    li 3, 0
    blr
.Lsg_cmp_differ:
    mr 3, 9
    blr

# The precompiled core/alloc of this (Linux) target keep unwinding landing pads even though
# the guest is built with panic=abort, so these two names must resolve. Nothing unwinds, so
# they are never reached; if they were, the trap ends the run with an exception record.
    .globl _Unwind_Resume
    .globl rust_eh_personality
_Unwind_Resume:
rust_eh_personality:
    trap
