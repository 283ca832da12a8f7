//! Device initialisation over any [`Transport`] (virtio 1.2, 3.1): reset, ACKNOWLEDGE, DRIVER,
//! feature negotiation, FEATURES_OK (modern), queues, DRIVER_OK.

use core::fmt;

use super::features::{DeviceType, common};
use super::queue::{MAX_QUEUE_SIZE, QueueConfig, QueueError, RingFormat, Virtqueue};
use super::transport::{DeviceStatus, Transport, TransportError};
use super::wait::Deadline;
use crate::dma::{Dma, DmaConstraints};

/// What was negotiated, for the driver and the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiation {
    pub transport: &'static str,
    pub device_type: DeviceType,
    pub legacy: bool,
    /// What the device offered (legacy: 32 bits).
    pub offered: u64,
    /// What the driver asked for.
    pub requested: u64,
    /// What was written back: see [`negotiate`].
    pub accepted: u64,
}

impl Negotiation {
    /// Whether all bits of `feature` were accepted.
    pub fn has(&self, feature: u64) -> bool {
        self.accepted & feature == feature
    }

    pub fn ring_format(&self) -> RingFormat {
        if self.has(common::RING_PACKED) {
            RingFormat::Packed
        } else {
            RingFormat::Split
        }
    }
}

/// The features to accept: what the device offers and the driver supports; plus, on modern
/// transports, `VERSION_1`, and `ACCESS_PLATFORM` whenever offered (all DMA goes through
/// [`Dma`], so every driver supports it, and a device that needs it may refuse to work without
/// it). Legacy transports have only 32 feature bits.
pub fn negotiate(offered: u64, requested: u64, legacy: bool) -> u64 {
    let mut accepted = offered & requested;
    if legacy {
        accepted &= u64::from(u32::MAX);
    } else {
        accepted |= offered & (common::VERSION_1 | common::ACCESS_PLATFORM);
    }
    accepted
}

/// Why a device could not be initialised. In every case the device was left with FAILED set
/// (except a reset that never finished).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The status did not read 0 after a reset.
    ResetTimeout {
        status: u8,
        elapsed_us: u64,
        polls: u64,
    },
    /// A modern transport whose device does not offer VERSION_1.
    NoVersion1 {
        offered: u64,
    },
    /// FEATURES_OK did not stick: the device refused the accepted features.
    FeaturesNotAccepted {
        offered: u64,
        accepted: u64,
        status: u8,
    },
    /// After DRIVER_OK the device reports FAILED or DEVICE_NEEDS_RESET.
    DeviceFailed {
        status: u8,
    },
    /// `max_queue_size` is 0: the queue does not exist.
    QueueUnavailable {
        queue: u16,
    },
    /// The queue is live right after a reset.
    QueueInUse {
        queue: u16,
    },
    /// The size the device allows (or the driver asked for) is unusable: 0, above 32768, or not
    /// a power of two for a split ring.
    QueueSizeInvalid {
        queue: u16,
        max: u16,
        size: u16,
    },
    Queue {
        queue: u16,
        error: QueueError,
    },
    Transport(TransportError),
    /// The driver's own setup failed.
    Driver {
        what: &'static str,
    },
}

impl From<TransportError> for InitError {
    fn from(e: TransportError) -> Self {
        InitError::Transport(e)
    }
}

impl InitError {
    /// A stable name for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            InitError::ResetTimeout { .. } => "reset-timeout",
            InitError::NoVersion1 { .. } => "no-version-1",
            InitError::FeaturesNotAccepted { .. } => "features-not-accepted",
            InitError::DeviceFailed { .. } => "device-failed",
            InitError::QueueUnavailable { .. } => "queue-unavailable",
            InitError::QueueInUse { .. } => "queue-in-use",
            InitError::QueueSizeInvalid { .. } => "queue-size-invalid",
            InitError::Queue { .. } => "queue",
            InitError::Transport(_) => "transport",
            InitError::Driver { .. } => "driver",
        }
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InitError::ResetTimeout {
                status,
                elapsed_us,
                polls,
            } => write!(
                f,
                "status still {status:#04x} {elapsed_us} us and {polls} polls after reset"
            ),
            InitError::NoVersion1 { offered } => {
                write!(f, "modern device without VERSION_1 (offered {offered:#x})")
            }
            InitError::FeaturesNotAccepted {
                offered,
                accepted,
                status,
            } => write!(
                f,
                "FEATURES_OK not kept (offered {offered:#x}, accepted {accepted:#x}, \
                 status {status:#04x})"
            ),
            InitError::DeviceFailed { status } => {
                write!(f, "device status {status:#04x} after DRIVER_OK")
            }
            InitError::QueueUnavailable { queue } => write!(f, "queue {queue} does not exist"),
            InitError::QueueInUse { queue } => write!(f, "queue {queue} live after reset"),
            InitError::QueueSizeInvalid { queue, max, size } => {
                write!(f, "queue {queue}: size {size} unusable (device max {max})")
            }
            InitError::Queue { queue, error } => write!(f, "queue {queue}: {error}"),
            InitError::Transport(e) => write!(f, "{e}"),
            InitError::Driver { what } => f.write_str(what),
        }
    }
}

/// Resets the device and waits, within `deadline`, until its status reads 0.
pub fn reset<T: Transport + ?Sized>(
    t: &mut T,
    deadline: &mut Deadline<'_>,
) -> Result<(), InitError> {
    t.set_status(DeviceStatus::RESET);
    loop {
        let status = t.status();
        if status == DeviceStatus::RESET {
            return Ok(());
        }
        if deadline.expired() {
            return Err(InitError::ResetTimeout {
                status: status.bits(),
                elapsed_us: deadline.elapsed_us(),
                polls: deadline.polls(),
            });
        }
        core::hint::spin_loop();
    }
}

/// Tells the device the driver gave up on it (adds FAILED to the status).
pub fn fail<T: Transport + ?Sized>(t: &mut T) {
    let status = t.status();
    t.set_status(status.union(DeviceStatus::FAILED));
}

/// The whole initialisation: reset (bounded by `deadline`), ACKNOWLEDGE, DRIVER, negotiate
/// `requested` against the offer (see [`negotiate`]), FEATURES_OK and check that it stuck
/// (modern), then `setup` (queues, driver config), then DRIVER_OK. On any failure the device is
/// marked FAILED and the error says what happened.
pub fn init<T: Transport + ?Sized, R>(
    t: &mut T,
    requested: u64,
    deadline: &mut Deadline<'_>,
    setup: impl FnOnce(&mut T, &Negotiation) -> Result<R, InitError>,
) -> Result<(Negotiation, R), InitError> {
    reset(t, deadline)?;
    let mut status = DeviceStatus::ACKNOWLEDGE;
    t.set_status(status);
    status = status.union(DeviceStatus::DRIVER);
    t.set_status(status);

    let legacy = t.is_legacy();
    let mut offered = t.device_features();
    if legacy {
        offered &= u64::from(u32::MAX);
    }
    if !legacy && offered & common::VERSION_1 == 0 {
        fail(t);
        return Err(InitError::NoVersion1 { offered });
    }
    let accepted = negotiate(offered, requested, legacy);
    let negotiation = Negotiation {
        transport: t.name(),
        device_type: t.device_type(),
        legacy,
        offered,
        requested,
        accepted,
    };
    t.set_driver_features(accepted);
    if !legacy {
        status = status.union(DeviceStatus::FEATURES_OK);
        t.set_status(status);
        let now = t.status();
        if !now.contains(DeviceStatus::FEATURES_OK) {
            fail(t);
            return Err(InitError::FeaturesNotAccepted {
                offered,
                accepted,
                status: now.bits(),
            });
        }
    }

    let result = match setup(t, &negotiation) {
        Ok(r) => r,
        Err(e) => {
            fail(t);
            return Err(e);
        }
    };

    t.set_status(status.union(DeviceStatus::DRIVER_OK));
    let now = t.status();
    if now.contains(DeviceStatus::FAILED) || now.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        fail(t);
        return Err(InitError::DeviceFailed { status: now.bits() });
    }
    Ok((negotiation, result))
}

/// The queue size to use: the driver's preference within the device's maximum (or the maximum
/// where the transport cannot resize), checked for the ring format.
pub fn choose_queue_size(
    queue: u16,
    max: u16,
    preferred: u16,
    fixed: bool,
    format: RingFormat,
) -> Result<u16, InitError> {
    if max == 0 {
        return Err(InitError::QueueUnavailable { queue });
    }
    let size = if fixed { max } else { preferred.min(max) };
    let invalid = size == 0
        || size > MAX_QUEUE_SIZE
        // A split ring's size is always a power of two; a device offering anything else as its
        // maximum is broken, even if a smaller size would do.
        || (format == RingFormat::Split && !(size.is_power_of_two() && max.is_power_of_two()));
    if invalid {
        return Err(InitError::QueueSizeInvalid { queue, max, size });
    }
    Ok(size)
}

/// Builds queue `queue` (split or packed as negotiated, legacy layout on legacy transports) and
/// hands it to the device: size, addresses, enable. For the `setup` closure of [`init`].
/// `constraints` are the device's DMA limits ([`DmaConstraints::NONE`] for most).
pub fn setup_queue<'d, T: Transport + ?Sized>(
    t: &mut T,
    dma: &'d dyn Dma,
    negotiation: &Negotiation,
    queue: u16,
    preferred_size: u16,
    constraints: &DmaConstraints,
) -> Result<Virtqueue<'d>, InitError> {
    let format = negotiation.ring_format();
    let max = t.max_queue_size(queue);
    let fixed = t.queue_size_fixed();
    let size = choose_queue_size(queue, max, preferred_size, fixed, format)?;
    if t.queue_in_use(queue) {
        return Err(InitError::QueueInUse { queue });
    }
    let config = QueueConfig {
        index: queue,
        size,
        event_idx: negotiation.has(common::RING_EVENT_IDX),
        indirect: negotiation.has(common::RING_INDIRECT_DESC),
        legacy_layout: negotiation.legacy,
    };
    let q = Virtqueue::new(dma, format, config, constraints)
        .map_err(|error| InitError::Queue { queue, error })?;
    let handed_over = (|| {
        if !fixed {
            t.set_queue_size(queue, size)?;
        }
        t.set_queue_addresses(queue, &q.addresses())
    })();
    if let Err(e) = handed_over {
        // SAFETY: the queue was never enabled and DRIVER_OK is not set, so the device does not
        // use it (a legacy transport writes its PFN only after the layout check passed, which is
        // the last step that can fail).
        let _ = unsafe { q.free() };
        return Err(e.into());
    }
    t.enable_queue(queue);
    Ok(q)
}
