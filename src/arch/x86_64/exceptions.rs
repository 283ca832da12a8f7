//! The IDT: every CPU exception (vectors 0..32) ends in `crate::fatal_exception`, which writes an
//! `exception` record and ends the run, instead of a triple fault and a silent reset.

use core::arch::asm;
use core::cell::UnsafeCell;

unsafe extern "C" {
    static exc_stub_table: [u64; 32];
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[[u64; 2]; 32]>);

// SAFETY: written once by the boot CPU before interrupts can happen; the other CPUs stay parked.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; 32]));

const NAMES: [&str; 32] = [
    "divide-error",
    "debug",
    "nmi",
    "breakpoint",
    "overflow",
    "bound-range",
    "invalid-opcode",
    "device-not-available",
    "double-fault",
    "coprocessor-segment-overrun",
    "invalid-tss",
    "segment-not-present",
    "stack-segment-fault",
    "general-protection",
    "page-fault",
    "reserved-15",
    "x87-floating-point",
    "alignment-check",
    "machine-check",
    "simd-floating-point",
    "virtualization",
    "control-protection",
    "reserved-22",
    "reserved-23",
    "reserved-24",
    "reserved-25",
    "reserved-26",
    "reserved-27",
    "hypervisor-injection",
    "vmm-communication",
    "security",
    "reserved-31",
];

pub fn init() {
    // SAFETY: the stub table is defined in entry.rs and never written.
    let stubs = unsafe { &exc_stub_table };
    let idt = IDT.0.get();
    for (v, &handler) in stubs.iter().enumerate() {
        // 64-bit interrupt gate, present, DPL 0, code selector 0x08.
        let low = (handler & 0xffff)
            | (0x08 << 16)
            | (0x8e00u64 << 32)
            | ((handler >> 16) & 0xffff) << 48;
        let high = handler >> 32;
        // SAFETY: single-threaded boot, nothing reads the IDT before `lidt` below.
        unsafe { (*idt)[v] = [low, high] };
    }
    let ptr: [u16; 5] = {
        let base = idt as u64;
        [
            (32 * 16 - 1) as u16,
            base as u16,
            (base >> 16) as u16,
            (base >> 32) as u16,
            (base >> 48) as u16,
        ]
    };
    // SAFETY: the IDT is static and fully initialised; `ptr` is the 10-byte descriptor.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// Called from `exc_common` with a pointer to [vector, error, rip, cs, rflags, rsp, ss].
#[unsafe(no_mangle)]
extern "C" fn x86_64_exception(frame: *const u64) -> ! {
    // SAFETY: the assembly stub passes the stack frame it built; 7 words are always there.
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let vector = f[0];
    let name = NAMES.get(vector as usize).copied().unwrap_or("unknown");
    crate::fatal_exception(
        vector,
        name,
        f[2],
        &[
            ("error_code", f[1]),
            ("cr2", cr2),
            ("rsp", f[5]),
            ("rflags", f[4]),
        ],
    )
}

/// `sg.debug.fault`: an invalid opcode.
pub fn trigger_fault() {
    // SAFETY: ud2 raises #UD, which the IDT turns into a report and power-off.
    unsafe { asm!("ud2", options(nomem, nostack)) };
}
