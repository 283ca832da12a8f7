//! PCI configuration mechanism #1 (ports 0xcf8/0xcfc) for q35 and pc, which have no device
//! tree: enumeration into the same typed structs a tree would give, and [`PortConfig`], the
//! config access the virtio-pci transport uses.

use super::io::{inl, outl};
use super::port;
use alloc::string::String;
use secure_guest::devtree::{DeviceTree, PciFunction, PciHostNode};
use secure_guest::virtio::pci::{PciAddress, PciConfigAccess};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

fn address(bus: u8, dev: u8, func: u8, offset: u8) -> u32 {
    0x8000_0000
        | (bus as u32) << 16
        | (dev as u32 & 0x1f) << 11
        | (func as u32 & 7) << 8
        | (offset as u32 & 0xfc)
}

pub fn read32(bus: u8, dev: u8, func: u8, offset: u8) -> u32 {
    outl(CONFIG_ADDRESS, address(bus, dev, func, offset));
    inl(CONFIG_DATA)
}

/// Configuration space through ports 0xcf8/0xcfc: the address register selects the dword, the
/// data port plus the byte offset inside it carries 8- and 16-bit accesses. Only the boot CPU
/// runs, so the address/data pair is never interleaved.
pub struct PortConfig;

impl PortConfig {
    /// Selects the dword holding `offset`; returns the data port for that byte. Offsets beyond
    /// the 256 bytes mechanism #1 reaches give `None`.
    fn select(at: PciAddress, offset: u16) -> Option<u16> {
        let off = u8::try_from(offset).ok()?;
        port::outl(CONFIG_ADDRESS, address(at.bus, at.device, at.function, off));
        Some(CONFIG_DATA + u16::from(off & 3))
    }
}

impl PciConfigAccess for PortConfig {
    fn read8(&mut self, at: PciAddress, offset: u16) -> u8 {
        Self::select(at, offset).map_or(u8::MAX, port::inb)
    }
    fn read16(&mut self, at: PciAddress, offset: u16) -> u16 {
        Self::select(at, offset & !1).map_or(u16::MAX, port::inw)
    }
    fn read32(&mut self, at: PciAddress, offset: u16) -> u32 {
        Self::select(at, offset & !3).map_or(u32::MAX, port::inl)
    }
    fn write8(&mut self, at: PciAddress, offset: u16, value: u8) {
        if let Some(p) = Self::select(at, offset) {
            port::outb(p, value)
        }
    }
    fn write16(&mut self, at: PciAddress, offset: u16, value: u16) {
        if let Some(p) = Self::select(at, offset & !1) {
            port::outw(p, value)
        }
    }
    fn write32(&mut self, at: PciAddress, offset: u16, value: u32) {
        if let Some(p) = Self::select(at, offset & !3) {
            port::outl(p, value)
        }
    }
}

/// The host bridge at 00:00.0 tells the chipset: (vendor, device).
pub fn host_bridge() -> Option<(u16, u16)> {
    let id = read32(0, 0, 0, 0);
    let vendor = id as u16;
    (vendor != 0xffff && vendor != 0).then_some((vendor, (id >> 16) as u16))
}

/// Walks bus 0 and every bus behind a PCI-to-PCI bridge (depth-first, each bus once).
pub fn enumerate(tree: &mut DeviceTree, chipset: &str) {
    tree.pci_hosts.push(PciHostNode {
        path: String::from("pci0"),
        compatible: Some(String::from(chipset)),
        bus_range: None,
        has_dma_window: false,
        tce_window: None,
        ddw: None,
    });
    let mut seen = [false; 256];
    scan_bus(tree, 0, &mut seen);
}

fn scan_bus(tree: &mut DeviceTree, bus: u8, seen: &mut [bool; 256]) {
    if core::mem::replace(&mut seen[bus as usize], true) {
        return; // a bridge that loops back: each bus is scanned once
    }
    for dev in 0..32u8 {
        let functions = if read32(bus, dev, 0, 0x0c) >> 16 & 0x80 != 0 {
            8
        } else {
            1
        };
        for func in 0..functions {
            let id = read32(bus, dev, func, 0);
            let vendor_id = id as u16;
            if vendor_id == 0xffff || vendor_id == 0 {
                continue;
            }
            let class = read32(bus, dev, func, 0x08) >> 8;
            tree.pci_functions.push(PciFunction {
                path: String::from("pci@") + &PciAddress::new(bus, dev, func).bdf(),
                bus,
                device: dev,
                function: func,
                vendor_id,
                device_id: (id >> 16) as u16,
                class,
            });
            // PCI-to-PCI bridge: follow its secondary bus.
            if class >> 8 == 0x0604 {
                let secondary = (read32(bus, dev, func, 0x18) >> 8) as u8;
                if secondary != 0 {
                    scan_bus(tree, secondary, seen);
                }
            }
        }
    }
}
