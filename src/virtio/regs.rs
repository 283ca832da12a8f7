//! Register windows for transports: the one trait every transport reads and writes its device
//! through, and [`MmioWindow`], the volatile memory-mapped implementation.
//!
//! A transport never touches a pointer. It holds one [`Registers`] per register block (the whole
//! virtio-mmio slot; the common, notify, ISR and device areas of a modern PCI function; the
//! legacy I/O BAR) and uses offsets relative to it. That keeps the transports portable and lets
//! host tests run them against fake register files.
//!
//! # Contract of an implementation
//!
//! * Values are little-endian on the bus (virtio-mmio, PCI and legacy virtio on these
//!   little-endian guests); the implementation converts to host order.
//! * An access outside the window, or one the window cannot perform (a misaligned MMIO access),
//!   is not performed: a read returns all ones, a write is dropped. A hostile offset can
//!   therefore never reach memory outside the window.
//! * Ordering: a write is ordered after every earlier load and store of this CPU, to memory or
//!   to devices (so a notify follows the ring stores before it, and a status write follows the
//!   queue setup before it); a read is complete before any later load or store. See
//!   [`MmioWindow`] for how each architecture gets that.

/// A window of device registers.
pub trait Registers {
    /// Bytes in the window.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read8(&mut self, offset: usize) -> u8;
    fn read16(&mut self, offset: usize) -> u16;
    fn read32(&mut self, offset: usize) -> u32;
    fn write8(&mut self, offset: usize, value: u8);
    fn write16(&mut self, offset: usize, value: u16);
    fn write32(&mut self, offset: usize, value: u32);
}

/// Whether `width` bytes at `offset` lie inside a window of `len` bytes.
pub fn in_window(offset: usize, width: usize, len: usize) -> bool {
    offset.checked_add(width).is_some_and(|end| end <= len)
}

/// Reads `width` (1, 2 or 4) bytes at `offset` as one access when `offset` is a multiple of
/// `width`, else byte by byte (device-specific config fields, which the device must accept
/// bytewise too; windows perform only naturally aligned accesses).
pub fn read_sized<R: Registers + ?Sized>(r: &mut R, offset: usize, width: usize) -> u32 {
    match width {
        1 => u32::from(r.read8(offset)),
        2 if offset.is_multiple_of(2) => u32::from(r.read16(offset)),
        4 if offset.is_multiple_of(4) => r.read32(offset),
        _ => read_bytewise(r, offset, width),
    }
}

/// Writes the low `width` (1, 2 or 4) bytes of `value` at `offset`, like [`read_sized`].
pub fn write_sized<R: Registers + ?Sized>(r: &mut R, offset: usize, width: usize, value: u32) {
    match width {
        1 => r.write8(offset, value as u8),
        2 if offset.is_multiple_of(2) => r.write16(offset, value as u16),
        4 if offset.is_multiple_of(4) => r.write32(offset, value),
        _ => write_bytewise(r, offset, width, value),
    }
}

/// Reads `width` (at most 4) bytes one at a time, little-endian.
pub fn read_bytewise<R: Registers + ?Sized>(r: &mut R, offset: usize, width: usize) -> u32 {
    (0..width.min(4)).fold(0, |acc, i| {
        acc | u32::from(r.read8(offset.wrapping_add(i))) << (8 * i)
    })
}

/// Writes the low `width` (at most 4) bytes of `value` one at a time, little-endian.
pub fn write_bytewise<R: Registers + ?Sized>(r: &mut R, offset: usize, width: usize, value: u32) {
    for i in 0..width.min(4) {
        r.write8(offset.wrapping_add(i), (value >> (8 * i)) as u8);
    }
}

/// The device-specific config accessors of [`crate::virtio::Transport`] for a transport type
/// with a method `config_window(&mut self, offset, width) -> Result<(&mut R, usize),
/// TransportError>` that checks the range and gives the window and the offset inside it.
///
/// `sized`: one access of the field's width ([`read_sized`]), as modern devices require.
/// `bytewise`: byte accesses only, as Linux does for legacy devices. Legacy config is
/// guest-endian (little-endian here), and QEMU built for a big-endian target (ppc64) returns
/// multi-byte legacy virtio-pci config reads byte-swapped to a little-endian guest
/// (`virtio_pci_config_read` loads with the target's endianness), while byte reads are exact.
macro_rules! config_accessors {
    (sized) => {
        $crate::virtio::regs::config_accessors!(
            $crate::virtio::regs::read_sized,
            $crate::virtio::regs::write_sized
        );
    };
    (bytewise) => {
        $crate::virtio::regs::config_accessors!(
            $crate::virtio::regs::read_bytewise,
            $crate::virtio::regs::write_bytewise
        );
    };
    ($read:path, $write:path) => {
        fn read_config_u8(&mut self, offset: usize) -> Result<u8, TransportError> {
            let (r, at) = self.config_window(offset, 1)?;
            Ok($read(r, at, 1) as u8)
        }
        fn read_config_u16(&mut self, offset: usize) -> Result<u16, TransportError> {
            let (r, at) = self.config_window(offset, 2)?;
            Ok($read(r, at, 2) as u16)
        }
        fn read_config_u32(&mut self, offset: usize) -> Result<u32, TransportError> {
            let (r, at) = self.config_window(offset, 4)?;
            Ok($read(r, at, 4))
        }
        fn write_config_u8(&mut self, offset: usize, value: u8) -> Result<(), TransportError> {
            let (r, at) = self.config_window(offset, 1)?;
            $write(r, at, 1, value.into());
            Ok(())
        }
        fn write_config_u16(&mut self, offset: usize, value: u16) -> Result<(), TransportError> {
            let (r, at) = self.config_window(offset, 2)?;
            $write(r, at, 2, value.into());
            Ok(())
        }
        fn write_config_u32(&mut self, offset: usize, value: u32) -> Result<(), TransportError> {
            let (r, at) = self.config_window(offset, 4)?;
            $write(r, at, 4, value);
            Ok(())
        }
    };
}
pub(crate) use config_accessors;

/// A memory-mapped register window: volatile, naturally aligned accesses of exactly the width
/// asked for (devices see the access size), little-endian.
///
/// Ordering, per architecture (what Linux `readl`/`writel` do):
/// * ppc64: `sync` before every access, so that it follows all earlier cacheable stores (ring
///   memory) and device accesses; after a load, `twi 0,r,0; isync` so that nothing later starts
///   before the value arrived.
/// * x86_64 and other targets: the stores of a CPU become visible in program order (TSO), and
///   device memory is uncached, so only the compiler must not move memory accesses across a
///   register access: a compiler fence on each side.
///
/// The window is plain data (an address and a length): it can be copied and sent, and it never
/// dereferences anything outside `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioWindow {
    base: usize,
    len: usize,
}

impl MmioWindow {
    /// # Safety
    /// `[base, base + len)` must be device registers (or memory) that this CPU can reach at
    /// those addresses for as long as the window or a copy of it is used, with no Rust
    /// references to it, and accessing any naturally aligned location in it must have no
    /// effect beyond what the device defines.
    pub unsafe fn new(base: usize, len: usize) -> Self {
        MmioWindow { base, len }
    }

    pub fn base(&self) -> usize {
        self.base
    }

    /// The sub-window of `len` bytes at `offset`, or `None` if it does not fit.
    pub fn sub(&self, offset: usize, len: usize) -> Option<MmioWindow> {
        in_window(offset, len, self.len).then(|| MmioWindow {
            base: self.base + offset,
            len,
        })
    }

    /// The address for a `width`-byte access at `offset`, if it is inside and aligned.
    fn addr(&self, offset: usize, width: usize) -> Option<usize> {
        if !in_window(offset, width, self.len) {
            return None;
        }
        let addr = self.base.checked_add(offset)?;
        addr.is_multiple_of(width).then_some(addr)
    }
}

#[cfg(target_arch = "powerpc64")]
mod order {
    use core::arch::asm;

    #[inline(always)]
    pub fn before_access() {
        // SAFETY: `sync` is a barrier instruction without other effects. Not `nomem`: it
        // also keeps the compiler from moving memory accesses across it.
        unsafe { asm!("sync", options(nostack, preserves_flags)) }
    }

    #[inline(always)]
    pub fn after_load(value: u32) {
        // SAFETY: `twi 0` never traps (TO = 0); with `isync` it makes later instructions wait
        // for the loaded value (Linux's `__do_in_*` sequence). No other effects.
        unsafe { asm!("twi 0,{0},0", "isync", in(reg) value, options(nostack, preserves_flags)) }
    }
}

#[cfg(not(target_arch = "powerpc64"))]
mod order {
    use core::sync::atomic::{Ordering, compiler_fence};

    #[inline(always)]
    pub fn before_access() {
        compiler_fence(Ordering::SeqCst);
    }

    #[inline(always)]
    pub fn after_load(_value: u32) {
        compiler_fence(Ordering::SeqCst);
    }
}

macro_rules! mmio_access {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&mut self, offset: usize) -> $t {
            let Some(addr) = self.addr(offset, size_of::<$t>()) else {
                return <$t>::MAX;
            };
            order::before_access();
            // SAFETY: inside the window and naturally aligned (checked by `addr`); `new`'s
            // contract makes the window device registers this CPU may access.
            let raw =
                unsafe { core::ptr::read_volatile(core::ptr::with_exposed_provenance::<$t>(addr)) };
            order::after_load(raw as u32);
            <$t>::from_le(raw)
        }

        fn $write(&mut self, offset: usize, value: $t) {
            let Some(addr) = self.addr(offset, size_of::<$t>()) else {
                return;
            };
            order::before_access();
            // SAFETY: as in the read.
            unsafe {
                core::ptr::write_volatile(
                    core::ptr::with_exposed_provenance_mut::<$t>(addr),
                    value.to_le(),
                )
            };
        }
    };
}

impl Registers for MmioWindow {
    fn len(&self) -> usize {
        self.len
    }

    mmio_access!(read8, write8, u8);
    mmio_access!(read16, write16, u16);
    mmio_access!(read32, write32, u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_window_over_memory() {
        let mut buf = vec![0u64; 8];
        let base = buf.as_mut_ptr().expose_provenance();
        // SAFETY: the window is the vector's 64 bytes, alive for the test, accessed only
        // through the window while it is used.
        let mut w = unsafe { MmioWindow::new(base, 64) };
        w.write32(0, 0x1122_3344);
        assert_eq!(w.read8(0), 0x44, "little-endian");
        assert_eq!(w.read16(2), 0x1122);
        w.write16(6, 0xbeef);
        w.write8(8, 0x5a);
        assert_eq!(w.read32(4), 0xbeef_0000);
        assert_eq!(w.read32(8), 0x5a);
        // Outside or misaligned: not performed.
        assert_eq!(w.read32(62), u32::MAX);
        assert_eq!(w.read32(64), u32::MAX);
        assert_eq!(w.read32(usize::MAX - 1), u32::MAX);
        assert_eq!(w.read16(1), u16::MAX);
        w.write32(61, 0xdead_beef);
        w.write32(64, 0xdead_beef);
        assert_eq!(w.read32(60), 0);
        let mut s = w.sub(8, 8).unwrap();
        assert_eq!(s.read8(0), 0x5a);
        assert_eq!(s.read8(8), u8::MAX);
        assert!(w.sub(60, 8).is_none());
        assert!(w.sub(usize::MAX, 2).is_none());
        drop(buf);
    }
}
