//! The network echo backend: a loopback TCP server that QEMU's `-netdev stream` connects to, and
//! that sends every guest frame back as docs/report.md ("The data the guest moves") says.
//!
//! QEMU's stream netdev (and the older `-netdev socket`) frames each Ethernet frame on the TCP
//! stream with its length as a 4-byte big-endian number in front, in both directions (checked
//! against QEMU 10 in tests/virtio.rs, `echo_backend_speaks_qemu_stream_framing`).
//!
//! The guest's frame `seq` (89 bytes):
//!
//! | bytes | what |
//! |---|---|
//! | 0..6 | destination ff:ff:ff:ff:ff:ff |
//! | 6..12 | source: the device's MAC |
//! | 12..14 | ethertype 0x88b5 |
//! | 14..21 | `sg-echo` |
//! | 21..25 | `seq`, big-endian u32 |
//! | 25..89 | 64 pattern bytes: seed 0x4e4554, offset `seq * 64` |
//!
//! The echo swaps the two MAC addresses and inverts (XOR 0xff) the 64 pattern bytes. Only
//! well-formed frames are echoed; anything else is counted and described in
//! [`EchoStats::problems`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use secure_guest::pattern;

use crate::devices::Mac;

/// The frame layout of docs/report.md, as the guest's net driver defines it: one definition, so
/// the backend and the guest cannot drift apart. (The echo rule itself is written out below,
/// independently of the guest's check.)
pub use secure_guest::virtio::net::{
    ETHERTYPE, FRAME_LEN, MAGIC, PATTERN_AT, PATTERN_LEN, PATTERN_SEED,
};
/// The guest's default `sg.net.frames`.
pub const DEFAULT_FRAMES: u32 = 8;

/// A length prefix above this is not a frame (QEMU's own limit is 69632, NET_BUFSIZE): the
/// stream is out of step, and the connection is dropped.
const MAX_FRAME: usize = 70_000;
/// At most this many problems are kept.
const MAX_PROBLEMS: usize = 16;
/// A backend never outlives this, whatever its owner does.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How often the server thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// The frame the guest sends as number `seq` from `mac`.
pub fn guest_frame(mac: Mac, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&Mac::BROADCAST.0);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&seq.to_be_bytes());
    let mut p = [0u8; PATTERN_LEN];
    pattern::fill(PATTERN_SEED, u64::from(seq) * PATTERN_LEN as u64, &mut p);
    f.extend_from_slice(&p);
    f
}

/// A well-formed guest frame, taken apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFrame {
    pub source: Mac,
    pub seq: u32,
}

/// Checks a frame from the guest against the contract: what it is, or what is wrong with it.
pub fn parse_guest_frame(f: &[u8]) -> Result<GuestFrame, String> {
    if f.len() != FRAME_LEN {
        return Err(format!("{} bytes, not {FRAME_LEN}", f.len()));
    }
    if f[0..6] != Mac::BROADCAST.0 {
        return Err(format!(
            "destination {} is not ff:ff:ff:ff:ff:ff",
            mac_at(f, 0)
        ));
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    if ethertype != ETHERTYPE {
        return Err(format!("ethertype {ethertype:#06x}, not {ETHERTYPE:#06x}"));
    }
    if &f[14..21] != MAGIC {
        return Err(format!(
            "magic {:?}, not \"sg-echo\"",
            String::from_utf8_lossy(&f[14..21])
        ));
    }
    let seq = u32::from_be_bytes([f[21], f[22], f[23], f[24]]);
    let at = u64::from(seq) * PATTERN_LEN as u64;
    if let Some(bad) = pattern::first_mismatch(PATTERN_SEED, at, &f[PATTERN_AT..]) {
        return Err(format!("seq {seq}: pattern byte {} is wrong", bad - at));
    }
    Ok(GuestFrame {
        source: mac_at(f, 6),
        seq,
    })
}

/// The echo of a well-formed guest frame: MACs swapped, pattern bytes inverted.
pub fn echo_frame(f: &[u8]) -> Result<Vec<u8>, String> {
    parse_guest_frame(f)?;
    let mut e = f.to_vec();
    e[0..6].copy_from_slice(&f[6..12]);
    e[6..12].copy_from_slice(&f[0..6]);
    for b in &mut e[PATTERN_AT..] {
        *b ^= 0xff;
    }
    Ok(e)
}

fn mac_at(f: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&f[at..at + 6]);
    Mac(m)
}

/// What the backend saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// TCP connections accepted (QEMU makes one).
    pub connections: u32,
    /// Frames received, well-formed or not.
    pub frames_seen: u64,
    /// Frames that follow the contract.
    pub frames_well_formed: u64,
    /// Echoes written back.
    pub frames_echoed: u64,
    /// How often each `seq` arrived (well-formed frames only).
    pub seqs: BTreeMap<u32, u32>,
    /// Source MACs of well-formed frames.
    pub sources: Vec<Mac>,
    /// What was wrong, at most 16 entries.
    pub problems: Vec<String>,
}

impl EchoStats {
    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }
}

#[derive(Default)]
struct Shared {
    stats: Mutex<EchoStats>,
    connected: Condvar,
}

/// A running echo backend on 127.0.0.1. Stops (and joins its thread) on [`EchoBackend::stop`]
/// or drop.
pub struct EchoBackend {
    port: u16,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EchoBackend {
    /// Listens on an ephemeral loopback port.
    pub fn start() -> io::Result<EchoBackend> {
        Self::start_on(0)
    }

    /// Listens on `127.0.0.1:port` (0: any free port).
    pub fn start_on(port: u16) -> io::Result<EchoBackend> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let thread = {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("echo-{port}"))
                .spawn(move || serve(listener, &stop, &shared))?
        };
        Ok(EchoBackend {
            port,
            stop,
            shared,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until a client has connected, at most `timeout`; whether one has.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let stats = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        let (stats, _) = self
            .shared
            .connected
            .wait_timeout_while(stats, timeout, |s| s.connections == 0)
            .unwrap_or_else(|e| e.into_inner());
        stats.connections > 0
    }

    /// What was seen so far.
    pub fn stats(&self) -> EchoStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the server (closing any connection) and returns what it saw.
    pub fn stop(mut self) -> EchoStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(listener: TcpListener, stop: &AtomicBool, shared: &Shared) {
    let started = Instant::now();
    let done = || stop.load(Ordering::SeqCst) || started.elapsed() > MAX_LIFETIME;
    while !done() {
        match listener.accept() {
            Ok((conn, _)) => {
                {
                    let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.connections += 1;
                }
                shared.connected.notify_all();
                if let Err(e) = serve_connection(conn, &done, shared) {
                    let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.problem(format!("connection: {e}"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.problem(format!("accept: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Reads length-prefixed frames until the peer closes or `done`, echoing the good ones.
fn serve_connection(
    mut conn: TcpStream,
    done: &dyn Fn() -> bool,
    shared: &Shared,
) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(POLL))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    conn.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    while !done() {
        match conn.read(&mut chunk) {
            Ok(0) => {
                if !buf.is_empty() {
                    let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.problem(format!("{} bytes of a cut-off frame at close", buf.len()));
                }
                return Ok(());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut used = 0;
        while buf.len() - used >= 4 {
            let len = u32::from_be_bytes([buf[used], buf[used + 1], buf[used + 2], buf[used + 3]])
                as usize;
            if len > MAX_FRAME {
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.problem(format!(
                    "length prefix {len} is not a frame: the stream is not QEMU's framing"
                ));
                return Ok(());
            }
            if buf.len() - used - 4 < len {
                break;
            }
            let frame = &buf[used + 4..used + 4 + len];
            used += 4 + len;
            let reply = {
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.frames_seen += 1;
                let n = s.frames_seen;
                match parse_guest_frame(frame).and_then(|g| echo_frame(frame).map(|e| (g, e))) {
                    Ok((g, echo)) => {
                        s.frames_well_formed += 1;
                        *s.seqs.entry(g.seq).or_default() += 1;
                        if !s.sources.contains(&g.source) {
                            s.sources.push(g.source);
                        }
                        Some(echo)
                    }
                    Err(why) => {
                        s.problem(format!("frame {n}: {why}"));
                        None
                    }
                }
            };
            if let Some(echo) = reply {
                let mut out = Vec::with_capacity(4 + echo.len());
                out.extend_from_slice(&(echo.len() as u32).to_be_bytes());
                out.extend_from_slice(&echo);
                conn.write_all(&out)?;
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.frames_echoed += 1;
            }
        }
        buf.drain(..used);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x53, 0x47, 0x01]);

    /// A fake QEMU: connects, sends framed frames, reads framed echoes.
    struct FakeQemu(TcpStream);

    impl FakeQemu {
        fn connect(port: u16) -> FakeQemu {
            let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            FakeQemu(s)
        }
        fn send(&mut self, frame: &[u8]) {
            self.send_raw(&[&(frame.len() as u32).to_be_bytes()[..], frame].concat());
        }
        fn send_raw(&mut self, bytes: &[u8]) {
            self.0.write_all(bytes).unwrap();
        }
        fn recv(&mut self) -> Vec<u8> {
            let mut len = [0u8; 4];
            self.0.read_exact(&mut len).unwrap();
            let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
            self.0.read_exact(&mut f).unwrap();
            f
        }
    }

    /// Polls until `cond` holds on the stats (bounded).
    fn until(b: &EchoBackend, cond: impl Fn(&EchoStats) -> bool) -> EchoStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = b.stats();
            if cond(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn frame_layout() {
        let f = guest_frame(MAC, 3);
        assert_eq!(f.len(), 89);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &MAC.0);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..21], b"sg-echo");
        assert_eq!(&f[21..25], &[0, 0, 0, 3]);
        let mut p = [0u8; 64];
        pattern::fill(0x4e4554, 192, &mut p);
        assert_eq!(&f[25..], &p);
        assert_eq!(
            parse_guest_frame(&f),
            Ok(GuestFrame {
                source: MAC,
                seq: 3
            })
        );

        let e = echo_frame(&f).unwrap();
        assert_eq!(&e[..6], &MAC.0);
        assert_eq!(&e[6..12], &[0xff; 6]);
        assert_eq!(&e[12..25], &f[12..25]);
        assert!(e[25..].iter().zip(&f[25..]).all(|(a, b)| a ^ b == 0xff));
    }

    #[test]
    fn malformed_frames_are_named() {
        let good = guest_frame(MAC, 5);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..88].to_vec(), "88 bytes"),
            ([&good[..], &[0]].concat(), "90 bytes"),
            (
                {
                    let mut f = good.clone();
                    f[0] = 0x52;
                    f
                },
                "destination",
            ),
            (
                {
                    let mut f = good.clone();
                    f[13] = 0;
                    f
                },
                "ethertype",
            ),
            (
                {
                    let mut f = good.clone();
                    f[15] = b'G';
                    f
                },
                "magic",
            ),
            (
                {
                    let mut f = good.clone();
                    f[24] = 6;
                    f
                },
                "pattern byte 0",
            ),
            (
                {
                    let mut f = good.clone();
                    f[88] ^= 1;
                    f
                },
                "pattern byte 63",
            ),
        ];
        for (f, want) in cases {
            let e = parse_guest_frame(&f).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
            assert!(echo_frame(&f).is_err());
        }
    }

    #[test]
    fn echoes_over_loopback() {
        let b = EchoBackend::start().unwrap();
        assert!(!b.wait_connected(Duration::from_millis(10)));
        let mut q = FakeQemu::connect(b.port());
        assert!(b.wait_connected(Duration::from_secs(5)));
        for seq in 0..8 {
            let f = guest_frame(MAC, seq);
            q.send(&f);
            assert_eq!(q.recv(), echo_frame(&f).unwrap(), "seq {seq}");
        }
        // Several frames in one write, and one split across writes.
        let (a, c) = (guest_frame(MAC, 8), guest_frame(MAC, 9));
        let mut both = Vec::new();
        for f in [&a, &c] {
            both.extend_from_slice(&(f.len() as u32).to_be_bytes());
            both.extend_from_slice(f);
        }
        q.send_raw(&both[..50]);
        std::thread::sleep(Duration::from_millis(50));
        q.send_raw(&both[50..]);
        assert_eq!(q.recv(), echo_frame(&a).unwrap());
        assert_eq!(q.recv(), echo_frame(&c).unwrap());
        // A bad frame is counted, not echoed; the next good one still is.
        q.send(&guest_frame(MAC, 10)[..60]);
        q.send(&guest_frame(MAC, 10));
        assert_eq!(q.recv(), echo_frame(&guest_frame(MAC, 10)).unwrap());
        drop(q);
        let s = until(&b, |s| s.frames_seen == 12 && s.frames_echoed == 11);
        let s2 = b.stop();
        assert_eq!(s, s2);
        assert_eq!(s.connections, 1);
        assert_eq!(s.frames_seen, 12);
        assert_eq!(s.frames_well_formed, 11);
        assert_eq!(s.frames_echoed, 11);
        assert_eq!(s.seqs.len(), 11);
        assert!(s.seqs.values().all(|&n| n == 1));
        assert_eq!(s.sources, vec![MAC]);
        assert_eq!(s.problems.len(), 1);
        assert!(
            s.problems[0].contains("frame 11: 60 bytes"),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn garbage_length_drops_the_connection() {
        let b = EchoBackend::start().unwrap();
        let mut q = FakeQemu::connect(b.port());
        q.send_raw(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        let mut x = [0u8; 1];
        // The backend closes its end: EOF (or a reset), never an echo.
        let r = q.0.read(&mut x);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let s = b.stop();
        assert!(
            s.problems[0].contains("not QEMU's framing"),
            "{:?}",
            s.problems
        );
        assert_eq!(s.frames_seen, 0);
    }

    #[test]
    fn stop_is_prompt_with_an_idle_client() {
        let b = EchoBackend::start().unwrap();
        let _q = FakeQemu::connect(b.port());
        assert!(b.wait_connected(Duration::from_secs(5)));
        let t = Instant::now();
        let s = b.stop();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(s.connections, 1);
        assert_eq!(s.frames_seen, 0);
    }

    #[test]
    fn cut_off_frame_at_close() {
        let b = EchoBackend::start().unwrap();
        let mut q = FakeQemu::connect(b.port());
        q.send_raw(&[0, 0, 0, 89, 1, 2]);
        drop(q);
        let s = until(&b, |s| !s.problems.is_empty());
        assert!(s.problems[0].contains("cut-off"), "{:?}", s.problems);
    }
}
