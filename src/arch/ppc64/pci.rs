//! PCI on pseries: configuration space through RTAS, host bridge (PHB) windows and BARs.
//!
//! * Config space: `ibm,read-pci-config` / `ibm,write-pci-config` through H_RTAS, with the PHB's
//!   BUID (its `reg`) and the config address `(bus << 16) | (devfn << 8) | reg` (QEMU
//!   hw/ppc/spapr_pci.c; the plain `read-pci-config` only reaches a PHB with BUID 0, which QEMU
//!   never has).
//! * Windows: the PHB's `ranges` (I/O, 32-bit and 64-bit memory; QEMU places the first PHB's at
//!   32 TiB: I/O 0x2000_0000_0000, 32-bit 0x2000_8000_0000 (bus 0x8000_0000), 64-bit
//!   0x2100_0000_0000).
//! * BARs: SLOF assigns them (and lists them in `assigned-addresses`); VOF leaves every BAR at 0.
//!   [`Phb::assign`] keeps what firmware placed and assigns the rest (see
//!   `secure_guest::virtio::pci::assign`).
//! * Reaching a BAR: the guest runs in real mode (MSR[IR,DR] = 0). Under QEMU's pseries machine
//!   (a virtual hypervisor) a real-mode effective address is the guest physical address with
//!   the top 4 bits ignored, and the PHB windows are guest physical addresses, so a plain
//!   load or store at the window address reaches the device (checked under TCG with VOF and
//!   SLOF). Real hardware and KVM-HV would need translation on with a cache-inhibited,
//!   guarded mapping (an HPT entry with WIMG = 0101 via H_ENTER), because real-mode accesses
//!   there are cacheable and limited to the RMA.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use secure_guest::devtree::{PciFunction, PciHostNode};
use secure_guest::virtio::pci::assign::{self, Assigned, Window};
use secure_guest::virtio::pci::{Bar, BarMapper, PciAddress, PciConfigAccess, fdt};
use secure_guest::virtio::regs::MmioWindow;

use super::{BootCell, hcall};

/// RTAS argument block: token, nargs, nret, up to 13 args and rets (DDW create: 5 + 4).
static ARGS: BootCell<[u32; 16]> = BootCell::new([0; 16]);

/// RTAS status "success".
const RTAS_SUCCESS: u32 = 0;
/// RTAS status "parameter error", for a call that does not fit the block.
const RTAS_PARAMETER_ERROR: i32 = -3;

/// Runs RTAS call `token` with `inputs`, fills `outputs` with its return cells (status first)
/// and returns the status.
pub fn rtas_call_into(token: u32, inputs: &[u32], outputs: &mut [u32]) -> i32 {
    outputs.fill(u32::MAX);
    let (n, m) = (inputs.len(), outputs.len());
    if 3 + n + m > 16 || m == 0 {
        return RTAS_PARAMETER_ERROR;
    }
    let block = ARGS.get();
    // SAFETY: BootCell: only the boot CPU runs, interrupts are off and nothing else uses this
    // block, so the accesses cannot overlap. The block is in the image (below 4 GiB, real
    // address == effective address); H_RTAS reads the first 3 + n cells and writes the m after
    // them, all inside the array (checked above).
    unsafe {
        let cells = block.cast::<u32>();
        cells.write_volatile(token.to_be());
        cells.add(1).write_volatile((n as u32).to_be());
        cells.add(2).write_volatile((m as u32).to_be());
        for (i, v) in inputs.iter().enumerate() {
            cells.add(3 + i).write_volatile(v.to_be());
        }
        for i in 0..m {
            cells.add(3 + n + i).write_volatile(u32::MAX);
        }
        hcall::rtas(cells);
        for (i, o) in outputs.iter_mut().enumerate() {
            *o = u32::from_be(cells.add(3 + n + i).read_volatile());
        }
    }
    outputs[0] as i32
}

/// Runs RTAS call `token` with `inputs` and returns its return cells (status first).
fn rtas_call<const N: usize>(token: u32, inputs: &[u32]) -> [u32; N] {
    let mut out = [u32::MAX; N];
    rtas_call_into(token, inputs, &mut out);
    out
}

/// Config space of one PHB through RTAS.
pub struct RtasConfig {
    buid: u64,
    read_token: u32,
    write_token: u32,
}

impl RtasConfig {
    fn address(at: PciAddress, offset: u16) -> u32 {
        // Register bits 11..8 (extended config space) go to bits 27..24.
        u32::from(at.bus) << 16
            | u32::from(at.devfn()) << 8
            | u32::from(offset & 0xff)
            | u32::from(offset & 0xf00) << 16
    }

    fn read(&mut self, at: PciAddress, offset: u16, size: u32) -> Option<u32> {
        let [status, value] = rtas_call::<2>(
            self.read_token,
            &[
                Self::address(at, offset),
                (self.buid >> 32) as u32,
                self.buid as u32,
                size,
            ],
        );
        (status == RTAS_SUCCESS).then_some(value)
    }

    fn write(&mut self, at: PciAddress, offset: u16, size: u32, value: u32) {
        let [_status] = rtas_call::<1>(
            self.write_token,
            &[
                Self::address(at, offset),
                (self.buid >> 32) as u32,
                self.buid as u32,
                size,
                value,
            ],
        );
    }
}

impl PciConfigAccess for RtasConfig {
    fn read8(&mut self, at: PciAddress, offset: u16) -> u8 {
        self.read(at, offset, 1).map_or(u8::MAX, |v| v as u8)
    }
    fn read16(&mut self, at: PciAddress, offset: u16) -> u16 {
        self.read(at, offset, 2).map_or(u16::MAX, |v| v as u16)
    }
    fn read32(&mut self, at: PciAddress, offset: u16) -> u32 {
        self.read(at, offset, 4).unwrap_or(u32::MAX)
    }
    fn write8(&mut self, at: PciAddress, offset: u16, value: u8) {
        self.write(at, offset, 1, value.into())
    }
    fn write16(&mut self, at: PciAddress, offset: u16, value: u16) {
        self.write(at, offset, 2, value.into())
    }
    fn write32(&mut self, at: PciAddress, offset: u16, value: u32) {
        self.write(at, offset, 4, value)
    }
}

/// Maps BARs through the PHB windows: a BAR's CPU address is its window's CPU base plus its
/// offset in the window (I/O BARs too: the I/O window is memory-mapped).
pub struct PhbBars<'w> {
    windows: &'w [Window],
}

impl<'w> PhbBars<'w> {
    pub fn new(windows: &'w [Window]) -> Self {
        PhbBars { windows }
    }
}

impl BarMapper for PhbBars<'_> {
    type Regs = MmioWindow;

    fn map(
        &mut self,
        _at: PciAddress,
        bar: &Bar,
        offset: u64,
        len: u64,
    ) -> Result<MmioWindow, String> {
        let cpu = assign::bar_cpu_address(self.windows, bar).ok_or_else(|| {
            format!(
                "BAR at bus address {:#x} ({:#x} bytes) is outside the PHB windows",
                bar.addr, bar.size
            )
        })?;
        let base = cpu.checked_add(offset).ok_or("address overflow")?;
        let base = usize::try_from(base).map_err(|_| String::from("address too high"))?;
        let len = usize::try_from(len).map_err(|_| String::from("length too large"))?;
        // SAFETY: inside a PHB window (a BAR of this function, checked against the window and
        // by the caller against the BAR), reachable in real mode at its guest physical address
        // (module docs); nothing else in the guest references it.
        Ok(unsafe { MmioWindow::new(base, len) })
    }
}

/// A PHB as the device tree describes it.
pub struct Phb {
    pub config: RtasConfig,
    pub windows: Vec<Window>,
    /// Bus ranges firmware says are in use (`assigned-addresses` of its functions).
    pub reserved: Vec<(u64, u64)>,
    pub root_bus: u8,
}

/// The BUID of a PHB: its `reg` address, in the root's `#address-cells` (default 2).
pub fn phb_buid(blob: &[u8], host: &PciHostNode) -> Result<u64, String> {
    let root_ac = fdt::property_u32(blob, "/", "#address-cells").unwrap_or(2);
    let reg = fdt::property(blob, &host.path, "reg").ok_or("PHB has no reg (BUID)")?;
    match (root_ac, reg.len()) {
        (1, 4..) => Ok(u64::from(be_cells(reg).next().unwrap_or(0))),
        (2, 8..) => {
            let mut c = be_cells(reg);
            Ok(u64::from(c.next().unwrap_or(0)) << 32 | u64::from(c.next().unwrap_or(0)))
        }
        _ => Err(format!(
            "PHB reg of {} bytes with #address-cells {root_ac}",
            reg.len()
        )),
    }
}

/// Big-endian cells.
fn be_cells(v: &[u8]) -> impl Iterator<Item = u32> + '_ {
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

impl Phb {
    /// Reads BUID (`reg`), windows (`ranges`) and the `assigned-addresses` of its functions.
    pub fn from_tree(
        blob: &[u8],
        host: &PciHostNode,
        functions: &[&PciFunction],
        tokens: (u32, u32),
    ) -> Result<Phb, String> {
        // IEEE 1275: #address-cells defaults to 2, #size-cells to 1.
        let root_ac = fdt::property_u32(blob, "/", "#address-cells").unwrap_or(2);
        let size_cells = fdt::property_u32(blob, &host.path, "#size-cells").unwrap_or(1);
        let buid = phb_buid(blob, host)?;
        let ranges = fdt::property(blob, &host.path, "ranges").ok_or("PHB has no ranges")?;
        let windows = assign::parse_ranges(ranges, root_ac, size_cells).map_err(String::from)?;
        let mut reserved = Vec::new();
        for f in functions {
            let Some(aa) = fdt::property(blob, &f.path, "assigned-addresses") else {
                continue;
            };
            // phys.hi, phys.mid, phys.lo, size (2 cells): 5 cells each.
            for e in aa.chunks_exact(20) {
                let c: Vec<u32> = be_cells(e).collect();
                if (c[0] >> 24) & 3 == 0 {
                    continue; // config space
                }
                let bus = u64::from(c[1]) << 32 | u64::from(c[2]);
                let size = u64::from(c[3]) << 32 | u64::from(c[4]);
                if size != 0 && bus.checked_add(size).is_some() {
                    reserved.push((bus, size));
                }
            }
        }
        Ok(Phb {
            config: RtasConfig {
                buid,
                read_token: tokens.0,
                write_token: tokens.1,
            },
            windows,
            reserved,
            root_bus: host.bus_range.map_or(0, |(first, _)| first as u8),
        })
    }

    /// Assigns what firmware left unassigned on the root bus (functions behind bridges would
    /// need bridge windows programmed: they keep what firmware gave them).
    pub fn assign(&mut self, functions: &[PciAddress]) -> Vec<Assigned> {
        let root: Vec<PciAddress> = functions
            .iter()
            .copied()
            .filter(|a| a.bus == self.root_bus)
            .collect();
        assign::assign_bars(&mut self.config, &root, &self.windows, &self.reserved)
    }
}
