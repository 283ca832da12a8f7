//! Parsing real device trees (QEMU's own, see testdata/README.md) and trees built with the
//! writer, value by value. Hostile inputs are in `tests_hostile`.

use super::writer::{FdtWriter, WriteError};
use super::*;

pub(super) const PSERIES_VOF: &[u8] = include_bytes!("testdata/pseries-vof.dtb");
pub(super) const PSERIES_SLOF: &[u8] = include_bytes!("testdata/pseries-slof.dtb");
pub(super) const PSERIES_SMT: &[u8] = include_bytes!("testdata/pseries-smt.dtb");
pub(super) const MICROVM: &[u8] = include_bytes!("testdata/microvm.dtb");
pub(super) const MICROVM_VIRTIO: &[u8] = include_bytes!("testdata/microvm-virtio.dtb");
pub(super) const CRAFTED: &[u8] = include_bytes!("testdata/crafted.dtb");

pub(super) const FIXTURES: &[(&str, &[u8])] = &[
    ("pseries-vof", PSERIES_VOF),
    ("pseries-slof", PSERIES_SLOF),
    ("pseries-smt", PSERIES_SMT),
    ("microvm", MICROVM),
    ("microvm-virtio", MICROVM_VIRTIO),
    ("crafted", CRAFTED),
];

pub(super) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

pub(super) fn set_be32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Offsets of every token of a *valid* blob's structure block, FDT_END last.
pub(super) fn token_offsets(blob: &[u8]) -> Vec<usize> {
    let mut pos = be32(blob, 8) as usize;
    let mut out = Vec::new();
    loop {
        out.push(pos);
        match be32(blob, pos) {
            1 => {
                let name = blob[pos + 4..].iter().position(|&b| b == 0).unwrap();
                pos = align4(pos + 4 + name + 1);
            }
            2 | 4 => pos += 4,
            3 => pos = align4(pos + 12 + be32(blob, pos + 4) as usize),
            9 => return out,
            t => panic!("token {t} at {pos}"),
        }
    }
}

/// Whether `blob` is a v17+ blob laid out header, reserve map, structure, strings (as QEMU and
/// dtc write them), which `with_structure` can rewrite.
pub(super) fn is_ordered_v17(blob: &[u8]) -> bool {
    let f = |i: usize| be32(blob, i * 4) as usize;
    f(5) >= 17 && f(4) < f(2) && f(2) + f(9) <= f(3)
}

/// `blob` (laid out header, reserve map, structure, strings, as QEMU and dtc write them) with
/// its structure block replaced and the header fixed up to match.
pub(super) fn with_structure(blob: &[u8], structure: &[u8]) -> Vec<u8> {
    let off_struct = be32(blob, 8) as usize;
    let off_strings = be32(blob, 12) as usize;
    let strings = &blob[off_strings..off_strings + be32(blob, 32) as usize];
    assert!(
        off_strings >= off_struct + be32(blob, 36) as usize,
        "strings after structure"
    );
    let mut out = blob[..off_struct].to_vec();
    out.extend_from_slice(structure);
    let new_strings = out.len();
    out.extend_from_slice(strings);
    let total = out.len() as u32;
    set_be32(&mut out, 4, total);
    set_be32(&mut out, 12, new_strings as u32);
    set_be32(&mut out, 36, structure.len() as u32);
    out
}

/// The same blob with a NOP before every token (FDT_END included).
pub(super) fn with_nops_everywhere(blob: &[u8]) -> Vec<u8> {
    let tokens = token_offsets(blob);
    let end = *tokens.last().unwrap() + 4;
    let mut s = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).copied().unwrap_or(end);
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(&blob[t..next]);
    }
    with_structure(blob, &s)
}

type W<'w, 'b> = &'w mut FdtWriter<'b>;

/// A tree built with the writer: a root with #address-cells = #size-cells = 2, then `body`.
pub(super) fn tree(body: impl FnOnce(W) -> Result<(), WriteError>) -> Vec<u8> {
    tree_with(&[], |w| {
        w.begin_node(b"")?;
        w.property_u32(b"#address-cells", 2)?;
        w.property_u32(b"#size-cells", 2)?;
        body(w)?;
        w.end_node()
    })
}

/// A tree built with the writer from scratch (`body` opens and closes the root itself).
pub(super) fn tree_with(
    rsv: &[(u64, u64)],
    body: impl FnOnce(W) -> Result<(), WriteError>,
) -> Vec<u8> {
    let mut buf = vec![0u8; 4 << 20];
    let mut strings = vec![0u8; 1 << 16];
    let mut w = FdtWriter::new(&mut buf, &mut strings, rsv).unwrap();
    body(&mut w).unwrap();
    w.finish(0).unwrap().to_vec()
}

/// The reason of a BadStructure error (the test fails on anything else).
pub(super) fn why(r: Result<DeviceTree, DtError>) -> &'static str {
    match r {
        Err(DtError::BadStructure { why, .. }) => why,
        other => panic!("expected BadStructure, got {other:?}"),
    }
}

fn node(
    w: W,
    name: &str,
    body: impl FnOnce(W) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    w.begin_node(name.as_bytes())?;
    body(w)?;
    w.end_node()
}

fn rtas_all(power_off: u32) -> Option<RtasTokens> {
    Some(RtasTokens {
        power_off: Some(power_off),
        read_pci_config: Some(0x2014),
        write_pci_config: Some(0x2015),
        ibm_read_pci_config: Some(0x2016),
        ibm_write_pci_config: Some(0x2017),
    })
}

fn qemu_phb() -> PciHostNode {
    PciHostNode {
        path: "/pci@800000020000000".into(),
        compatible: Some("IBM,Logical_PHB".into()),
        bus_range: Some((0, 255)),
        has_dma_window: true,
        tce_window: Some(Ok(TceWindow {
            liobn: 0x8000_0000,
            base: 0,
            size: 1 << 30,
        })),
        // QEMU 10: query, create, remove; two extensions: reset, 64-bit query.
        ddw: Some(Ok(DdwTokens {
            query: 0x2026,
            create: 0x2027,
            remove: 0x2028,
            reset: Some(0x2029),
            query_64bit: true,
        })),
    }
}

fn qemu_vty() -> Option<HvTerm> {
    Some(HvTerm {
        path: "/vdevice/vty@71000000".into(),
        termno: 0x7100_0000,
    })
}

// ---- QEMU's trees ----------------------------------------------------------------------------

#[test]
fn pseries_vof_matches_the_qemu_configuration() {
    // -M pseries,x-vof=on -m 512M -smp 2 -nodefaults -serial null -device virtio-rng-pci
    let t = parse(PSERIES_VOF).unwrap();
    let want = DeviceTree {
        nodes: 17,
        total_size: PSERIES_VOF.len() as u32,
        model: Some("IBM pSeries (emulated by qemu)".into()),
        memory: vec![(0, 512 << 20)],
        reserved: vec![],
        cpus: 2,
        timebase_hz: Some(512_000_000),
        bootargs: None,
        stdout_path: Some("/vdevice/vty@71000000".into()),
        hvterm: qemu_vty(),
        rtas: rtas_all(0x2003),
        ultravisor: false,
        virtio_mmio: vec![],
        pci_hosts: vec![qemu_phb()],
        pci_functions: vec![PciFunction {
            path: "/pci@800000020000000/legacy-device@0".into(),
            bus: 0,
            device: 0,
            function: 0,
            vendor_id: 0x1af4,
            device_id: 0x1005,
            class: 0x00ff00,
        }],
    };
    assert_eq!(t, want);
    assert!(t.pci_functions[0].is_virtio());
}

#[test]
fn pseries_slof_matches_the_qemu_configuration() {
    // -M pseries -m 512M -smp 2 -nodefaults -serial null
    let t = parse(PSERIES_SLOF).unwrap();
    assert_eq!(t.nodes, 16);
    assert_eq!(t.total_size as usize, PSERIES_SLOF.len());
    assert_eq!(t.model.as_deref(), Some("IBM pSeries (emulated by qemu)"));
    assert_eq!(t.memory, [(0, 512 << 20)]);
    assert_eq!(t.cpus, 2);
    assert_eq!(t.timebase_hz, Some(512_000_000));
    assert_eq!(t.stdout_path.as_deref(), Some("/vdevice/vty@71000000"));
    assert_eq!(t.hvterm, qemu_vty());
    assert_eq!(t.rtas, rtas_all(0x2003));
    assert_eq!(t.pci_hosts, [qemu_phb()]);
    assert!(t.pci_functions.is_empty() && t.virtio_mmio.is_empty() && t.reserved.is_empty());
    assert!(!t.ultravisor);
}

#[test]
fn pseries_smt_counts_threads_not_cores() {
    // -smp 4,cores=2,threads=2: two cpu nodes, each with ibm,ppc-interrupt-server#s = <n n+1>.
    let t = parse(PSERIES_SMT).unwrap();
    assert_eq!(t.cpus, 4);
    assert_eq!(t.memory, [(0, 1 << 30)]);
    assert_eq!(t.timebase_hz, Some(512_000_000));
    assert_eq!(t.hvterm, qemu_vty());
}

#[test]
fn microvm_plain() {
    // -M microvm -m 256M -smp 2 -nodefaults: no cpus, memory or console in this tree (QEMU
    // gives those to firmware through other fw_cfg files).
    let t = parse(MICROVM).unwrap();
    let want = DeviceTree {
        nodes: 5,
        total_size: MICROVM.len() as u32,
        model: Some("linux,microvm".into()),
        ..DeviceTree::default()
    };
    assert_eq!(t, want);
}

#[test]
fn microvm_virtio_mmio_and_pcie() {
    // -M microvm,pcie=on ... -serial null, virtio-blk-device, virtio-rng-device,
    // virtio-blk-device: QEMU hands out transports from the top, 512 bytes each.
    let t = parse(MICROVM_VIRTIO).unwrap();
    let virtio = |base: u64, irq| VirtioMmioNode {
        path: format!("/virtio_mmio@{base:x}"),
        base,
        size: 0x200,
        irq: Some(irq),
    };
    assert_eq!(
        t.virtio_mmio,
        [
            virtio(0xfeb0_2a00, 0x15),
            virtio(0xfeb0_2c00, 0x16),
            virtio(0xfeb0_2e00, 0x17)
        ]
    );
    assert_eq!(
        t.pci_hosts,
        [PciHostNode {
            path: "/pcie@c0000000".into(),
            compatible: Some("pci-host-ecam-generic".into()),
            bus_range: Some((0, 255)),
            has_dma_window: false,
            tce_window: None,
            ddw: None,
        }]
    );
    assert_eq!(t.stdout_path.as_deref(), Some("/serial@3f8"));
    assert_eq!(t.hvterm, None);
    assert_eq!(t.rtas, None);
    assert_eq!(t.nodes, 10);
}

/// testdata/crafted.dts, value by value.
fn crafted_expected() -> DeviceTree {
    let f = |path: &str, bus, device, function, vendor_id, device_id, class| PciFunction {
        path: path.into(),
        bus,
        device,
        function,
        vendor_id,
        device_id,
        class,
    };
    DeviceTree {
        nodes: 25,
        total_size: CRAFTED.len() as u32,
        model: Some("sg,crafted".into()),
        memory: vec![(0, 1 << 30), (1 << 32, 2 << 30), (8 << 30, 256 << 20)],
        reserved: vec![
            (0x10000, 0x2000),
            (0x7fff_0000, 0x10000),
            (0x3f00_0000, 0x10_0000),
        ],
        cpus: 4,
        timebase_hz: Some(1 << 32),
        bootargs: Some(b"sg.debug.panic=0 quiet".to_vec()),
        stdout_path: Some("/vdevice/vty@30000001".into()),
        hvterm: Some(HvTerm {
            path: "/vdevice/vty@30000001".into(),
            termno: 0x3000_0001,
        }),
        rtas: Some(RtasTokens {
            power_off: Some(0x10),
            read_pci_config: Some(0x11),
            write_pci_config: Some(0x12),
            ibm_read_pci_config: Some(0x13),
            ibm_write_pci_config: Some(0x14),
        }),
        ultravisor: true,
        virtio_mmio: vec![
            VirtioMmioNode {
                path: "/soc/virtio_mmio@1000".into(),
                base: 0x1_0000_1000,
                size: 0x200,
                irq: Some(7),
            },
            VirtioMmioNode {
                path: "/soc/virtio_mmio@2000".into(),
                base: 0x1_0000_2000,
                size: 0x200,
                irq: None,
            },
        ],
        pci_hosts: vec![PciHostNode {
            path: "/pci@80000000".into(),
            compatible: Some("sg,test-phb".into()),
            bus_range: Some((0, 4)),
            has_dma_window: true,
            // No ibm,#dma-*-cells: 2 and 2.
            tce_window: Some(Ok(TceWindow {
                liobn: 0x8000_0000,
                base: 0,
                size: 1 << 30,
            })),
            ddw: None,
        }],
        pci_functions: vec![
            f(
                "/pci@80000000/ethernet@1",
                0,
                1,
                0,
                0x1af4,
                0x1041,
                0x020000,
            ),
            f("/pci@80000000/pci@2", 0, 2, 0, 0x1b36, 0x0001, 0x060400),
            f(
                "/pci@80000000/pci@2/storage@3,5",
                1,
                3,
                5,
                0x1af4,
                0x1001,
                0x010000,
            ),
        ],
    }
}

#[test]
fn crafted_tree_every_field() {
    assert_eq!(parse(CRAFTED).unwrap(), crafted_expected());
}

#[test]
fn crafted_dts_compiles_to_the_same_tree() {
    // The checked-in .dtb is what dtc makes of the .dts next to it.
    let dts = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/devtree/testdata/crafted.dts"
    );
    let out = match std::process::Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", dts])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("dtc not available ({e}): skipped");
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = crafted_expected();
    want.total_size = out.stdout.len() as u32;
    assert_eq!(parse(&out.stdout).unwrap(), want);
}

#[test]
fn node_counts_agree_with_the_fdt_crate() {
    for (name, blob) in FIXTURES {
        let fdt = fdt::Fdt::new(blob).unwrap();
        assert_eq!(
            validate(blob).unwrap() as usize,
            fdt.all_nodes().count(),
            "{name}"
        );
    }
}

#[test]
fn nops_everywhere_change_nothing() {
    for (name, blob) in FIXTURES {
        let nopped = with_nops_everywhere(blob);
        let mut want = parse(blob).unwrap();
        want.total_size = nopped.len() as u32;
        assert_eq!(parse(&nopped).unwrap(), want, "{name}");
    }
}

#[test]
fn error_offsets_point_at_the_node_even_through_nops() {
    // An RTAS token of two cells: the error names /rtas's FDT_BEGIN_NODE, in the blob given.
    let blob = tree(|w| node(w, "rtas", |w| w.property_cells(b"power-off", &[1, 2])));
    let nopped = with_nops_everywhere(&blob);
    for b in [&blob, &nopped] {
        let Err(DtError::BadStructure { offset, why }) = parse(b) else {
            panic!()
        };
        assert_eq!(why, "RTAS token is not one cell");
        assert_eq!(be32(b, offset), 1, "FDT_BEGIN_NODE");
        assert_eq!(&b[offset + 4..offset + 9], b"rtas\0");
    }
}

#[test]
fn version_16_header_is_accepted() {
    // v16 has no size_dt_struct: the walk finds the end; garbage in that field is ignored.
    for (name, blob) in FIXTURES {
        let mut v16 = blob.to_vec();
        set_be32(&mut v16, 20, 16);
        set_be32(&mut v16, 24, 16);
        set_be32(&mut v16, 36, 0xdead_beef);
        assert_eq!(parse(&v16), parse(blob), "{name}");
    }
}

#[test]
fn newer_versions_compatible_with_17_are_accepted() {
    let mut b = PSERIES_VOF.to_vec();
    set_be32(&mut b, 20, 20);
    assert_eq!(parse(&b), parse(PSERIES_VOF));
    // Bytes after totalsize are not part of the tree.
    let mut padded = PSERIES_VOF.to_vec();
    padded.extend_from_slice(&[0xff; 100]);
    assert_eq!(parse(&padded), parse(PSERIES_VOF));
}

// ---- Trees built with the writer: one feature at a time --------------------------------------

#[test]
fn model_falls_back_to_compatible() {
    let t = parse(&tree(|w| w.property(b"compatible", b"a,b\0c,d\0"))).unwrap();
    assert_eq!(t.model.as_deref(), Some("a,b"));
    let t = parse(&tree(|w| {
        w.property(b"model", b"\0")?;
        w.property(b"compatible", b"\0\0x,y\0")
    }))
    .unwrap();
    assert_eq!(t.model.as_deref(), Some("x,y"));
    assert_eq!(parse(&tree(|_| Ok(()))).unwrap().model, None);
    // Not UTF-8: kept, lossily.
    let t = parse(&tree(|w| w.property(b"model", b"IBM \xff\0"))).unwrap();
    assert_eq!(t.model.as_deref(), Some("IBM \u{fffd}"));
}

#[test]
fn memory_nodes_use_their_parent_cells() {
    let t = parse(&tree(|w| {
        node(w, "memory@0", |w| {
            w.property_str(b"device_type", "memory")?;
            w.property_cells(
                b"reg",
                &[0, 0, 0, 0x1000, 0, 0x10_0000, 0, 0, 1, 0, 0, 0x2000],
            )
        })?;
        node(w, "bus", |w| {
            w.property_u32(b"#address-cells", 1)?;
            w.property_u32(b"#size-cells", 1)?;
            node(w, "memory@8000", |w| {
                w.property_str(b"device_type", "memory")?;
                w.property_cells(b"reg", &[0x8000, 0x100])
            })
        })?;
        // No device_type: not memory.
        node(w, "memory@9000", |w| {
            w.property_cells(b"reg", &[0, 0x9000, 0, 0x100])
        })
    }))
    .unwrap();
    assert_eq!(t.memory, [(0, 0x1000), (1 << 32, 0x2000), (0x8000, 0x100)]);
}

#[test]
fn memory_reg_errors() {
    let mem = |cells: Vec<(&'static [u8], u32)>, reg: Vec<u32>| {
        parse(&tree_with(&[], |w| {
            w.begin_node(b"")?;
            for (name, v) in &cells {
                w.property_u32(name, *v)?;
            }
            node(w, "memory", |w| {
                w.property_str(b"device_type", "memory")?;
                w.property_cells(b"reg", &reg)
            })?;
            w.end_node()
        }))
    };
    let ac = |n| (&b"#address-cells"[..], n);
    let sc = |n| (&b"#size-cells"[..], n);
    let cells_err = "reg needs 1 or 2 address cells and 1 or 2 size cells in its bus";
    assert_eq!(why(mem(vec![ac(0), sc(2)], vec![0, 0x1000])), cells_err);
    assert_eq!(
        why(mem(vec![ac(3), sc(2)], vec![0, 0, 0, 0, 0x1000])),
        cells_err
    );
    assert_eq!(why(mem(vec![ac(2), sc(0)], vec![0, 0])), cells_err);
    assert_eq!(
        why(mem(vec![ac(100), sc(2)], vec![0])),
        "#address-cells is not one cell of at most 4"
    );
    assert_eq!(
        why(mem(vec![ac(2), sc(5)], vec![0])),
        "#size-cells is not one cell of at most 4"
    );
    let entry_err = "reg length is not a multiple of its bus's entry size";
    assert_eq!(why(mem(vec![ac(2), sc(2)], vec![0, 0, 0])), entry_err);
    // Defaults without the properties: 2 address cells, 1 size cell.
    assert_eq!(
        mem(vec![], vec![0, 0x10, 0x20]).unwrap().memory,
        [(0x10, 0x20)]
    );
    assert_eq!(why(mem(vec![], vec![0, 0x10, 0x20, 0])), entry_err);
    // Ranges reaching past 2^64.
    let wrap = mem(
        vec![ac(2), sc(2)],
        vec![0xffff_ffff, 0xffff_f000, 0, 0x1000],
    );
    assert_eq!(why(wrap), "memory range wraps around 2^64");
    let ok = mem(
        vec![ac(2), sc(2)],
        vec![0xffff_ffff, 0xffff_e000, 0, 0x1000],
    );
    assert_eq!(ok.unwrap().memory, [(0xffff_ffff_ffff_e000, 0x1000)]);
    // Zero sizes are skipped; a memory node without reg contributes nothing.
    assert_eq!(mem(vec![ac(1), sc(1)], vec![0x1000, 0]).unwrap().memory, []);
}

#[test]
fn cells_properties_must_be_one_small_cell() {
    let bad = |name: &'static [u8], value: &'static [u8]| {
        parse(&tree(|w| node(w, "x", |w| w.property(name, value))))
    };
    assert_eq!(
        why(bad(b"#address-cells", b"")),
        "#address-cells is not one cell of at most 4"
    );
    assert_eq!(
        why(bad(b"#address-cells", &[0, 0, 2])),
        "#address-cells is not one cell of at most 4"
    );
    assert_eq!(
        why(bad(b"#size-cells", &[0, 0, 0, 1, 0])),
        "#size-cells is not one cell of at most 4"
    );
    assert_eq!(
        why(bad(b"#size-cells", &[0xff; 4])),
        "#size-cells is not one cell of at most 4"
    );
    // 0 is legal (interrupt controllers, /cpus' #size-cells) as long as no reg needs it.
    assert!(bad(b"#address-cells", &[0, 0, 0, 0]).is_ok());
}

#[test]
fn reservations_from_the_map_and_reserved_memory() {
    let blob = tree_with(&[(0x1000, 0x1000), (0x5000, 0)], |w| {
        w.begin_node(b"")?;
        node(w, "reserved-memory", |w| {
            w.property_u32(b"#address-cells", 2)?;
            w.property_u32(b"#size-cells", 1)?;
            node(w, "a@8000", |w| {
                w.property_cells(b"reg", &[0, 0x8000, 0x800])
            })?;
            node(w, "dynamic", |w| w.property_u32(b"size", 0x1000))?;
            // Grandchildren are not reservations of their own.
            node(w, "b@9000", |w| {
                w.property_cells(b"reg", &[0, 0x9000, 0x100])?;
                node(w, "c", |w| w.property_cells(b"reg", &[0, 0xa000]))
            })
        })?;
        // Only /reserved-memory counts, not a node of that name deeper down.
        node(w, "soc", |w| {
            node(w, "reserved-memory", |w| {
                node(w, "x", |w| w.property_cells(b"reg", &[0, 1, 1]))
            })
        })?;
        w.end_node()
    });
    let t = parse(&blob).unwrap();
    assert_eq!(
        t.reserved,
        [(0x1000, 0x1000), (0x8000, 0x800), (0x9000, 0x100)]
    );
}

#[test]
fn cpus_and_timebase() {
    let cpus = |tb_parent: Option<&[u8]>, tb_cpu: Option<&[u8]>, servers: &[u8]| {
        parse(&tree(|w| {
            node(w, "cpus", |w| {
                w.property_u32(b"#address-cells", 1)?;
                w.property_u32(b"#size-cells", 0)?;
                if let Some(tb) = tb_parent {
                    w.property(b"timebase-frequency", tb)?;
                }
                node(w, "cpu@0", |w| {
                    w.property_str(b"device_type", "cpu")?;
                    w.property_u32(b"reg", 0)?;
                    if let Some(tb) = tb_cpu {
                        w.property(b"timebase-frequency", tb)?;
                    }
                    if !servers.is_empty() {
                        w.property(b"ibm,ppc-interrupt-server#s", servers)?;
                    }
                    Ok(())
                })?;
                node(w, "cpu@8", |w| {
                    w.property_str(b"device_type", "cpu")?;
                    // Not the first CPU: its timebase is never looked at.
                    w.property(b"timebase-frequency", b"bad")
                })
            })
        }))
    };
    let (tb32, tb64) = (512_000_000u32.to_be_bytes(), (5u64 << 32).to_be_bytes());
    let t = cpus(None, Some(&tb32), b"").unwrap();
    assert_eq!((t.cpus, t.timebase_hz), (2, Some(512_000_000)));
    let t = cpus(Some(&tb64), None, &[0, 0, 0, 0, 0, 0, 0, 1]).unwrap();
    assert_eq!((t.cpus, t.timebase_hz), (3, Some(5 << 32)));
    // The CPU's own frequency wins over /cpus'.
    let (one, two) = (1u32.to_be_bytes(), 2u32.to_be_bytes());
    let t = cpus(Some(&one), Some(&two), b"").unwrap();
    assert_eq!(t.timebase_hz, Some(2));
    assert_eq!(cpus(None, None, b"").unwrap().timebase_hz, None);
    let tb_err = "timebase-frequency is neither 32 nor 64 bits";
    assert_eq!(why(cpus(None, Some(&[1, 2, 3]), b"")), tb_err);
    assert_eq!(why(cpus(Some(&[0; 12]), None, b"")), tb_err);
    let servers_err = "ibm,ppc-interrupt-server#s is not a list of cells";
    assert_eq!(why(cpus(None, None, &[0, 0, 0, 0, 0, 1])), servers_err);
}

#[test]
fn empty_server_list_is_an_error() {
    let blob = tree(|w| {
        node(w, "cpu", |w| {
            w.property_str(b"device_type", "cpu")?;
            w.property(b"ibm,ppc-interrupt-server#s", b"")
        })
    });
    assert_eq!(
        why(parse(&blob)),
        "ibm,ppc-interrupt-server#s is not a list of cells"
    );
}

#[test]
fn chosen_stdout_and_bootargs() {
    let chosen = |props: &[(&'static str, &'static [u8])]| {
        let props = props.to_vec();
        parse(&tree(move |w| {
            node(w, "aliases", |w| {
                w.property(b"serial0", b"/vdevice/vty@2\0")?;
                w.property(b"bus", b"/soc\0")?;
                w.property(b"relative", b"vdevice\0")
            })?;
            node(w, "chosen", |w| {
                for (name, value) in &props {
                    w.property(name.as_bytes(), value)?;
                }
                Ok(())
            })?;
            node(w, "vdevice", |w| {
                w.property_u32(b"#address-cells", 1)?;
                w.property_u32(b"#size-cells", 0)?;
                for (name, reg) in [("vty@1", 1u32), ("vty@2", 2)] {
                    node(w, name, |w| {
                        w.property_str(b"compatible", "hvterm1")?;
                        w.property_u32(b"reg", reg)
                    })?;
                }
                Ok(())
            })
        }))
        .unwrap()
    };
    let t = chosen(&[
        ("stdout-path", b"/vdevice/vty@2:115200\0"),
        ("bootargs", b"a b\0"),
    ]);
    assert_eq!(t.stdout_path.as_deref(), Some("/vdevice/vty@2"));
    assert_eq!(t.hvterm.unwrap().termno, 2);
    assert_eq!(t.bootargs.as_deref(), Some(&b"a b"[..]));
    // An alias; with a sub-path; unknown or relative aliases are kept as given.
    assert_eq!(
        chosen(&[("stdout-path", b"serial0:9600n8\0")])
            .stdout_path
            .as_deref(),
        Some("/vdevice/vty@2")
    );
    assert_eq!(
        chosen(&[("stdout-path", b"bus/uart@0\0")])
            .stdout_path
            .as_deref(),
        Some("/soc/uart@0")
    );
    assert_eq!(
        chosen(&[("stdout-path", b"serial9\0")])
            .stdout_path
            .as_deref(),
        Some("serial9")
    );
    assert_eq!(
        chosen(&[("stdout-path", b"relative\0")])
            .stdout_path
            .as_deref(),
        Some("relative")
    );
    // linux,stdout-path when stdout-path is missing or empty; no NUL at all is fine too.
    let t = chosen(&[
        ("stdout-path", b"\0"),
        ("linux,stdout-path", b"/vdevice/vty@1"),
    ]);
    assert_eq!(t.stdout_path.as_deref(), Some("/vdevice/vty@1"));
    assert_eq!(t.hvterm.unwrap().termno, 1);
    // A path without unit address still picks its node.
    assert_eq!(
        chosen(&[("stdout-path", b"/vdevice/vty\0")])
            .hvterm
            .unwrap()
            .termno,
        1
    );
    // Without stdout (or pointing elsewhere) the first hvterm is taken.
    let t = chosen(&[]);
    assert_eq!(
        (t.stdout_path, t.hvterm.unwrap().termno, t.bootargs),
        (None, 1, None)
    );
    assert_eq!(
        chosen(&[("stdout-path", b"/serial@3f8\0")])
            .hvterm
            .unwrap()
            .termno,
        1
    );
    // Empty bootargs are still bootargs.
    assert_eq!(chosen(&[("bootargs", b"")]).bootargs, Some(vec![]));
}

#[test]
fn only_the_first_chosen_counts() {
    let t = parse(&tree(|w| {
        node(w, "chosen", |w| w.property_str(b"bootargs", "first"))?;
        node(w, "chosen", |w| w.property_str(b"bootargs", "second"))
    }))
    .unwrap();
    assert_eq!(t.bootargs.as_deref(), Some(&b"first"[..]));
}

#[test]
fn hvterm_needs_a_reg_cell() {
    for reg in [
        None,
        Some(&b""[..]),
        Some(&[0, 0, 1][..]),
        Some(&[0, 0, 0, 1, 0][..]),
    ] {
        let blob = tree(|w| {
            node(w, "vty", |w| {
                w.property_str(b"compatible", "hvterm1")?;
                match reg {
                    Some(r) => w.property(b"reg", r),
                    None => Ok(()),
                }
            })
        });
        assert_eq!(
            why(parse(&blob)),
            "hvterm1 node without a reg cell",
            "{reg:?}"
        );
    }
}

#[test]
fn rtas_tokens() {
    let rtas = |props: &[(&'static str, &'static [u8])]| {
        let props = props.to_vec();
        parse(&tree(move |w| {
            node(w, "rtas", |w| {
                for (name, value) in &props {
                    w.property(name.as_bytes(), value)?;
                }
                Ok(())
            })
        }))
    };
    let t = rtas(&[
        ("power-off", &[0, 0, 0x20, 3]),
        ("display-character", b"xx"),
    ])
    .unwrap();
    assert_eq!(
        t.rtas,
        Some(RtasTokens {
            power_off: Some(0x2003),
            ..RtasTokens::default()
        })
    );
    assert_eq!(rtas(&[]).unwrap().rtas, Some(RtasTokens::default()));
    assert_eq!(
        why(rtas(&[("ibm,write-pci-config", b"")])),
        "RTAS token is not one cell"
    );
    // Only /rtas: a node of that name further down is something else.
    let t = parse(&tree(|w| {
        node(w, "x", |w| {
            node(w, "rtas", |w| w.property_u32(b"power-off", 1))
        })
    }));
    assert_eq!(t.unwrap().rtas, None);
}

#[test]
fn ultravisor_by_name_or_compatible() {
    let by_name = tree(|w| node(w, "ibm,ultravisor@0", |_| Ok(())));
    assert!(parse(&by_name).unwrap().ultravisor);
    let by_compat = tree(|w| {
        node(w, "uv", |w| {
            w.property(b"compatible", b"x\0ibm,ultravisor\0")
        })
    });
    assert!(parse(&by_compat).unwrap().ultravisor);
    let neither = tree(|w| {
        node(w, "ibm,ultravisor-like", |w| {
            w.property_str(b"compatible", "ibm,ultra")
        })
    });
    assert!(!parse(&neither).unwrap().ultravisor);
}

/// A virtio-mmio node under `/bus` (1 address + 1 size cell, `ranges` as given) under `/`.
fn virtio_under_bus(
    ranges: Option<&[u32]>,
    reg: &[u32],
    interrupts: Option<&[u8]>,
) -> Result<DeviceTree, DtError> {
    parse(&tree(|w| {
        node(w, "bus", |w| {
            w.property_u32(b"#address-cells", 1)?;
            w.property_u32(b"#size-cells", 1)?;
            if let Some(r) = ranges {
                w.property_cells(b"ranges", r)?;
            }
            node(w, "virtio@0", |w| {
                w.property_str(b"compatible", "virtio,mmio")?;
                w.property_cells(b"reg", reg)?;
                match interrupts {
                    Some(i) => w.property(b"interrupts", i),
                    None => Ok(()),
                }
            })
        })
    }))
}

#[test]
fn virtio_mmio_addresses_are_translated() {
    let one = |r: Result<DeviceTree, DtError>| {
        let t = r.unwrap();
        assert_eq!(t.virtio_mmio.len(), 1);
        let v = &t.virtio_mmio[0];
        assert_eq!(v.path, "/bus/virtio@0");
        (v.base, v.size, v.irq)
    };
    // No ranges, or empty ranges: identity.
    assert_eq!(
        one(virtio_under_bus(None, &[0x1000, 0x200], None)),
        (0x1000, 0x200, None)
    );
    assert_eq!(
        one(virtio_under_bus(
            Some(&[]),
            &[0x1000, 0x200],
            Some(&[0, 0, 0, 9, 0, 0, 0, 1])
        )),
        (0x1000, 0x200, Some(9))
    );
    // Second of two windows: child 0x1000_0000.. -> parent 0x2_0000_0000.
    let ranges = [0x0, 0x0, 0x8000_0000, 0x1000, 0x1000_0000, 0x2, 0x0, 0x1000];
    assert_eq!(
        one(virtio_under_bus(Some(&ranges), &[0x1000_0200, 0x200], None)),
        (0x2_0000_0200, 0x200, None)
    );
    assert_eq!(
        one(virtio_under_bus(Some(&ranges), &[0x200, 0x200], None)),
        (0x8000_0200, 0x200, None)
    );
    // Outside every window, or running past its end.
    let outside = "reg outside its bus's ranges";
    assert_eq!(
        why(virtio_under_bus(Some(&ranges), &[0x2000, 0x10], None)),
        outside
    );
    assert_eq!(
        why(virtio_under_bus(Some(&ranges), &[0xf00, 0x200], None)),
        outside
    );
    assert_eq!(
        why(virtio_under_bus(Some(&ranges[..5]), &[0x0, 0x10], None)),
        "ranges length is not a multiple of its entry size"
    );
    // Translation to past 2^64.
    let wrap = [0x0, 0xffff_ffff, 0xffff_ff00, 0x1000];
    assert_eq!(
        why(virtio_under_bus(Some(&wrap), &[0x80, 0x100], None)),
        "memory range wraps around 2^64"
    );
    assert_eq!(
        why(virtio_under_bus(Some(&wrap), &[0x200, 0x10], None)),
        "translated address wraps around 2^64"
    );
    // Malformed transports.
    assert_eq!(
        why(virtio_under_bus(None, &[0x1000, 0], None)),
        "virtio,mmio reg has size 0"
    );
    assert_eq!(
        why(virtio_under_bus(None, &[], None)),
        "virtio,mmio node with an empty reg"
    );
    assert_eq!(
        why(virtio_under_bus(None, &[0x1000], None)),
        "reg length is not a multiple of its bus's entry size"
    );
    assert_eq!(
        why(virtio_under_bus(None, &[0x1000, 0x200], Some(&[0, 1]))),
        "interrupts is not a list of cells"
    );
    assert_eq!(
        one(virtio_under_bus(None, &[0x1000, 0x200], Some(&[]))).2,
        None
    );
}

#[test]
fn virtio_mmio_translation_through_two_buses() {
    let t = parse(&tree(|w| {
        node(w, "a", |w| {
            w.property_u32(b"#address-cells", 1)?;
            w.property_u32(b"#size-cells", 1)?;
            w.property_cells(b"ranges", &[0x0, 0x1, 0x0, 0x1000_0000])?; // -> 0x1_0000_0000
            node(w, "b", |w| {
                w.property_u32(b"#address-cells", 1)?;
                w.property_u32(b"#size-cells", 1)?;
                w.property_cells(b"ranges", &[0x0, 0x40_0000, 0x10_0000])?; // -> 0x40_0000
                node(w, "v", |w| {
                    w.property_str(b"compatible", "virtio,mmio")?;
                    w.property_cells(b"reg", &[0x800, 0x200])
                })
            })
        })
    }))
    .unwrap();
    assert_eq!(t.virtio_mmio[0].base, 0x1_0040_0800);
    // A bus with 3 address cells (PCI) cannot be translated through.
    let blob = tree(|w| {
        node(w, "pci", |w| {
            w.property_u32(b"#address-cells", 3)?;
            w.property_u32(b"#size-cells", 2)?;
            w.property_cells(b"ranges", &[0; 7])?;
            node(w, "v", |w| w.property_str(b"compatible", "virtio,mmio"))
        })
    });
    assert_eq!(why(parse(&blob)), "virtio,mmio node without reg");
}

/// A hostile `ibm,dma-window` or `ibm,ddw-applicable` does not fail the tree: the PHB carries
/// the reason, and only devices that need its IOMMU fail (with it).
#[test]
fn hostile_tce_windows_are_kept_as_reasons() {
    let phb = |name: &'static str, f: fn(&mut FdtWriter<'_>) -> Result<(), WriteError>| {
        move |w: &mut FdtWriter<'_>| {
            node(w, name, |w| {
                w.property_str(b"device_type", "pci")?;
                f(w)
            })
        }
    };
    let t = parse(&tree(|w| {
        phb("a", |w| {
            w.property_cells(b"ibm,dma-window", &[0x8000_0000, 0, 0, 0, 0])
        })(w)?;
        phb("b", |w| {
            w.property_cells(b"ibm,dma-window", &[1, 0, 0x800, 0, 0x1000])
        })(w)?;
        phb("c", |w| w.property_cells(b"ibm,dma-window", &[1, 0, 0]))(w)?;
        phb("d", |w| {
            w.property_u32(b"ibm,#dma-address-cells", 5)?;
            w.property_cells(b"ibm,dma-window", &[1, 0, 0, 0, 0x1000])
        })(w)?;
        phb("e", |w| {
            w.property_u32(b"ibm,#dma-address-cells", 1)?;
            w.property_u32(b"ibm,#dma-size-cells", 1)?;
            w.property_cells(b"ibm,dma-window", &[2, 0x1000, 0x10_0000])?;
            w.property_cells(b"ibm,ddw-applicable", &[1, 2])
        })(w)
    }))
    .unwrap();
    let w: Vec<_> = t.pci_hosts.iter().map(|h| h.tce_window.unwrap()).collect();
    assert_eq!(w[0], Err("ibm,dma-window has size 0"));
    assert_eq!(w[1], Err("ibm,dma-window is not 4 KiB-aligned"));
    assert_eq!(
        w[2],
        Err("ibm,dma-window is not one LIOBN, bus address and size")
    );
    assert_eq!(
        w[3],
        Err("ibm,#dma-address-cells is not one cell of 1 or 2")
    );
    assert_eq!(
        w[4],
        Ok(crate::dma::tce::TceWindow {
            liobn: 2,
            base: 0x1000,
            size: 0x10_0000
        })
    );
    assert_eq!(
        t.pci_hosts[4].ddw,
        Some(Err("ibm,ddw-applicable is not three tokens"))
    );
    assert!(t.pci_hosts.iter().all(|h| h.has_dma_window));
}

#[test]
fn pci_hosts_and_functions() {
    let t = parse(&tree(|w| {
        node(w, "phb@0", |w| {
            w.property_str(b"device_type", "pci")?;
            w.property_u32(b"#address-cells", 3)?;
            w.property_u32(b"#size-cells", 2)?;
            // 03:1f.7, no class-code.
            node(w, "dev", |w| {
                w.property_cells(b"reg", &[0x03ff00, 0, 0, 0, 0, 0x0203ff10, 0, 0, 0, 0x1000])?;
                w.property_u32(b"vendor-id", 0x8086)?;
                w.property_u32(b"device-id", 0x100e)
            })
        })?;
        // A second host, without bus-range or compatible.
        node(w, "phb@1", |w| w.property_str(b"device_type", "pci"))
    }))
    .unwrap();
    let host = |path: &str| PciHostNode {
        path: path.into(),
        compatible: None,
        bus_range: None,
        has_dma_window: false,
        tce_window: None,
        ddw: None,
    };
    assert_eq!(t.pci_hosts, [host("/phb@0"), host("/phb@1")]);
    let f = &t.pci_functions[..];
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].bus, f[0].device, f[0].function, f[0].class),
        (3, 0x1f, 7, 0)
    );
    assert_eq!(
        (f[0].vendor_id, f[0].device_id, f[0].is_virtio()),
        (0x8086, 0x100e, false)
    );
}

#[test]
fn pci_errors() {
    let host = |host_props: &[(&'static str, &'static [u8])],
                fn_props: &[(&'static str, &'static [u8])]| {
        let (hp, fp) = (host_props.to_vec(), fn_props.to_vec());
        parse(&tree(move |w| {
            node(w, "phb", |w| {
                w.property_str(b"device_type", "pci")?;
                for (n, v) in &hp {
                    w.property(n.as_bytes(), v)?;
                }
                node(w, "f", |w| {
                    for (n, v) in &fp {
                        w.property(n.as_bytes(), v)?;
                    }
                    Ok(())
                })
            })
        }))
    };
    let cells: [(&str, &[u8]); 2] = [
        ("#address-cells", &[0, 0, 0, 3]),
        ("#size-cells", &[0, 0, 0, 2]),
    ];
    let reg: &[u8] = &[
        0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let id: &[u8] = &[0, 0, 0x1a, 0xf4];
    let ok = host(
        &cells,
        &[("reg", reg), ("vendor-id", id), ("device-id", id)],
    )
    .unwrap();
    assert_eq!(ok.pci_functions[0].device, 1);
    let f = |props: &[(&'static str, &'static [u8])]| why(host(&cells, props));
    assert_eq!(
        f(&[
            ("reg", reg),
            ("vendor-id", &[0, 1, 0, 0]),
            ("device-id", id)
        ]),
        "vendor-id is not one 16-bit cell"
    );
    assert_eq!(
        f(&[("reg", reg), ("vendor-id", id)]),
        "device-id is not one 16-bit cell"
    );
    assert_eq!(
        f(&[("reg", reg), ("device-id", id), ("vendor-id", &[1])]),
        "vendor-id is not one 16-bit cell"
    );
    assert_eq!(
        f(&[
            ("reg", reg),
            ("vendor-id", id),
            ("device-id", id),
            ("class-code", &[1, 0, 0, 0])
        ]),
        "class-code is not 24 bits"
    );
    assert_eq!(
        f(&[("vendor-id", id), ("device-id", id)]),
        "PCI function reg is not a list of PCI addresses"
    );
    assert_eq!(
        f(&[("reg", &reg[..16]), ("vendor-id", id), ("device-id", id)]),
        "PCI function reg is not a list of PCI addresses"
    );
    // The host's bus must use PCI addresses.
    let two_cells = why(host(
        &[],
        &[("reg", reg), ("vendor-id", id), ("device-id", id)],
    ));
    assert_eq!(two_cells, "PCI bus #address-cells is not 3");
    // bus-range.
    let br = |v: &'static [u8]| host(&[("bus-range", v)], &[]);
    assert_eq!(
        br(&[0, 0, 0, 1, 0, 0, 0, 4]).unwrap().pci_hosts[0].bus_range,
        Some((1, 4))
    );
    assert_eq!(why(br(&[0, 0, 0, 1])), "bus-range is not two cells");
    assert_eq!(why(br(&[0; 12])), "bus-range is not two cells");
    assert_eq!(
        why(br(&[0, 0, 0, 5, 0, 0, 0, 4])),
        "bus-range is not start <= end <= 255"
    );
    assert_eq!(
        why(br(&[0, 0, 0, 0, 0, 0, 1, 0])),
        "bus-range is not start <= end <= 255"
    );
}

#[test]
fn device_lists_are_capped() {
    let many = |n: usize| {
        parse(&tree(|w| {
            for i in 0..n {
                node(w, &format!("v@{i:x}"), |w| {
                    w.property_str(b"compatible", "virtio,mmio")?;
                    w.property_cells(b"reg", &[0, i as u32 * 0x200, 0, 0x200])
                })?;
            }
            Ok(())
        }))
    };
    assert_eq!(many(MAX_DEVICES).unwrap().virtio_mmio.len(), MAX_DEVICES);
    assert_eq!(
        why(many(MAX_DEVICES + 1)),
        "more than 1024 virtio,mmio nodes"
    );
}
