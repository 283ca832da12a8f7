//! COM1, a 16550 UART at I/O port 0x3f8: the x86 console.

use super::io::{inb, outb};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const FIFO_SIZE: usize = 16;

static PRESENT: AtomicBool = AtomicBool::new(false);

/// Programs 115200 8N1 and checks that a UART answers. Returns whether one does.
pub fn init() -> bool {
    outb(COM1 + 1, 0x00); // no interrupts: the guest polls
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on, cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
    // With no device behind the port, reads float to 0xff.
    let present = inb(LSR) != 0xff;
    PRESENT.store(present, Ordering::Relaxed);
    present
}

pub fn write(bytes: &[u8]) {
    if !PRESENT.load(Ordering::Relaxed) {
        return;
    }
    // THR empty with the FIFO on means the whole 16-byte FIFO is free: one status read per
    // 16 bytes instead of one per byte (each port access is a VM exit).
    for chunk in bytes.chunks(FIFO_SIZE) {
        // Bounded wait: a UART that never drains must not hang the guest.
        for _ in 0..100_000 {
            if inb(LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}
