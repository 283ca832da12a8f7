# Big-endian instruction words, for the few instructions that run while the CPU is still (or
# again) big-endian: the entry before MSR[LE] is set and the return path from Open Firmware.
# The assembler emits little-endian words, so these macros build each word from its fields and
# emit its bytes most significant first. Field layouts: Power ISA v3.1 book I, 1.6.
.macro BEWORD w
    .byte ((\w) >> 24) & 0xff, ((\w) >> 16) & 0xff, ((\w) >> 8) & 0xff, (\w) & 0xff
.endm
# D-form (addi, ori, oris, xori): opcode, RT or RS, RA, 16-bit immediate.
.macro BE_D op, rt, ra, imm
    BEWORD ((\op << 26) | (\rt << 21) | (\ra << 16) | ((\imm) & 0xffff))
.endm
# DS-form ld: RT, DS (multiple of 4), RA.
.macro BE_LD rt, ds, ra
    BEWORD ((58 << 26) | (\rt << 21) | (\ra << 16) | ((\ds) & 0xfffc))
.endm
# XFX-form with a 10-bit SPR/TBR number whose two 5-bit halves are swapped in the word.
.macro BE_XFX rt, spr, xo
    BEWORD ((31 << 26) | (\rt << 21) | (((\spr) & 0x1f) << 16) | ((((\spr) >> 5) & 0x1f) << 11) | (\xo << 1))
.endm
.macro BE_MFTB rt
    BE_XFX \rt, 268, 371
.endm
.macro BE_MFLR rt
    BE_XFX \rt, 8, 339
.endm
.macro BE_MTSRR0 rs
    BE_XFX \rs, 26, 467
.endm
.macro BE_MTSRR1 rs
    BE_XFX \rs, 27, 467
.endm
.macro BE_MFMSR rt
    BEWORD ((31 << 26) | (\rt << 21) | (83 << 1))
.endm
# or RA,RS,RB (X-form, XO 444).
.macro BE_OR ra, rs, rb
    BEWORD ((31 << 26) | (\rs << 21) | (\ra << 16) | (\rb << 11) | (444 << 1))
.endm
# rldicr RA,RS,SH,0 (MD-form, XO 1): shift left by SH keeping bits 0..0 (the top bit).
.macro BE_SLDI_TOP ra, rs, sh
    BEWORD ((30 << 26) | (\rs << 21) | (\ra << 16) | (((\sh) & 0x1f) << 11) | (1 << 2) | ((((\sh) >> 5) & 1) << 1))
.endm
# bcl 20,31,$+4: "branch always" to the next word, to read the program counter from LR.
.macro BE_BCL_NEXT
    BEWORD 0x429f0005
.endm
.macro BE_RFID
    BEWORD 0x4c000024
.endm
.macro BE_B off
    BEWORD (0x48000000 | ((\off) & 0x03fffffc))
.endm
