//! Virtio devices for a run: typed specs that render to the QEMU arguments of each machine.
//!
//! One [`VirtioSetup`] is a transport mode ([`Transport`]), a ring layout ([`Ring`]) and the
//! devices ([`Device`]); [`VirtioSetup::qemu_args`] gives the arguments for a machine, or why that
//! machine cannot have them (the matrix shows that as `skip`). What QEMU 10 does with them:
//!
//! | machine | transports | how |
//! |---|---|---|
//! | microvm | mmio v1, mmio v2 | `virtio-*-device`; `-global virtio-mmio.force-legacy=on` (v1) or `off` (v2) |
//! | q35 | pci modern, pci legacy | `virtio-*-pci` on `pcie.0` (root-complex integrated endpoints) |
//! | pc | pci modern, pci legacy | `virtio-*-pci` on `pci.0` |
//! | pseries | pci modern, pci legacy | `virtio-*-pci` on the default spapr PHB |
//!
//! Modern is `disable-legacy=on,disable-modern=off`, legacy `disable-legacy=off,disable-modern=on`
//! (no transitional devices: the guest must not get to choose). QEMU 10 takes both on every PCI
//! machine here. It refuses `virtio-*-device` where there is no virtio-mmio bus ("No 'virtio-bus'
//! bus found": q35, pc, pseries) and `virtio-*-pci` on microvm, whose PCIe host is off by default
//! ("No 'PCI' bus found"). `packed=on` is accepted everywhere, but a legacy transport (mmio v1,
//! pci legacy) shows the driver only feature bits 0..31, so `RING_PACKED` (bit 34) and
//! `VERSION_1` (bit 32) are never offered there: asking for packed on a legacy transport checks
//! that the guest falls back to split.
//!
//! The devices:
//! - blk: `-drive file=F,if=none,id=ID,format=raw` and `-device virtio-blk-*,drive=ID,serial=S`.
//! - net: `-netdev stream,id=ID,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=P` (QEMU
//!   connects to the harness's echo backend, [`crate::echo`]) and
//!   `-device virtio-net-*,netdev=ID,mac=M` (`romfile=` on PCI: no iPXE option ROM).
//! - console: `-device virtio-serial-*,id=ID`, `-chardev file,id=ID-port0,path=OUT,input-path=IN`
//!   and `-device virtconsole,chardev=ID-port0,bus=ID.0,nr=0`: port 0, the console port; QEMU
//!   writes what the guest sends to OUT and gives the guest the bytes of IN (once it has receive
//!   buffers posted).
//! - rng: `-device virtio-rng-*` with QEMU's default backend (rng-builtin).
//!
//! `iommu_platform=on` ([`VirtioSetup::iommu_platform`], every device) makes QEMU offer
//! `ACCESS_PLATFORM` (bit 33) and send the device's DMA through the platform's IOMMU, if the
//! machine has one for it. What QEMU 10 does with it:
//!
//! | machine, transport | QEMU 10 |
//! |---|---|
//! | microvm mmio v2 | offered; DMA to guest-physical addresses (no IOMMU) |
//! | microvm mmio v1 | accepted, never seen: a legacy device shows only bits 0..31 |
//! | q35, pc, pci modern | offered; DMA to guest-physical addresses (no IOMMU device here) |
//! | any pci legacy | refused: "VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional device" |
//! | pseries pci modern | offered, and DMA goes through the PHB's sPAPR TCE IOMMU (liobn 0x80000000, or a DDW window): the guest takes `iommu` (`iommu+bounce` when secure) and maps what the device uses; QEMU traces every access (`spapr_iommu_xlate`) for the IOMMU trace oracle ([`crate::iommu`]). |
//!
//! An IOMMU ([`Iommu`], given to the run separately, in front of the devices) makes the
//! `iommu_platform=on` devices' DMA go through it on q35 and pc:
//!
//! | [`Iommu`] | QEMU arguments | machines | the guest drives |
//! |---|---|---|---|
//! | `virtio-iommu` | `-device virtio-iommu-pci` | q35, pc | the virtio-iommu (endpoints from the ACPI VIOT), one domain per device |
//! | `vt-d` | `-device intel-iommu,intremap=off` | q35 | VT-d from the ACPI DMAR: root, context and second-level tables, one domain per device |
//!
//! QEMU refuses `intel-iommu` on pc ("Parameter 'driver' expects a dynamic sysbus device type
//! for the machine") and `virtio-iommu-pci` on microvm ("No 'PCI' bus found"); pseries has its
//! own IOMMU, the PHB's TCE tables. Interrupt remapping stays off: this guest polls, and QEMU
//! would need `kernel-irqchip=split` for it. Devices without `iommu_platform` bypass either
//! IOMMU in QEMU (their DMA uses guest-physical addresses).
//!
//! File names are used as given: the harness passes names relative to the run directory (QEMU's
//! working directory), so command lines hold no temporary paths.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use crate::config::Machine;

/// How the devices reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// virtio-mmio version 1 (legacy).
    MmioV1,
    /// virtio-mmio version 2 (virtio 1.x).
    MmioV2,
    /// virtio-pci, modern interface only.
    PciModern,
    /// virtio-pci, legacy interface only (I/O BAR).
    PciLegacy,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::MmioV1,
        Transport::MmioV2,
        Transport::PciModern,
        Transport::PciLegacy,
    ];

    /// The name the `virtio` record's `transport` uses.
    pub fn report_name(self) -> &'static str {
        match self {
            Transport::MmioV1 => "virtio-mmio-v1",
            Transport::MmioV2 => "virtio-mmio-v2",
            Transport::PciModern => "virtio-pci-modern",
            Transport::PciLegacy => "virtio-pci-legacy",
        }
    }

    /// The short name for matrix cells and options.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::MmioV1 => "mmio-v1",
            Transport::MmioV2 => "mmio-v2",
            Transport::PciModern => "pci-modern",
            Transport::PciLegacy => "pci-legacy",
        }
    }

    pub fn is_mmio(self) -> bool {
        matches!(self, Transport::MmioV1 | Transport::MmioV2)
    }

    /// Legacy (pre-1.0) interface: 32 feature bits, no `VERSION_1`, no packed ring.
    pub fn is_legacy(self) -> bool {
        matches!(self, Transport::MmioV1 | Transport::PciLegacy)
    }

    /// Whether QEMU can give `machine` this transport, and if not, why.
    pub fn supported_on(self, machine: Machine) -> std::result::Result<(), String> {
        match (machine, self.is_mmio()) {
            (Machine::Microvm, true) => Ok(()),
            (Machine::Microvm, false) => Err("microvm's PCIe host is off (pcie=off, the \
                 default): QEMU says \"No 'PCI' bus found\""
                .into()),
            (m, true) => Err(format!(
                "{m} has no virtio-mmio transports: QEMU says \"No 'virtio-bus' bus found\""
            )),
            (_, false) => Ok(()),
        }
    }

    /// The `-device` name suffix.
    fn device_suffix(self) -> &'static str {
        if self.is_mmio() { "device" } else { "pci" }
    }

    /// Properties every device of this transport gets.
    fn device_props(self) -> &'static str {
        match self {
            Transport::MmioV1 | Transport::MmioV2 => "",
            Transport::PciModern => ",disable-legacy=on,disable-modern=off",
            Transport::PciLegacy => ",disable-legacy=off,disable-modern=on",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Transport::ALL.into_iter().find(|t| t.as_str() == s) {
            Some(t) => Ok(t),
            None => bail!("unknown transport {s:?} (mmio-v1, mmio-v2, pci-modern, pci-legacy)"),
        }
    }
}

/// The virtqueue layout the host offers (`packed=on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ring {
    Split,
    Packed,
}

impl Ring {
    pub const ALL: [Ring; 2] = [Ring::Split, Ring::Packed];

    pub fn as_str(self) -> &'static str {
        match self {
            Ring::Split => "split",
            Ring::Packed => "packed",
        }
    }

    fn prop(self) -> &'static str {
        match self {
            Ring::Split => ",packed=off",
            Ring::Packed => ",packed=on",
        }
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Ring {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "split" => Ok(Ring::Split),
            "packed" => Ok(Ring::Packed),
            _ => bail!("unknown ring {s:?} (split, packed)"),
        }
    }
}

/// An IOMMU for the run: see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Iommu {
    /// `-device virtio-iommu-pci`.
    VirtioIommu,
    /// `-device intel-iommu,intremap=off`.
    Vtd,
}

impl Iommu {
    pub const ALL: [Iommu; 2] = [Iommu::VirtioIommu, Iommu::Vtd];

    /// The name the guest reports (`iommu_unit.kind`, `virtio.iommu.backend`) and options take.
    pub fn as_str(self) -> &'static str {
        match self {
            Iommu::VirtioIommu => "virtio-iommu",
            Iommu::Vtd => "vt-d",
        }
    }

    /// The QEMU arguments on `machine`, or why QEMU cannot give the machine this IOMMU. They
    /// go before the devices.
    pub fn qemu_args(self, machine: Machine) -> std::result::Result<Vec<String>, String> {
        let device = match (self, machine) {
            (_, Machine::Microvm) => {
                return Err("microvm has no PCI bus (pcie=off): no IOMMU for virtio-mmio".into());
            }
            (_, Machine::Pseries) => {
                return Err("pseries has its own IOMMU: the PHB's TCE tables".into());
            }
            (Iommu::Vtd, Machine::Pc) => {
                return Err(
                    "QEMU gives intel-iommu to q35 only: \"Parameter 'driver' expects \
                            a dynamic sysbus device type for the machine\""
                        .into(),
                );
            }
            (Iommu::VirtioIommu, _) => "virtio-iommu-pci",
            (Iommu::Vtd, _) => "intel-iommu,intremap=off",
        };
        Ok(vec!["-device".into(), device.into()])
    }
}

impl fmt::Display for Iommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Iommu {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Iommu::ALL.into_iter().find(|i| i.as_str() == s) {
            Some(i) => Ok(i),
            None => bail!("unknown IOMMU {s:?} (virtio-iommu, vt-d)"),
        }
    }
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;
    /// `52:54:00:12:34:56` (either case; `-` also separates).
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            bail!("MAC address {s:?} does not have 6 parts");
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(&parts) {
            if p.len() != 2 {
                bail!("MAC address {s:?}: part {p:?} is not two hex digits");
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| anyhow::anyhow!("MAC address {s:?}: {p:?} is not hex"))?;
        }
        Ok(Mac(m))
    }
}

/// One virtio device. Ids must be unique within a setup and be valid QEMU ids (letters, digits,
/// `-`, `_`, starting with a letter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// A raw disk image.
    Blk {
        id: String,
        /// As QEMU opens it (relative to the run directory).
        file: String,
        /// What the guest's get-id should read.
        serial: Option<String>,
    },
    /// A NIC whose backend is a TCP connection to `127.0.0.1:port` (QEMU connects).
    Net { id: String, mac: Mac, port: u16 },
    /// A virtio-serial controller with a virtconsole on port 0.
    Console {
        id: String,
        /// Where QEMU writes what the guest sends.
        output: String,
        /// What QEMU gives the guest to read; `None`: nothing.
        input: Option<String>,
    },
    /// An entropy source with QEMU's default backend.
    Rng { id: String },
}

impl Device {
    pub fn id(&self) -> &str {
        match self {
            Device::Blk { id, .. }
            | Device::Net { id, .. }
            | Device::Console { id, .. }
            | Device::Rng { id } => id,
        }
    }

    /// The `virtio` record's `device` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Blk { .. } => "blk",
            Device::Net { .. } => "net",
            Device::Console { .. } => "console",
            Device::Rng { .. } => "rng",
        }
    }
}

/// The devices of one run and how they are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioSetup {
    pub transport: Transport,
    pub ring: Ring,
    pub devices: Vec<Device>,
    /// `iommu_platform=on` on every device (see the module doc).
    pub iommu_platform: bool,
}

impl VirtioSetup {
    /// The QEMU arguments for `machine`, in order, or why the machine cannot have them.
    pub fn qemu_args(&self, machine: Machine) -> std::result::Result<Vec<String>, String> {
        self.transport.supported_on(machine)?;
        let mut ids = std::collections::BTreeSet::new();
        for d in &self.devices {
            let id = d.id();
            let valid = id.starts_with(|c: char| c.is_ascii_alphabetic())
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(format!("device id {id:?} is not a valid QEMU id"));
            }
            if !ids.insert(id) {
                return Err(format!("device id {id:?} is used twice"));
            }
        }
        let t = self.transport;
        if self.iommu_platform && t == Transport::PciLegacy {
            return Err(
                "QEMU refuses iommu_platform=on on a legacy virtio-pci device: \
                 \"VIRTIO_F_IOMMU_PLATFORM was supported by neither legacy nor transitional \
                 device\""
                    .into(),
            );
        }
        let sfx = t.device_suffix();
        let common = format!(
            "{}{}{}",
            t.device_props(),
            self.ring.prop(),
            if self.iommu_platform {
                ",iommu_platform=on"
            } else {
                ""
            }
        );
        let mut a: Vec<String> = Vec::new();
        let mut push = |args: [&str; 2]| a.extend(args.iter().map(|s| s.to_string()));
        match t {
            Transport::MmioV1 => push(["-global", "virtio-mmio.force-legacy=on"]),
            Transport::MmioV2 => push(["-global", "virtio-mmio.force-legacy=off"]),
            _ => {}
        }
        for d in &self.devices {
            match d {
                Device::Blk { id, file, serial } => {
                    push([
                        "-drive",
                        &format!("file={},if=none,id={id},format=raw", escape_opt(file)),
                    ]);
                    let serial = serial
                        .as_deref()
                        .map_or(String::new(), |s| format!(",serial={}", escape_opt(s)));
                    push([
                        "-device",
                        &format!("virtio-blk-{sfx},drive={id},id={id}-dev{serial}{common}"),
                    ]);
                }
                Device::Net { id, mac, port } => {
                    push([
                        "-netdev",
                        &format!(
                            "stream,id={id},server=off,addr.type=inet,addr.host=127.0.0.1,\
                             addr.port={port}"
                        ),
                    ]);
                    let rom = if t.is_mmio() { "" } else { ",romfile=" };
                    push([
                        "-device",
                        &format!("virtio-net-{sfx},netdev={id},id={id}-dev,mac={mac}{rom}{common}"),
                    ]);
                }
                Device::Console { id, output, input } => {
                    push(["-device", &format!("virtio-serial-{sfx},id={id}{common}")]);
                    let input = input
                        .as_deref()
                        .map_or(String::new(), |i| format!(",input-path={}", escape_opt(i)));
                    push([
                        "-chardev",
                        &format!("file,id={id}-port0,path={}{input}", escape_opt(output)),
                    ]);
                    push([
                        "-device",
                        &format!("virtconsole,chardev={id}-port0,bus={id}.0,nr=0,id={id}-port0"),
                    ]);
                }
                Device::Rng { id } => {
                    push(["-device", &format!("virtio-rng-{sfx},id={id}{common}")]);
                }
            }
        }
        Ok(a)
    }
}

/// A value inside a QEMU option list: commas are doubled.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_devices() -> Vec<Device> {
        vec![
            Device::Blk {
                id: "disk0".into(),
                file: "disk0.img".into(),
                serial: Some("sg-disk0".into()),
            },
            Device::Net {
                id: "net0".into(),
                mac: "52:54:00:53:47:01".parse().unwrap(),
                port: 4567,
            },
            Device::Console {
                id: "con".into(),
                output: "virtcon.out".into(),
                input: Some("virtcon.in".into()),
            },
            Device::Rng { id: "rng0".into() },
        ]
    }

    #[test]
    fn pci_modern_packed() {
        let s = VirtioSetup {
            transport: Transport::PciModern,
            ring: Ring::Packed,
            devices: all_devices(),
            iommu_platform: false,
        };
        for m in [Machine::Q35, Machine::Pc, Machine::Pseries] {
            let p = ",disable-legacy=on,disable-modern=off,packed=on";
            assert_eq!(
                s.qemu_args(m).unwrap().join(" "),
                format!(
                    "-drive file=disk0.img,if=none,id=disk0,format=raw \
                     -device virtio-blk-pci,drive=disk0,id=disk0-dev,serial=sg-disk0{p} \
                     -netdev stream,id=net0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=4567 \
                     -device virtio-net-pci,netdev=net0,id=net0-dev,mac=52:54:00:53:47:01,romfile={p} \
                     -device virtio-serial-pci,id=con{p} \
                     -chardev file,id=con-port0,path=virtcon.out,input-path=virtcon.in \
                     -device virtconsole,chardev=con-port0,bus=con.0,nr=0,id=con-port0 \
                     -device virtio-rng-pci,id=rng0{p}"
                )
            );
        }
        assert!(
            s.qemu_args(Machine::Microvm)
                .unwrap_err()
                .contains("No 'PCI' bus")
        );
    }

    #[test]
    fn pci_legacy_split() {
        let s = VirtioSetup {
            transport: Transport::PciLegacy,
            ring: Ring::Split,
            devices: vec![Device::Rng { id: "r".into() }],
            iommu_platform: false,
        };
        assert_eq!(
            s.qemu_args(Machine::Pc).unwrap().join(" "),
            "-device virtio-rng-pci,id=r,disable-legacy=off,disable-modern=on,packed=off"
        );
    }

    #[test]
    fn mmio_v1_and_v2() {
        for (t, legacy) in [(Transport::MmioV1, "on"), (Transport::MmioV2, "off")] {
            let s = VirtioSetup {
                transport: t,
                ring: Ring::Split,
                devices: all_devices(),
                iommu_platform: false,
            };
            let a = s.qemu_args(Machine::Microvm).unwrap().join(" ");
            assert!(
                a.starts_with(&format!(
                    "-global virtio-mmio.force-legacy={legacy} -drive "
                )),
                "{a}"
            );
            assert!(a.contains(" -device virtio-blk-device,drive=disk0,id=disk0-dev,serial=sg-disk0,packed=off "), "{a}");
            assert!(a.contains(" -device virtio-net-device,netdev=net0,id=net0-dev,mac=52:54:00:53:47:01,packed=off "), "{a}");
            assert!(
                a.contains(" -device virtio-serial-device,id=con,packed=off "),
                "{a}"
            );
            assert!(
                a.ends_with(" -device virtio-rng-device,id=rng0,packed=off"),
                "{a}"
            );
            assert!(!a.contains("romfile") && !a.contains("disable-"), "{a}");
            for m in [Machine::Q35, Machine::Pc, Machine::Pseries] {
                assert!(s.qemu_args(m).unwrap_err().contains("virtio-bus"), "{m}");
            }
        }
    }

    #[test]
    fn bad_ids_and_escaping() {
        let mut s = VirtioSetup {
            transport: Transport::PciModern,
            ring: Ring::Split,
            devices: vec![
                Device::Rng { id: "r".into() },
                Device::Rng { id: "r".into() },
            ],
            iommu_platform: false,
        };
        assert!(s.qemu_args(Machine::Q35).unwrap_err().contains("twice"));
        s.devices = vec![Device::Rng { id: "0r".into() }];
        assert!(s.qemu_args(Machine::Q35).is_err());
        s.devices = vec![Device::Blk {
            id: "d".into(),
            file: "a,b.img".into(),
            serial: None,
        }];
        let a = s.qemu_args(Machine::Q35).unwrap();
        assert_eq!(a[1], "file=a,,b.img,if=none,id=d,format=raw");
        assert!(!a[3].contains("serial"));
        s.devices = vec![Device::Console {
            id: "c".into(),
            output: "o".into(),
            input: None,
        }];
        let a = s.qemu_args(Machine::Q35).unwrap();
        assert_eq!(a[3], "file,id=c-port0,path=o");
    }

    #[test]
    fn iommu_platform() {
        let mut s = VirtioSetup {
            transport: Transport::MmioV2,
            ring: Ring::Split,
            devices: all_devices(),
            iommu_platform: true,
        };
        let a = s.qemu_args(Machine::Microvm).unwrap();
        let devices: Vec<&String> = a
            .iter()
            .filter(|x| x.starts_with("virtio-") && !x.starts_with("virtio-mmio."))
            .collect();
        assert_eq!(devices.len(), 4, "{a:?}");
        assert!(
            devices
                .iter()
                .all(|d| d.ends_with(",packed=off,iommu_platform=on")),
            "{a:?}"
        );
        assert!(
            !a.iter()
                .any(|x| x.starts_with("virtconsole") && x.contains("iommu"))
        );
        s.transport = Transport::PciModern;
        assert!(
            s.qemu_args(Machine::Q35)
                .unwrap()
                .contains(&"virtio-rng-pci,id=rng0,disable-legacy=on,disable-modern=off,packed=off,iommu_platform=on".to_string())
        );
        s.transport = Transport::PciLegacy;
        assert!(
            s.qemu_args(Machine::Pc)
                .unwrap_err()
                .contains("neither legacy")
        );
    }

    #[test]
    fn iommus() {
        assert_eq!(
            Iommu::VirtioIommu.qemu_args(Machine::Q35).unwrap(),
            ["-device", "virtio-iommu-pci"]
        );
        assert_eq!(
            Iommu::VirtioIommu.qemu_args(Machine::Pc).unwrap(),
            ["-device", "virtio-iommu-pci"]
        );
        assert_eq!(
            Iommu::Vtd.qemu_args(Machine::Q35).unwrap(),
            ["-device", "intel-iommu,intremap=off"]
        );
        assert!(
            Iommu::Vtd
                .qemu_args(Machine::Pc)
                .unwrap_err()
                .contains("q35 only")
        );
        for i in Iommu::ALL {
            assert!(i.qemu_args(Machine::Microvm).is_err());
            assert!(i.qemu_args(Machine::Pseries).is_err());
            assert_eq!(i.as_str().parse::<Iommu>().unwrap(), i);
        }
        assert!("amd-iommu".parse::<Iommu>().is_err());
    }

    #[test]
    fn names_round_trip() {
        for t in Transport::ALL {
            assert_eq!(t.as_str().parse::<Transport>().unwrap(), t);
            assert!(t.report_name().ends_with(t.as_str()));
        }
        for r in Ring::ALL {
            assert_eq!(r.as_str().parse::<Ring>().unwrap(), r);
        }
        let m: Mac = "52:54:00:AB:cd:0F".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:0ff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert!(Transport::PciLegacy.is_legacy() && Transport::MmioV1.is_legacy());
        assert!(!Transport::PciModern.is_legacy() && !Transport::MmioV2.is_legacy());
    }
}
