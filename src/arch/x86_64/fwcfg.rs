//! QEMU's fw_cfg interface on I/O ports 0x510/0x511 (and DMA at 0x514): CPU count and files
//! such as `etc/fdt` (microvm's device tree).

use super::io::{inb, outl, outw};
use core::sync::atomic::{Ordering, fence};

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const DMA_HIGH: u16 = 0x514;
const DMA_LOW: u16 = 0x518;

const SEL_SIGNATURE: u16 = 0x00;
const SEL_ID: u16 = 0x01;
const SEL_NB_CPUS: u16 = 0x05;
const SEL_FILE_DIR: u16 = 0x19;

const DMA_CTL_ERROR: u32 = 0x01;
const DMA_CTL_READ: u32 = 0x02;
const DMA_CTL_SELECT: u32 = 0x08;

pub struct FwCfg {
    dma: bool,
}

#[repr(C, align(16))]
struct DmaAccess {
    control: u32,
    length: u32,
    address: u64,
}

impl FwCfg {
    /// Finds fw_cfg by its "QEMU" signature.
    pub fn probe() -> Option<FwCfg> {
        outw(SELECTOR, SEL_SIGNATURE);
        let mut sig = [0u8; 4];
        for b in &mut sig {
            *b = inb(DATA);
        }
        if &sig != b"QEMU" {
            return None;
        }
        let mut id = [0u8; 4];
        let mut f = FwCfg { dma: false };
        f.read(SEL_ID, &mut id);
        f.dma = u32::from_le_bytes(id) & 2 != 0;
        Some(f)
    }

    /// Reads `buf.len()` bytes of item `selector` from its start.
    pub fn read(&self, selector: u16, buf: &mut [u8]) {
        if self.dma && !buf.is_empty() {
            let mut access = DmaAccess {
                control: ((selector as u32) << 16 | DMA_CTL_SELECT | DMA_CTL_READ).to_be(),
                length: (buf.len() as u32).to_be(),
                address: (buf.as_mut_ptr() as u64).to_be(),
            };
            let addr = &mut access as *mut DmaAccess as u64;
            // The device reads the descriptor and writes `buf` behind the compiler's back.
            fence(Ordering::SeqCst);
            // The DMA address registers are big-endian: the port swaps what `outl` writes.
            outl(DMA_HIGH, ((addr >> 32) as u32).swap_bytes());
            outl(DMA_LOW, (addr as u32).swap_bytes());
            // QEMU completes the transfer synchronously; poll a bounded number of times anyway.
            for _ in 0..1_000_000 {
                // SAFETY: `access` is a live local; the volatile read observes the device's write.
                let ctl = u32::from_be(unsafe { core::ptr::read_volatile(&access.control) });
                if ctl & !DMA_CTL_ERROR == 0 {
                    break;
                }
            }
            fence(Ordering::SeqCst);
            return;
        }
        outw(SELECTOR, selector);
        for b in buf {
            *b = inb(DATA);
        }
    }

    pub fn cpus(&self) -> u32 {
        let mut v = [0u8; 2];
        self.read(SEL_NB_CPUS, &mut v);
        u16::from_le_bytes(v) as u32
    }

    /// Looks up a file by name: (selector, size).
    pub fn find_file(&self, name: &str) -> Option<(u16, u32)> {
        let mut count = [0u8; 4];
        outw(SELECTOR, SEL_FILE_DIR);
        for b in &mut count {
            *b = inb(DATA);
        }
        // Entries follow the count in the same item: size(be32) select(be16) reserved(be16)
        // name[56]. Read them with the byte port, continuing the same selection.
        let count = u32::from_be_bytes(count).min(4096);
        for _ in 0..count {
            let mut e = [0u8; 64];
            for b in &mut e {
                *b = inb(DATA);
            }
            let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let sel = u16::from_be_bytes([e[4], e[5]]);
            let n = &e[8..];
            let len = n.iter().position(|&c| c == 0).unwrap_or(n.len());
            if &n[..len] == name.as_bytes() {
                return Some((sel, size));
            }
        }
        None
    }
}
