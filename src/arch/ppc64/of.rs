//! The Open Firmware client interface (IEEE 1275), as SLOF and VOF provide it.
//!
//! Every call goes through `sg_of_call` (boot/ppc64/ofcall.S), which drops to 32-bit
//! big-endian mode around the firmware. Arguments are big-endian 32-bit cells, so every
//! address handed to the firmware (argument block, names, buffers) must be below 4 GiB: the
//! caller checks once that the whole image is.

unsafe extern "C" {
    /// boot/ppc64/ofcall.S. Returns the firmware's r3: 0 done, -1 (0xffff_ffff) failed.
    fn sg_of_call(args: *mut u32, entry: u64) -> u64;
}

/// A node (package) handle.
pub type Phandle = u32;

/// Returned by the firmware for "no such thing" (a -1 cell).
const FAILED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfError;

/// The client interface at `entry`.
#[derive(Clone, Copy)]
pub struct Of {
    entry: u64,
}

/// An address as a 32-bit cell. Everything passed is inside the image, which the caller has
/// checked lies below 4 GiB; the truncation is therefore exact.
fn cell(p: *const u8) -> u32 {
    p as u64 as u32
}

impl Of {
    /// # Safety
    /// `entry` must be the client-interface entry the firmware passed in r5, the firmware
    /// must still be in charge (nothing it owns overwritten), and the image (stack, buffers,
    /// strings) must lie below 4 GiB.
    pub unsafe fn new(entry: u64) -> Self {
        Of { entry }
    }

    /// One call: `service` is a NUL-terminated name; `args` in, `rets` out (host order).
    fn call(&self, service: &'static [u8], args: &[u32], rets: &mut [u32]) -> Result<(), OfError> {
        debug_assert!(service.last() == Some(&0));
        let (n, r) = (args.len(), rets.len());
        let mut block = [0u32; 16];
        if 3 + n + r > block.len() {
            return Err(OfError);
        }
        block[0] = cell(service.as_ptr()).to_be();
        block[1] = (n as u32).to_be();
        block[2] = (r as u32).to_be();
        for (i, a) in args.iter().enumerate() {
            block[3 + i] = a.to_be();
        }
        // Firmware that fails a call may leave the return cells alone: preset "failed".
        for i in 0..r {
            block[3 + n + i] = FAILED;
        }
        // SAFETY: the block is a live local array below 4 GiB with room for every cell the
        // firmware writes (3 + n + r). `Of::new`'s contract covers the firmware's state.
        let status = unsafe { sg_of_call(block.as_mut_ptr(), self.entry) };
        for (i, ret) in rets.iter_mut().enumerate() {
            *ret = u32::from_be(block[3 + n + i]);
        }
        if status as u32 == FAILED {
            Err(OfError)
        } else {
            Ok(())
        }
    }

    fn call1(&self, service: &'static [u8], args: &[u32]) -> Result<u32, OfError> {
        let mut ret = [0u32; 1];
        self.call(service, args, &mut ret)?;
        Ok(ret[0])
    }

    /// A handle result: 0 and -1 both mean "none".
    fn handle(&self, service: &'static [u8], args: &[u32]) -> Option<Phandle> {
        match self.call1(service, args) {
            Ok(0) | Ok(FAILED) | Err(_) => None,
            Ok(h) => Some(h),
        }
    }

    /// The root node.
    pub fn root(&self) -> Option<Phandle> {
        self.handle(b"peer\0", &[0])
    }

    pub fn peer(&self, ph: Phandle) -> Option<Phandle> {
        self.handle(b"peer\0", &[ph])
    }

    pub fn child(&self, ph: Phandle) -> Option<Phandle> {
        self.handle(b"child\0", &[ph])
    }

    /// `path` must be NUL-terminated.
    pub fn finddevice(&self, path: &[u8]) -> Option<Phandle> {
        if path.last() != Some(&0) {
            return None;
        }
        self.handle(b"finddevice\0", &[cell(path.as_ptr())])
    }

    /// Reads a property into `buf`; returns its full length (which may exceed `buf`: then
    /// only `buf.len()` bytes were copied). None when absent.
    pub fn getprop(&self, ph: Phandle, name: &[u8], buf: &mut [u8]) -> Option<usize> {
        if name.last() != Some(&0) {
            return None;
        }
        let len = buf.len().min(u32::MAX as usize - 1) as u32;
        match self.call1(
            b"getprop\0",
            &[ph, cell(name.as_ptr()), cell(buf.as_mut_ptr()), len],
        ) {
            Ok(FAILED) | Err(_) => None,
            Ok(n) => Some(n as usize),
        }
    }

    /// A property as a big-endian u32 (or the low half of a u64).
    pub fn getprop_u32(&self, ph: Phandle, name: &[u8]) -> Option<u32> {
        let mut b = [0u8; 8];
        match self.getprop(ph, name, &mut b)? {
            4 => Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            8 => Some(u32::from_be_bytes([b[4], b[5], b[6], b[7]])),
            _ => None,
        }
    }

    /// The property after `prev` (NUL-terminated, empty for the first) into `buf` (at least
    /// 32 bytes, as IEEE 1275 requires). Ok(false) when there is none.
    pub fn nextprop(&self, ph: Phandle, prev: &[u8], buf: &mut [u8; 64]) -> Result<bool, OfError> {
        if prev.last() != Some(&0) {
            return Err(OfError);
        }
        buf.fill(0);
        match self.call1(
            b"nextprop\0",
            &[ph, cell(prev.as_ptr()), cell(buf.as_mut_ptr())],
        )? {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(OfError),
        }
    }

    /// The full path of a node into `buf`; returns its length (may exceed `buf`).
    pub fn package_to_path(&self, ph: Phandle, buf: &mut [u8]) -> Option<usize> {
        let len = buf.len() as u32;
        match self.call1(b"package-to-path\0", &[ph, cell(buf.as_mut_ptr()), len]) {
            Ok(FAILED) | Err(_) => None,
            Ok(n) => Some(n as usize),
        }
    }

    /// The path of the device behind an instance handle (e.g. /chosen `stdout`).
    pub fn instance_to_path(&self, ih: u32, buf: &mut [u8]) -> Option<usize> {
        let len = buf.len() as u32;
        match self.call1(b"instance-to-path\0", &[ih, cell(buf.as_mut_ptr()), len]) {
            Ok(FAILED) | Err(_) => None,
            Ok(n) => Some(n as usize),
        }
    }
}
