//! Just enough ACPI to power an x86 machine off: find the FADT from the RSDP, read its PM1a
//! control block or (hardware-reduced ACPI, as on microvm) its sleep control register, and the
//! S5 sleep type from the DSDT's `\_S5` package. And to find the IOMMUs: [`find_table`] reads
//! any table by signature, [`dmar`] parses Intel's DMAR (VT-d units), [`viot`] the VIOT
//! (virtio-iommu and the endpoints it translates).
//!
//! Tables come from the host, so every read is bounds-checked against what the caller could map
//! and every checksum is verified. The caller supplies a `read(phys, &mut buf) -> bool` function:
//! this module never dereferences a physical address itself, which keeps it testable on the host.

pub mod dmar;
pub mod viot;

/// How to enter S5 (soft off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOff {
    /// Classic ACPI: write `(slp_typ << 10) | SLP_EN` to the 16-bit PM1a control port.
    Pm1a { port: u16, slp_typ: u8 },
    /// Hardware-reduced ACPI: write `(slp_typ << 2) | SLP_EN` to the sleep control register
    /// (I/O port or memory, per its Generic Address Structure).
    SleepControl {
        space: AddressSpace,
        address: u64,
        slp_typ: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSpace {
    Memory,
    Io,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    NoRsdp,
    BadChecksum(&'static str),
    /// A table was missing, short, or had a wrong signature.
    Missing(&'static str),
    /// Neither PM1a control nor a sleep control register is described.
    NoControl,
}

const SLEEP_EN_PM1: u16 = 1 << 13;
const SLEEP_EN_HW_REDUCED: u8 = 1 << 5;

impl PowerOff {
    /// The value to write to the control register.
    pub fn value(&self) -> u16 {
        match *self {
            PowerOff::Pm1a { slp_typ, .. } => ((slp_typ as u16 & 7) << 10) | SLEEP_EN_PM1,
            PowerOff::SleepControl { slp_typ, .. } => {
                (((slp_typ & 7) << 2) | SLEEP_EN_HW_REDUCED) as u16
            }
        }
    }
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Looks for "RSD PTR " on 16-byte boundaries in `area` (the EBDA or 0xE0000..0x100000).
/// Returns the offset of a structure whose checksum is valid.
pub fn find_rsdp(area: &[u8]) -> Option<usize> {
    (0..area.len().saturating_sub(20))
        .step_by(16)
        .find(|&o| &area[o..o + 8] == b"RSD PTR " && checksum_ok(&area[o..o + 20]))
}

/// Reads a whole table at `phys` into `buf`; checks signature, length and checksum.
fn read_table<'b>(
    read: &mut impl FnMut(u64, &mut [u8]) -> bool,
    phys: u64,
    sig: &'static [u8; 4],
    buf: &'b mut [u8],
) -> Result<&'b [u8], AcpiError> {
    let name = core::str::from_utf8(sig).unwrap_or("table");
    if buf.len() < 36 || !read(phys, &mut buf[..36]) || &buf[..4] != sig {
        return Err(AcpiError::Missing(name));
    }
    let len = u32_at(buf, 4).unwrap_or(0) as usize;
    if len < 36 || len > buf.len() || !read(phys, &mut buf[..len]) {
        return Err(AcpiError::Missing(name));
    }
    if !checksum_ok(&buf[..len]) {
        return Err(AcpiError::BadChecksum(name));
    }
    Ok(&buf[..len])
}

/// Finds the S5 sleep type in AML: `Name(_S5_, Package(){ a, b, ... })` — returns `a`.
/// Only the encodings QEMU and common firmware use are understood; anything else is `None`.
pub fn s5_sleep_type(aml: &[u8]) -> Option<u8> {
    let pos = aml.windows(4).position(|w| w == b"_S5_")?;
    let mut i = pos + 4;
    // PackageOp
    if *aml.get(i)? != 0x12 {
        return None;
    }
    i += 1;
    // PkgLength: bits 7-6 of the lead byte say how many more bytes follow.
    let lead = *aml.get(i)?;
    i += 1 + (lead >> 6) as usize;
    i += 1; // NumElements
    match *aml.get(i)? {
        0x00 => Some(0),                 // ZeroOp
        0x01 => Some(1),                 // OneOp
        0x0a => aml.get(i + 1).copied(), // BytePrefix
        b if b < 8 => Some(b),           // a raw small value
        _ => None,
    }
}

/// The root table the RSDP points to: its address, entry size and signature (XSDT when the
/// RSDP is revision 2 or later and names one, else RSDT).
fn root_table(
    rsdp_phys: u64,
    read: &mut impl FnMut(u64, &mut [u8]) -> bool,
) -> Result<(u64, usize, &'static [u8; 4]), AcpiError> {
    let mut rsdp = [0u8; 36];
    if !read(rsdp_phys, &mut rsdp[..20]) || &rsdp[..8] != b"RSD PTR " {
        return Err(AcpiError::NoRsdp);
    }
    if !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadChecksum("RSDP"));
    }
    let revision = rsdp[15];
    Ok(
        if revision >= 2 && read(rsdp_phys, &mut rsdp) && u64_at(&rsdp, 24).unwrap_or(0) != 0 {
            (u64_at(&rsdp, 24).unwrap_or(0), 8, b"XSDT")
        } else {
            (u32_at(&rsdp, 16).unwrap_or(0) as u64, 4, b"RSDT")
        },
    )
}

/// The address of the first table with signature `sig` that the root table lists.
fn table_address(
    rsdp_phys: u64,
    read: &mut impl FnMut(u64, &mut [u8]) -> bool,
    sig: &'static [u8; 4],
    scratch: &mut [u8],
) -> Result<u64, AcpiError> {
    let (root, entry_size, root_sig) = root_table(rsdp_phys, read)?;
    let root_table = read_table(read, root, root_sig, scratch)?;
    for e in root_table[36..].chunks_exact(entry_size) {
        let phys = if entry_size == 8 {
            u64_at(e, 0).unwrap_or(0)
        } else {
            u32_at(e, 0).unwrap_or(0) as u64
        };
        let mut s = [0u8; 4];
        if read(phys, &mut s) && &s == sig {
            return Ok(phys);
        }
    }
    Err(AcpiError::Missing(
        core::str::from_utf8(sig).unwrap_or("table"),
    ))
}

/// The whole table with signature `sig` (the first the root table lists), read into `buf` with
/// its signature, length and checksum checked. `Missing` when there is none or it does not fit.
pub fn find_table<'b>(
    rsdp_phys: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> bool,
    sig: &'static [u8; 4],
    buf: &'b mut [u8],
) -> Result<&'b [u8], AcpiError> {
    let phys = table_address(rsdp_phys, &mut read, sig, buf)?;
    read_table(&mut read, phys, sig, buf)
}

/// Walks RSDP → (X)RSDT → FADT (→ DSDT) and says how to power off.
/// `read(phys, buf)` fills `buf` from guest-physical memory, false when it cannot.
pub fn power_off_method(
    rsdp_phys: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> bool,
    scratch: &mut [u8],
) -> Result<PowerOff, AcpiError> {
    let fadt_phys = table_address(rsdp_phys, &mut read, b"FACP", scratch)?;
    let (dsdt_phys, pm1a, hw_reduced, sleep_ctl) = {
        let fadt = read_table(&mut read, fadt_phys, b"FACP", scratch)?;
        let dsdt32 = u32_at(fadt, 40).unwrap_or(0) as u64;
        let x_dsdt = u64_at(fadt, 140).unwrap_or(0);
        let pm1a = u32_at(fadt, 64).unwrap_or(0);
        let flags = u32_at(fadt, 112).unwrap_or(0);
        // SLEEP_CONTROL_REG: Generic Address Structure at 244 (space, width, offset, access, addr).
        let sleep_ctl = fadt
            .get(244..256)
            .map(|g| (g[0], u64_at(g, 4).unwrap_or(0)));
        (
            if x_dsdt != 0 { x_dsdt } else { dsdt32 },
            pm1a,
            flags & (1 << 20) != 0,
            sleep_ctl,
        )
    };
    // Sleep type 0 when the DSDT does not say (QEMU's piix4 and ich9 use 0 for S5).
    let slp_typ = read_table(&mut read, dsdt_phys, b"DSDT", scratch)
        .ok()
        .and_then(|d| s5_sleep_type(&d[36..]))
        .unwrap_or(0);
    if hw_reduced || pm1a == 0 {
        match sleep_ctl {
            Some((space, address)) if address != 0 && (space == 0 || space == 1) => {
                let space = if space == 0 {
                    AddressSpace::Memory
                } else {
                    AddressSpace::Io
                };
                return Ok(PowerOff::SleepControl {
                    space,
                    address,
                    slp_typ,
                });
            }
            _ if pm1a == 0 => return Err(AcpiError::NoControl),
            _ => {}
        }
    }
    if pm1a > u16::MAX as u32 {
        return Err(AcpiError::NoControl);
    }
    Ok(PowerOff::Pm1a {
        port: pm1a as u16,
        slp_typ,
    })
}

/// Host tests of the table parsers: hostile copies of a table.
#[cfg(test)]
pub(crate) fn for_each_mutation(
    table: &[u8],
    mut seed: u64,
    rounds: usize,
    mut f: impl FnMut(&[u8], &mut dyn FnMut() -> u64),
) {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..rounds {
        // One to four bytes of a copy overwritten with random values; `f` gets the copy and
        // the same random source for whatever else it varies.
        let mut m = table.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % m.len();
            m[i] = next() as u8;
        }
        f(&m, &mut next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(sig);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    struct Mem(BTreeMap<u64, Vec<u8>>);
    impl Mem {
        fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
            for (&base, bytes) in &self.0 {
                if phys >= base && phys + buf.len() as u64 <= base + bytes.len() as u64 {
                    let o = (phys - base) as usize;
                    buf.copy_from_slice(&bytes[o..o + buf.len()]);
                    return true;
                }
            }
            false
        }
    }

    fn machine(hw_reduced: bool, s5: &[u8]) -> Mem {
        let mut dsdt_body = b"\x10\x0a\\_SB_".to_vec();
        dsdt_body.extend_from_slice(b"\x08_S5_");
        dsdt_body.extend_from_slice(s5);
        let dsdt = table(b"DSDT", &dsdt_body);
        let mut fadt_body = vec![0u8; 276 - 36];
        fadt_body[40 - 36..44 - 36].copy_from_slice(&0x3000u32.to_le_bytes());
        if hw_reduced {
            fadt_body[112 - 36..116 - 36].copy_from_slice(&(1u32 << 20).to_le_bytes());
            fadt_body[244 - 36] = 1; // I/O
            fadt_body[248 - 36..256 - 36].copy_from_slice(&0x608u64.to_le_bytes());
        } else {
            fadt_body[64 - 36..68 - 36].copy_from_slice(&0x604u32.to_le_bytes());
        }
        let fadt = table(b"FACP", &fadt_body);
        let rsdt = table(b"RSDT", &[0x00, 0x20, 0, 0, 0x00, 0x21, 0, 0]);
        let apic = table(b"APIC", &[0; 8]);
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.extend_from_slice(&[0, b'B', b'O', b'C', b'H', b'S', b' ', 0]);
        rsdp.extend_from_slice(&0x1000u32.to_le_bytes());
        fix_checksum(&mut rsdp, 8);
        Mem(BTreeMap::from([
            (0xf0000, rsdp),
            (0x1000, rsdt),
            (0x2000, apic),
            (0x2100, fadt),
            (0x3000, dsdt),
        ]))
    }

    #[test]
    fn classic_pm1a() {
        let m = machine(false, b"\x12\x06\x04\x00\x00\x00\x00");
        let mut scratch = vec![0u8; 4096];
        let p = power_off_method(0xf0000, |a, b| m.read(a, b), &mut scratch).unwrap();
        assert_eq!(
            p,
            PowerOff::Pm1a {
                port: 0x604,
                slp_typ: 0
            }
        );
        assert_eq!(p.value(), 0x2000);
    }

    #[test]
    fn hardware_reduced_sleep_control() {
        let m = machine(true, b"\x12\x06\x04\x0a\x05\x0a\x05");
        let mut scratch = vec![0u8; 4096];
        let p = power_off_method(0xf0000, |a, b| m.read(a, b), &mut scratch).unwrap();
        assert_eq!(
            p,
            PowerOff::SleepControl {
                space: AddressSpace::Io,
                address: 0x608,
                slp_typ: 5
            }
        );
        assert_eq!(p.value(), (5 << 2) | (1 << 5));
    }

    #[test]
    fn broken_tables_are_errors() {
        let mut scratch = vec![0u8; 4096];
        let m = machine(false, b"\x12\x06\x04\x00");
        assert_eq!(
            power_off_method(0x5000, |a, b| m.read(a, b), &mut scratch),
            Err(AcpiError::NoRsdp)
        );
        let mut m = machine(false, b"");
        m.0.get_mut(&0x2100).unwrap()[50] ^= 0xff; // corrupt the FADT
        assert_eq!(
            power_off_method(0xf0000, |a, b| m.read(a, b), &mut scratch),
            Err(AcpiError::BadChecksum("FACP"))
        );
        let mut m = machine(false, b"");
        m.0.get_mut(&0x1000).unwrap()[4] = 0xff; // absurd RSDT length
        assert_eq!(
            power_off_method(0xf0000, |a, b| m.read(a, b), &mut scratch),
            Err(AcpiError::Missing("RSDT"))
        );
        // A DSDT without _S5 still powers off with type 0.
        let m = machine(false, b"");
        assert!(power_off_method(0xf0000, |a, b| m.read(a, b), &mut scratch).is_ok());
        // The scratch buffer bounds every table: a tiny one fails cleanly.
        let m = machine(false, b"");
        let mut tiny = vec![0u8; 40];
        assert!(power_off_method(0xf0000, |a, b| m.read(a, b), &mut tiny).is_err());
    }

    #[test]
    fn find_table_by_signature() {
        let mut m = machine(false, b"");
        let dmar = table(b"DMAR", &[47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m.0.insert(0x4000, dmar.clone());
        // Add it to the RSDT (third entry).
        let mut rsdt = table(
            b"RSDT",
            &[0x00, 0x20, 0, 0, 0x00, 0x21, 0, 0, 0x00, 0x40, 0, 0],
        );
        fix_checksum(&mut rsdt, 9);
        m.0.insert(0x1000, rsdt);
        let mut buf = vec![0u8; 4096];
        let t = find_table(0xf0000, |a, b| m.read(a, b), b"DMAR", &mut buf).unwrap();
        assert_eq!(t, &dmar[..]);
        assert_eq!(
            find_table(0xf0000, |a, b| m.read(a, b), b"VIOT", &mut buf),
            Err(AcpiError::Missing("VIOT"))
        );
        // A table larger than the buffer is missing, not a panic.
        let mut small = vec![0u8; 40];
        assert!(find_table(0xf0000, |a, b| m.read(a, b), b"DMAR", &mut small).is_err());
        // A corrupted one is a checksum error.
        m.0.get_mut(&0x4000).unwrap()[40] ^= 1;
        assert_eq!(
            find_table(0xf0000, |a, b| m.read(a, b), b"DMAR", &mut buf),
            Err(AcpiError::BadChecksum("DMAR"))
        );
    }

    #[test]
    fn s5_encodings_and_garbage() {
        assert_eq!(s5_sleep_type(b"xx_S5_\x12\x06\x04\x0a\x07"), Some(7));
        assert_eq!(s5_sleep_type(b"_S5_\x12\x46\x00\x04\x01"), Some(1));
        assert_eq!(s5_sleep_type(b"_S5_\x12"), None);
        assert_eq!(s5_sleep_type(b"_S5_\x13\x06\x04\x00"), None);
        assert_eq!(s5_sleep_type(b"_S5_\x12\xc6"), None);
        assert_eq!(s5_sleep_type(b""), None);
    }

    #[test]
    fn rsdp_scan() {
        let m = machine(false, b"");
        let mut area = vec![0u8; 0x100];
        area[0x40..0x40 + 20].copy_from_slice(&m.0[&0xf0000][..20]);
        assert_eq!(find_rsdp(&area), Some(0x40));
        area[0x41] = b'X';
        assert_eq!(find_rsdp(&area), None);
    }
}
