//! x86 port I/O.

use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust; the ports used are QEMU's
    // standard PC devices (COM1, PIT, PCI config, fw_cfg, ACPI, debug exit).
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `outb`. (fw_cfg DMA reads memory we own and pass by address; the
    // caller orders that with a fence.)
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; no memory or stack effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}
