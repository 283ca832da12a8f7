# Exception vectors.
#
# sg_vec_stub is a template that the Rust side copies to each real-mode vector address
# (0x100, 0x200, ...) and patches: the `li r13,0` gets the vector number. Interrupts arrive in
# real mode, little-endian (LPCR[ILE], set with H_SET_MODE), with FP/VMX/VSX off. The stub
# cannot reach the image with a relative branch (the image is wherever QEMU loaded it), so it
# loads the address of sg_vec_common from the doubleword at physical 0x60, which the Rust
# side fills in, and branches there. Nothing returns: every interrupt is fatal.
    .section .text.sg_vectors, "ax"
    .globl sg_vec_stub
    .globl sg_vec_stub_end
    .p2align 2
sg_vec_stub:
    mtsprg 1, 13
    mtsprg 2, 12
    li 13, 0                        # patched: the vector
    ld 12, 0x60(0)
    mtctr 12
    bctr
sg_vec_stub_end:

# r13 = vector. Collects SRR0/SRR1/DAR/DSISR, turns FP/VMX/VSX back on for compiled code,
# switches to the exception stack and calls sg_ppc64_exception(vector, srr0, srr1, dar, dsisr).
    .globl sg_vec_common
    .p2align 2
sg_vec_common:
    mr 3, 13
    mfsrr0 4
    mfsrr1 5
    mfspr 6, 19                     # DAR
    mfspr 7, 18                     # DSISR
    mfmsr 11
    ori 11, 11, 0x2002              # FP | RI
    oris 11, 11, 0x0280             # VEC | VSX
    mtmsrd 11, 0
    isync
    bcl 20, 31, .Lsg_vec_pc
.Lsg_vec_pc:
    mflr 12
    addis 1, 12, (__sg_exc_stack_top - .Lsg_vec_pc)@ha
    addi 1, 1, (__sg_exc_stack_top - .Lsg_vec_pc)@l
    li 0, 0
    stdu 0, -32(1)
    addis 2, 12, (.TOC. - .Lsg_vec_pc)@ha
    addi 2, 2, (.TOC. - .Lsg_vec_pc)@l
    bl sg_ppc64_exception
    nop
.Lsg_vec_hang:
    b .Lsg_vec_hang
