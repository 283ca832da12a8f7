//! Port I/O for device registers (legacy virtio-pci's I/O BAR, PCI config data).
//!
//! Unlike the boot-time helpers in `io.rs` these are not `nomem`: each access is also a compiler
//! barrier, so ring stores before a notify cannot be moved past it. The CPU needs nothing more:
//! loads and stores are not reordered with I/O instructions (Intel SDM 3A, 9.2.2 / 8.2.2).

use core::arch::asm;

use secure_guest::virtio::regs::{Registers, in_window};

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O touches no memory; the ports are device registers the caller chose.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nostack, preserves_flags)) }
    v
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as in `inb`.
    unsafe { asm!("in ax, dx", out("ax") v, in("dx") port, options(nostack, preserves_flags)) }
    v
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `inb`.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nostack, preserves_flags)) }
    v
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: as in `inb`.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags)) }
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `inb`.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nostack, preserves_flags)) }
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `inb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags)) }
}

/// A window of I/O ports: `[base, base + len)`, inside the 64 KiB port space.
#[derive(Clone, Copy, Debug)]
pub struct PortWindow {
    base: u16,
    len: u16,
}

impl PortWindow {
    /// `None` when the range does not fit the port space.
    pub fn new(base: u64, len: u64) -> Option<Self> {
        let end = base.checked_add(len)?;
        (end <= 0x1_0000 && len <= 0xffff).then_some(PortWindow {
            base: base as u16,
            len: len as u16,
        })
    }

    fn port(&self, offset: usize, width: usize) -> Option<u16> {
        in_window(offset, width, usize::from(self.len)).then(|| self.base + offset as u16)
    }
}

impl Registers for PortWindow {
    fn len(&self) -> usize {
        usize::from(self.len)
    }
    fn read8(&mut self, offset: usize) -> u8 {
        self.port(offset, 1).map_or(u8::MAX, inb)
    }
    fn read16(&mut self, offset: usize) -> u16 {
        self.port(offset, 2).map_or(u16::MAX, inw)
    }
    fn read32(&mut self, offset: usize) -> u32 {
        self.port(offset, 4).map_or(u32::MAX, inl)
    }
    fn write8(&mut self, offset: usize, value: u8) {
        if let Some(p) = self.port(offset, 1) {
            outb(p, value)
        }
    }
    fn write16(&mut self, offset: usize, value: u16) {
        if let Some(p) = self.port(offset, 2) {
            outw(p, value)
        }
    }
    fn write32(&mut self, offset: usize, value: u32) {
        if let Some(p) = self.port(offset, 4) {
            outl(p, value)
        }
    }
}
