//! A minimal QMP client: enough to start a guest that QEMU holds with `-S` (`cont`) once the
//! harness's backends are connected, to ask QEMU a question while it runs, and to dump guest
//! memory of a run held at shutdown (`query-status`, `pmemsave`, `quit`). Events that arrive
//! while a command waits for its answer are kept ([`Qmp::events`]), so that a `SHUTDOWN` is never
//! lost to a `query-status` poll.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// One QMP session, after capability negotiation.
#[derive(Debug)]
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events seen so far, oldest first (at most [`MAX_EVENTS`]).
    events: Vec<Value>,
}

/// Events kept; later ones are dropped (a guest cannot make the harness grow without bound).
pub const MAX_EVENTS: usize = 1000;

impl Qmp {
    /// Connects to the socket QEMU serves (retrying until it exists, at most `timeout`), reads
    /// the greeting and leaves capability negotiation mode. Every later read and write has
    /// `timeout` too.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        Self::connect_while(socket, timeout, || true)
    }

    /// [`Qmp::connect`], giving up early when `alive` says QEMU is gone.
    pub fn connect_while(
        socket: &Path,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match connect_unix(socket) {
                Ok(s) => break s,
                Err(_) if !alive() => bail!("QEMU exited before its QMP socket answered"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("connecting to QMP at {} for {timeout:?}", socket.display())
                    });
                }
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
            events: Vec::new(),
        };
        let greeting = qmp.read_message().context("reading the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            bail!("not a QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value (events in between are skipped).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("sending QMP {command}"))?;
        // Events can come first; a bounded number of them.
        for _ in 0..1000 {
            let m = self.read_message()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                bail!("QMP {command} failed: {e}");
            }
            if m.get("event").is_some() && self.events.len() < MAX_EVENTS {
                self.events.push(m);
            }
        }
        bail!("QMP {command}: no answer among 1000 messages")
    }

    /// Every event seen so far (`{"event": "SHUTDOWN", "data": {...}, "timestamp": {...}}`).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// The first event named `name` seen so far.
    pub fn event(&self, name: &str) -> Option<&Value> {
        self.events.iter().find(|e| e["event"] == name)
    }

    /// `query-status`: `running`, `paused`, `prelaunch`, `shutdown` (held at the guest's
    /// power-off by `-action shutdown=pause`), ...
    pub fn query_status(&mut self) -> Result<String> {
        let r = self.execute("query-status", None)?;
        r["status"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("query-status answered {r}"))
    }

    /// How long a read or write may take from now on.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))?;
        Ok(())
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading from QMP")?;
        if n == 0 {
            bail!("QMP closed the connection");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}"))
    }
}

/// `sockaddr_un` holds 108 bytes: a longer path is reached through the directory's file
/// descriptor instead (`/proc/self/fd/N/name`).
fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path);
    };
    let dir = std::fs::File::open(dir)?;
    use std::os::fd::AsRawFd;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    UnixStream::connect(short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A fake QMP server: greeting, capabilities, then one event and the answer to `cont`.
    #[test]
    fn handshake_and_command_against_a_fake_server() {
        let dir = tempfile::tempdir().unwrap();
        // A long path forces the /proc/self/fd route.
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("qmp.sock");
        assert!(sock.as_os_str().len() > 108);
        let listener = {
            // Bind through the same short route.
            let d = std::fs::File::open(&deep).unwrap();
            use std::os::fd::AsRawFd;
            let short = Path::new("/proc/self/fd")
                .join(d.as_raw_fd().to_string())
                .join("qmp.sock");
            UnixListener::bind(short).unwrap()
        };
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut seen = String::new();
            let mut buf = [0u8; 256];
            let mut answered = 0;
            while answered < 2 {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                seen.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                while let Some(i) = seen.find('\n') {
                    let line: String = seen.drain(..=i).collect();
                    let v: Value = serde_json::from_str(&line).unwrap();
                    if v["execute"] == "cont" {
                        s.write_all(b"{\"event\": \"RESUME\", \"data\": {}}\r\n")
                            .unwrap();
                    }
                    s.write_all(b"{\"return\": {}}\r\n").unwrap();
                    answered += 1;
                }
            }
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.execute("cont", None).unwrap(), json!({}));
        server.join().unwrap();
        // The event that came before the answer is kept.
        assert_eq!(q.events().len(), 1);
        assert!(q.event("RESUME").is_some());
        assert!(q.event("SHUTDOWN").is_none());
    }

    #[test]
    fn gives_up_when_qemu_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let e = Qmp::connect_while(
            &dir.path().join("none.sock"),
            Duration::from_secs(10),
            || false,
        );
        assert!(e.unwrap_err().to_string().contains("exited"));
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn no_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let e = Qmp::connect(&dir.path().join("none.sock"), Duration::from_millis(50));
        assert!(e.is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
