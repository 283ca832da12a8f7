# u32 sg_of_call(args, entry): one Open Firmware client-interface call.
#
# r3 = the argument block (big-endian cells: service, nargs, nret, args..., rets...), r4 = the
# client-interface entry. Both below 4 GiB. Returns OF's r3 (0 = done, -1 = failed).
#
# SLOF and VOF are big-endian firmware and VOF is 32-bit code, so they are entered the way
# Linux enters them: MSR[SF] and MSR[LE] cleared, through rfid. OF returns with blr in that
# mode, so the return point is big-endian code that restores our MSR with rfid. 32-bit code
# only saves and restores the low halves of the registers it uses, so everything that must
# survive (r2, r13-r31, CR) is saved here first. OF runs on our stack.
#
# Frame (224 bytes): 0..31 ABI header, 32 r2, 40 r13, 48..184 r14-r31, 192 CR,
# 200 MSR, 208 MSR byte-reversed (so that the big-endian return path can `ld` it as is).
    .section .text.sg_of_call, "ax"
    .globl sg_of_call
    .p2align 2
sg_of_call:
    mflr 0
    std 0, 16(1)
    stdu 1, -224(1)
    std 2, 32(1)
    std 13, 40(1)
    std 14, 48(1)
    std 15, 56(1)
    std 16, 64(1)
    std 17, 72(1)
    std 18, 80(1)
    std 19, 88(1)
    std 20, 96(1)
    std 21, 104(1)
    std 22, 112(1)
    std 23, 120(1)
    std 24, 128(1)
    std 25, 136(1)
    std 26, 144(1)
    std 27, 152(1)
    std 28, 160(1)
    std 29, 168(1)
    std 30, 176(1)
    std 31, 184(1)
    mfcr 0
    std 0, 192(1)
    mfmsr 11
    std 11, 200(1)
    addi 12, 1, 208
    stdbrx 11, 0, 12
    mtsrr0 4
    bcl 20, 31, .Lsg_of_pc
.Lsg_of_pc:
    mflr 12
    addi 12, 12, (.Lsg_of_return - .Lsg_of_pc)
    mtlr 12
    li 12, 1
    sldi 12, 12, 63
    ori 12, 12, 1
    andc 11, 11, 12                 # MSR without SF and LE: 32-bit big-endian
    mtsrr1 11
    rfid

    .p2align 2
.Lsg_of_return:
    # Big-endian, 32-bit: reload our MSR (stored byte-reversed, so it reads right) and go back.
    BE_LD 11, 208, 1
    BE_BCL_NEXT
.Lsg_of_be_pc:
    BE_MFLR 12
    BE_D 14, 12, 12, (.Lsg_of_back - .Lsg_of_be_pc)
    BE_MTSRR0 12
    BE_MTSRR1 11
    BE_RFID

.Lsg_of_back:
    clrldi 1, 1, 32                 # 32-bit code may leave junk in the top half
    ld 0, 192(1)
    mtcr 0
    ld 2, 32(1)
    ld 13, 40(1)
    ld 14, 48(1)
    ld 15, 56(1)
    ld 16, 64(1)
    ld 17, 72(1)
    ld 18, 80(1)
    ld 19, 88(1)
    ld 20, 96(1)
    ld 21, 104(1)
    ld 22, 112(1)
    ld 23, 120(1)
    ld 24, 128(1)
    ld 25, 136(1)
    ld 26, 144(1)
    ld 27, 152(1)
    ld 28, 160(1)
    ld 29, 168(1)
    ld 30, 176(1)
    ld 31, 184(1)
    addi 1, 1, 224
    ld 0, 16(1)
    mtlr 0
    clrldi 3, 3, 32
    blr
