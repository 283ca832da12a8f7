//! The PHB IOMMUs of pseries: one TCE domain per PCI host bridge with an `ibm,dma-window`, set
//! up the first time a device behind it needs it (`secure_guest::dma::tce::TceSetup`; the table
//! logic is portable, only the hypercalls and RTAS calls are here).

use alloc::boxed::Box;
use alloc::vec::Vec;

use secure_guest::cmdline::Options;
use secure_guest::devtree::{DeviceTree, PciFunction};
use secure_guest::dma::iommu::LazyDomain;
use secure_guest::dma::tce::{PhbTce, Rtas, Target, TceCalls, TceSetup};
use secure_guest::dma::{Dma, DmaError};

use super::hcall;
use super::pci::{phb_buid, rtas_call_into};
use super::virtio::fdt_blob;

/// The TCE hypercalls.
struct Hcalls;

impl TceCalls for Hcalls {
    fn put_tce(&mut self, liobn: u64, ioba: u64, tce: u64) -> i64 {
        hcall::put_tce(liobn, ioba, tce)
    }

    unsafe fn put_tce_indirect(&mut self, liobn: u64, ioba: u64, list: u64, count: u64) -> i64 {
        // SAFETY: the caller's contract is the hypercall's.
        unsafe { hcall::put_tce_indirect(liobn, ioba, list, count) }
    }

    fn stuff_tce(&mut self, liobn: u64, ioba: u64, value: u64, count: u64) -> i64 {
        hcall::stuff_tce(liobn, ioba, value, count)
    }
}

/// RTAS through H_RTAS.
struct HRtas;

impl Rtas for HRtas {
    fn call(&mut self, token: u32, args: &[u32], rets: &mut [u32]) -> i32 {
        rtas_call_into(token, args, rets)
    }
}

/// The config address of the first function under `path` (bus << 16 | devfn << 8): the PE the
/// DDW calls name (QEMU has one PE per PHB).
fn first_config_addr(functions: &[PciFunction], path: &str) -> u32 {
    functions
        .iter()
        .find(|f| {
            f.path
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .map_or(0, |f| {
            u32::from(f.bus) << 16 | u32::from(f.device) << 11 | u32::from(f.function) << 8
        })
}

/// The index in [`iommu_domains`] of PHB `host_index` of the tree, when it has a TCE window.
pub fn domain_index(tree: &DeviceTree, host_index: usize) -> Option<usize> {
    let hosts = &tree.pci_hosts;
    hosts.get(host_index)?.has_dma_window.then(|| {
        hosts[..host_index]
            .iter()
            .filter(|h| h.has_dma_window)
            .count()
    })
}

/// One domain per PHB with an `ibm,dma-window`, in tree order. `pool` (phys, size, its bounce
/// path) on a secure guest: the domains map only the pool; otherwise they serve private memory
/// (`direct`, all RAM below the top of `ram` with DDW).
pub fn iommu_domains<'a>(
    tree: &DeviceTree,
    opts: &Options,
    ram: &'a [(u64, u64)],
    direct: &'a dyn Dma,
    pool: Option<(&'a dyn Dma, u64, u64)>,
) -> Vec<LazyDomain<'a>> {
    let blob = fdt_blob();
    let mut domains = Vec::new();
    for host in tree.pci_hosts.iter().filter(|h| h.has_dma_window) {
        let location = host.path.clone();
        let window = match host.tce_window {
            Some(Ok(w)) => w,
            Some(Err(why)) => {
                domains.push(LazyDomain::failed(location, DmaError::InvalidRequest(why)));
                continue;
            }
            None => continue,
        };
        let buid = match blob.map(|b| phb_buid(b, host)) {
            Some(Ok(b)) => b,
            _ => {
                let why = "the PHB's BUID (reg) cannot be read";
                domains.push(LazyDomain::failed(location, DmaError::InvalidRequest(why)));
                continue;
            }
        };
        let target = match pool {
            Some((bounce, phys, size)) => Target::Pool { bounce, phys, size },
            None => Target::Direct { ram, direct },
        };
        let setup = TceSetup {
            phb: PhbTce {
                window,
                ddw: host.ddw,
                buid,
                config_addr: first_config_addr(&tree.pci_functions, &host.path),
            },
            mode: opts.tce,
            batch: opts.tce_batch,
            debug: opts.debug_iommu,
            target,
            calls: Hcalls,
            rtas: HRtas,
        };
        domains.push(LazyDomain::new(location, Box::new(setup)));
    }
    domains
}
