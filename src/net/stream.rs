//! A TCP (with TCP_NODELAY) or unix-socket stream whose connect, writes and reads each take the
//! call's deadline, wait in slices, retry interrupted system calls and run the interrupt hook.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{SLICE, check_interrupt, remaining};
use crate::error::{Error, ErrorKind};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `host:port`.
    Tcp(String, u16),
    /// A unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp(host, port) => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A connected stream. `label` ("memcached host:port") starts every error message.
pub struct Stream {
    inner: Inner,
    label: String,
    /// The socket timeouts last set, so the common case costs no system call.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

fn io_error(label: &str, what: &str, e: &std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("{label}: {what}: {e}"))
}

fn is_wait_over(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted)
}

/// The next wait: a slice, or what is left of the deadline when that is shorter (never zero,
/// which the socket options read as "forever").
fn next_wait(left: Duration) -> Duration {
    left.min(SLICE).max(Duration::from_millis(1))
}

impl Stream {
    /// Connect to `addr` before `deadline`.
    pub fn connect(addr: &Address, deadline: Instant, label: &str) -> Result<Self, Error> {
        let inner = match addr {
            Address::Tcp(host, port) => {
                let addrs: Vec<_> =
                    (host.as_str(), *port).to_socket_addrs().map_err(|e| io_error(label, "resolve", &e))?.collect();
                let mut last = None;
                let mut connected = None;
                'addrs: for a in &addrs {
                    loop {
                        let left = remaining(deadline, label, "connect")?;
                        // Longer slices than for reads: each retry starts the handshake again.
                        match TcpStream::connect_timeout(a, left.min(SLICE * 4).max(Duration::from_millis(1))) {
                            Ok(s) => {
                                connected = Some(s);
                                break 'addrs;
                            }
                            Err(e) if is_wait_over(&e) => check_interrupt()?,
                            Err(e) => {
                                last = Some(e);
                                break;
                            }
                        }
                    }
                }
                let s = match (connected, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(io_error(label, "connect", &e)),
                    (None, None) => return Err(Error::new(ErrorKind::Io, format!("{label}: no address"))),
                };
                s.set_nodelay(true).map_err(|e| io_error(label, "TCP_NODELAY", &e))?;
                Inner::Tcp(s)
            }
            Address::Unix(path) => Inner::Unix(UnixStream::connect(path).map_err(|e| io_error(label, "connect", &e))?),
        };
        Ok(Self { inner, label: label.to_owned(), read_timeout: None, write_timeout: None })
    }

    /// The label errors start with.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn set_read_timeout(&mut self, wait: Duration) -> Result<(), Error> {
        if self.read_timeout != Some(wait) {
            match &self.inner {
                Inner::Tcp(s) => s.set_read_timeout(Some(wait)),
                Inner::Unix(s) => s.set_read_timeout(Some(wait)),
            }
            .map_err(|e| io_error(&self.label, "set timeout", &e))?;
            self.read_timeout = Some(wait);
        }
        Ok(())
    }

    fn set_write_timeout(&mut self, wait: Duration) -> Result<(), Error> {
        if self.write_timeout != Some(wait) {
            match &self.inner {
                Inner::Tcp(s) => s.set_write_timeout(Some(wait)),
                Inner::Unix(s) => s.set_write_timeout(Some(wait)),
            }
            .map_err(|e| io_error(&self.label, "set timeout", &e))?;
            self.write_timeout = Some(wait);
        }
        Ok(())
    }

    /// Read some bytes (at least one) before `deadline`. A closed connection is an error.
    pub fn read(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, Error> {
        loop {
            let left = remaining(deadline, &self.label, "no complete reply")?;
            self.set_read_timeout(next_wait(left))?;
            let result = match &mut self.inner {
                Inner::Tcp(s) => s.read(buf),
                Inner::Unix(s) => s.read(buf),
            };
            match result {
                Ok(0) if !buf.is_empty() => {
                    return Err(Error::new(ErrorKind::Io, format!("{}: connection closed by the server", self.label)));
                }
                Ok(n) => return Ok(n),
                Err(e) if is_wait_over(&e) => check_interrupt()?,
                Err(e) => return Err(io_error(&self.label, "receive", &e)),
            }
        }
    }

    /// Write all of `parts`, in order, with vectored writes (no copy into one buffer), before
    /// `deadline`.
    pub fn write_all(&mut self, parts: &[&[u8]], deadline: Instant) -> Result<(), Error> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().filter(|p| !p.is_empty()).map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let left = remaining(deadline, &self.label, "send")?;
            self.set_write_timeout(next_wait(left))?;
            let result = match &mut self.inner {
                Inner::Tcp(s) => s.write_vectored(rest),
                Inner::Unix(s) => s.write_vectored(rest),
            };
            match result {
                Ok(0) => {
                    return Err(Error::new(ErrorKind::Io, format!("{}: connection closed while sending", self.label)));
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if is_wait_over(&e) => check_interrupt()?,
                Err(e) => return Err(io_error(&self.label, "send", &e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_silent_peer_times_out_at_the_deadline_not_later() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let addr = Address::Tcp("127.0.0.1".into(), port);
        let start = Instant::now();
        let mut s = Stream::connect(&addr, start + Duration::from_secs(1), "test").unwrap();
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf, start + Duration::from_millis(180)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(180) && took < Duration::from_millis(400), "{took:?}");
    }

    #[test]
    fn a_deadline_already_past_fails_without_waiting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp("127.0.0.1".into(), listener.local_addr().unwrap().port());
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(Stream::connect(&addr, past, "test").err().map(|e| e.kind()), Some(ErrorKind::Timeout));
    }
}
