//! Portable core of secure-guest: everything that does not depend on an instruction set.
//!
//! In the guest this crate is `no_std`; under `cargo test` on the host it links `std` so that the
//! parsers, the report writer and the memory map can be tested against hostile inputs.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod acpi;
pub mod bootinfo;
pub mod clock;
pub mod cmdline;
pub mod crc32c;
pub mod devices;
pub mod devtree;
pub mod dma;
pub mod memmap;
pub mod pattern;
pub mod platform;
pub mod report;
pub mod small_sort;
pub mod virtio;
