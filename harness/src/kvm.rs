//! Is KVM usable here? Only for `--accel auto`: TCG is the default everywhere.
//!
//! `/dev/kvm` existing proves little: on a nested or paravirtual host it can be there, open, and
//! still fail to create a VM. So the probe does what QEMU does first: opens `/dev/kvm`
//! read-write, checks the API version (12, the only stable one), and creates (and drops) an empty
//! VM. That costs a few milliseconds; the answer is cached for the process.

use std::sync::OnceLock;

/// Why KVM is or is not usable, for `harness kvm` and error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Usable,
    Unusable(String),
}

/// Whether KVM can run a VM on this host (cached).
pub fn usable() -> bool {
    probe() == &Probe::Usable
}

/// The cached probe result.
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(probe_now)
}

#[cfg(target_os = "linux")]
fn probe_now() -> Probe {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // From <linux/kvm.h>: _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01), KVMIO = 0xAE.
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    const KVM_API_VERSION: libc::c_int = 12;

    let kvm = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) => return Probe::Unusable(format!("cannot open /dev/kvm read-write: {e}")),
    };
    // SAFETY: `kvm` is an open file descriptor for the whole call; the ioctl takes no argument.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Probe::Unusable(format!(
            "KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: as above; the argument 0 asks for the default VM type.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return Probe::Unusable(format!(
            "KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: KVM_CREATE_VM returned a new file descriptor that nothing else owns; dropping it
    // destroys the VM.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Probe::Usable
}

#[cfg(not(target_os = "linux"))]
fn probe_now() -> Probe {
    Probe::Unusable("KVM exists only on Linux".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_is_cached_and_explains_itself() {
        // Either answer is fine on a given host; it must be stable and say why when negative.
        let first = super::probe().clone();
        assert_eq!(&first, super::probe());
        if let super::Probe::Unusable(why) = first {
            assert!(!why.is_empty());
        }
    }
}
