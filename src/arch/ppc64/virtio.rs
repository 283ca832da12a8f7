//! virtio devices on pseries: virtio-pci functions of every PHB in the device tree (config
//! through RTAS, BARs through the PHB windows, assigned here when firmware did not), and
//! virtio-mmio nodes should a tree ever carry them.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use secure_guest::devtree::{self, DeviceTree, PciFunction};
use secure_guest::virtio::found::{FoundDevice, ProbeOptions, Skipped};
use secure_guest::virtio::mmio::VirtioMmio;
use secure_guest::virtio::pci::{self, PciAddress};
use secure_guest::virtio::regs::MmioWindow;

use super::FDT_BUF;
use super::pci::{Phb, PhbBars};

/// The flattened tree the boot made (the blob `tree` was parsed from), when it validates.
/// Checked once: the IOMMU domains and the device scan both ask, and the blob never changes.
pub fn fdt_blob() -> Option<&'static [u8]> {
    static CHECKED: spin::Once<Option<&'static [u8]>> = spin::Once::new();
    *CHECKED.call_once(|| {
        // SAFETY: FDT_BUF was written once during the firmware phase, before boot_main; from
        // then on it is only read (shared references, like BootInfo::fdt).
        let buf: &'static [u8] = unsafe { &(*FDT_BUF.get()).0 };
        let total = u32::from_be_bytes(buf.get(4..8)?.try_into().ok()?) as usize;
        let blob = buf.get(..total)?;
        devtree::validate(blob).ok()?;
        Some(blob)
    })
}

/// "00:02.0" on the first PHB; "pci@800000020000001/00:02.0" on the others.
fn location(phb_index: usize, phb_path: &str, at: PciAddress) -> String {
    if phb_index == 0 {
        at.bdf()
    } else {
        let name = phb_path.rsplit('/').next().unwrap_or(phb_path);
        String::from(name) + "/" + &at.bdf()
    }
}

/// Every virtio device: see [`virtio_devices_with`].
pub fn virtio_devices(tree: &DeviceTree) -> (Vec<FoundDevice>, Vec<Skipped>) {
    virtio_devices_with(tree, &ProbeOptions::default())
}

/// The virtio-mmio nodes, then the virtio functions of each PHB in tree order. BARs the
/// firmware left unassigned (VOF) are assigned first; devices that cannot be used are listed
/// with the reason.
pub fn virtio_devices_with(
    tree: &DeviceTree,
    options: &ProbeOptions,
) -> (Vec<FoundDevice>, Vec<Skipped>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();

    for node in &tree.virtio_mmio {
        let (Ok(base), Ok(len)) = (usize::try_from(node.base), usize::try_from(node.size)) else {
            skipped.push((node.path.clone(), String::from("address out of range")));
            continue;
        };
        // SAFETY: the device tree names this range as the device's registers; in real mode
        // it is reached at its guest physical address; nothing else references it.
        let window = unsafe { MmioWindow::new(base, len) };
        match VirtioMmio::probe(window) {
            Ok(Some(t)) => found.push(FoundDevice {
                location: node.path.clone(),
                transport: Box::new(t),
                iommu: None,
            }),
            Ok(None) => {}
            Err(e) => skipped.push((node.path.clone(), format!("{e}"))),
        }
    }

    let tokens = tree
        .rtas
        .as_ref()
        .and_then(|r| Some((r.ibm_read_pci_config?, r.ibm_write_pci_config?)));
    let blob = fdt_blob();
    for (index, host) in tree.pci_hosts.iter().enumerate() {
        let prefix = host.path.clone() + "/";
        let functions: Vec<&PciFunction> = tree
            .pci_functions
            .iter()
            .filter(|f| f.path.starts_with(&prefix))
            .collect();
        let virtio: Vec<&PciFunction> = functions
            .iter()
            .copied()
            .filter(|f| f.is_virtio())
            .collect();
        if virtio.is_empty() {
            continue;
        }
        let place = |f: &PciFunction| {
            let at = PciAddress::new(f.bus, f.device, f.function);
            (at, location(index, &host.path, at))
        };
        let phb = match (tokens, blob) {
            (None, _) => Err(String::from(
                "no RTAS ibm,read-pci-config/ibm,write-pci-config tokens",
            )),
            (_, None) => Err(String::from("the flattened device tree is not available")),
            (Some(tokens), Some(blob)) => Phb::from_tree(blob, host, &functions, tokens),
        };
        let mut phb = match phb {
            Ok(p) => p,
            Err(why) => {
                for f in virtio {
                    skipped.push((place(f).1, format!("{}: {why}", host.path)));
                }
                continue;
            }
        };
        let all: Vec<PciAddress> = functions.iter().map(|f| place(f).0).collect();
        let assigned = phb.assign(&all);
        for f in virtio {
            let (at, loc) = place(f);
            let result = pci::probe(
                &mut phb.config,
                &mut PhbBars::new(&phb.windows),
                at,
                options,
            );
            match result {
                Ok(t) => found.push(FoundDevice {
                    location: loc,
                    transport: t.into_transport(),
                    iommu: super::iommu::domain_index(tree, index),
                }),
                Err(e) => {
                    let mut why = format!("{e}");
                    if let Some(a) = assigned.iter().find(|a| a.at == at) {
                        for p in &a.problems {
                            why.push_str("; ");
                            why.push_str(p);
                        }
                    }
                    skipped.push((loc, why));
                }
            }
        }
    }
    (found, skipped)
}
