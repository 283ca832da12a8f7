# The first bytes of every ppc64le image (secure-guest and noop): the endian trampoline.
#
# SLOF and VOF enter the image at its first byte in big-endian mode (VOF also in 32-bit mode,
# MSR[SF]=0), with r3/r4 = initrd base/size and r5 = the Open Firmware client-interface entry.
# SG_ENDIAN_ENTRY leaves r3-r5 alone, puts the timebase at entry in r30 and continues at
# `target` in little-endian 64-bit mode with FP, VMX and VSX usable and external interrupts off.
# It clobbers r0, r11, r12, LR, SRR0 and SRR1.
#
# Word 0 is 0x48 0x00 0x00 0x38 in memory:
#   read big-endian    0x48000038 = b .+0x38       -> the big-endian switch below
#   read little-endian 0x38000048 = addi r0,0,0x48 -> harmless, falls through to word 1
# so the same image also starts correctly if something enters it little-endian already.
.macro SG_ENDIAN_ENTRY target
    BE_B 0x38
    # Entered little-endian: word 1 onwards.
    mftb 30
    b .Lsg_le_msr
    .org 0x38
    # Entered big-endian (the normal case). First thing: the timebase.
    BE_MFTB 30
    BE_MFMSR 11
    BE_D 24, 11, 11, 0xa003         # ori  r11,r11,EE|FP|RI|LE
    BE_D 26, 11, 11, 0x8000         # xori r11,r11,EE: external interrupts stay off
    BE_D 25, 11, 11, 0x0280         # oris r11,r11,(VEC|VSX)>>16
    BE_D 14, 12, 0, 1               # li   r12,1
    BE_SLDI_TOP 12, 12, 63          # sldi r12,r12,63: MSR[SF], 64-bit mode
    BE_OR 11, 11, 12                # or   r11,r11,r12
    BE_BCL_NEXT                     # LR = address of the next word
.Lsg_be_pc:
    BE_MFLR 12
    BE_D 14, 12, 12, (\target - .Lsg_be_pc)   # addi r12,r12,target-.
    BE_MTSRR0 12
    BE_MTSRR1 11
    BE_RFID                         # MSR <- r11, PC <- target: little-endian from here on

.Lsg_le_msr:
    # The same MSR change, for an entry that was little-endian already (SF/FP/VEC may be off).
    mfmsr 11
    ori 11, 11, 0xa003
    xori 11, 11, 0x8000
    oris 11, 11, 0x0280
    li 12, 1
    sldi 12, 12, 63
    or 11, 11, 12
    bcl 20, 31, .Lsg_le_pc
.Lsg_le_pc:
    mflr 12
    addi 12, 12, (\target - .Lsg_le_pc)
    mtsrr0 12
    mtsrr1 11
    rfid
.endm
