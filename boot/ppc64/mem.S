# memcpy, memmove, memset, memcmp, bcmp.
#
# The powerpc64le-unknown-linux-gnu target expects a C library to provide these and its
# compiler_builtins leaves them out, so the guest brings its own. They are assembly so that
# the compiler cannot turn their loops back into calls to themselves. Doubleword loops when
# both pointers are 8-byte aligned, bytes otherwise: simple and plenty for boot-time copies.
    .section .text.sg_mem, "ax"
    .p2align 2

# void *memmove(void *dst, const void *src, size_t n): forward unless dst lies inside src.
    .globl memmove
memmove:
    subf 7, 4, 3
    cmpld 7, 5
    bge memcpy                      # dst - src >= n (unsigned): a forward copy is safe
    add 4, 4, 5
    add 6, 3, 5
.Lsg_mm_back:
    cmpldi 5, 0
    beqlr
    lbzu 7, -1(4)
    stbu 7, -1(6)
    addi 5, 5, -1
    b .Lsg_mm_back

# void *memcpy(void *dst, const void *src, size_t n)
    .globl memcpy
memcpy:
    mr 6, 3
    or 7, 3, 4
    andi. 7, 7, 7
    bne .Lsg_mc_bytes
.Lsg_mc_dw:
    cmpldi 5, 8
    blt .Lsg_mc_bytes
    ld 7, 0(4)
    std 7, 0(6)
    addi 4, 4, 8
    addi 6, 6, 8
    addi 5, 5, -8
    b .Lsg_mc_dw
.Lsg_mc_bytes:
    cmpldi 5, 0
    beqlr
    lbz 7, 0(4)
    stb 7, 0(6)
    addi 4, 4, 1
    addi 6, 6, 1
    addi 5, 5, -1
    b .Lsg_mc_bytes

# void *memset(void *dst, int c, size_t n)
    .globl memset
memset:
    mr 6, 3
    clrldi 4, 4, 56
    rldimi 4, 4, 8, 48              # the byte in all eight byte lanes
    rldimi 4, 4, 16, 32
    rldimi 4, 4, 32, 0
    andi. 7, 6, 7
    bne .Lsg_ms_bytes
.Lsg_ms_dw:
    cmpldi 5, 8
    blt .Lsg_ms_bytes
    std 4, 0(6)
    addi 6, 6, 8
    addi 5, 5, -8
    b .Lsg_ms_dw
.Lsg_ms_bytes:
    cmpldi 5, 0
    beqlr
    stb 4, 0(6)
    addi 6, 6, 1
    addi 5, 5, -1
    b .Lsg_ms_bytes

# int memcmp(const void *a, const void *b, size_t n); bcmp only needs zero / non-zero.
    .globl memcmp
    .globl bcmp
memcmp:
bcmp:
    cmpldi 5, 0
    beq .Lsg_cmp_equal
    lbz 7, 0(3)
    lbz 8, 0(4)
    subf. 9, 8, 7
    bne .Lsg_cmp_differ
    addi 3, 3, 1
    addi 4, 4, 1
    addi 5, 5, -1
    b memcmp
.Lsg_cmp_differ:
    mr 3, 9
    blr
.Lsg_cmp_equal:
    li 3, 0
    blr

# The precompiled core/alloc of this (Linux) target keep unwinding landing pads even though
# the guest is built with panic=abort, so these two names must resolve. Nothing unwinds, so
# they are never reached; if they were, the trap ends the run with an exception record.
    .globl _Unwind_Resume
    .globl rust_eh_personality
_Unwind_Resume:
rust_eh_personality:
    trap
