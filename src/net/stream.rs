//! A TCP (with TCP_NODELAY) or unix-socket stream, optionally under TLS, whose connect (and
//! handshake), writes and reads each take the call's deadline, wait in slices, retry interrupted
//! system calls and run the interrupt hook.

use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::tls::{Tls, tls_error};
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

impl Inner {
    /// The socket, for the options and flags std does not offer.
    fn sock(&self) -> SockRef<'_> {
        match self {
            Inner::Tcp(s) => SockRef::from(s),
            Inner::Unix(s) => SockRef::from(s),
        }
    }
}

/// The socket itself, for rustls to read records from and write them to.
impl Read for Inner {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Inner::Tcp(s) => s.read(buf),
            Inner::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Inner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Inner::Tcp(s) => s.write(buf),
            Inner::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Inner::Tcp(s) => s.write_vectored(bufs),
            Inner::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A connected stream. `label` ("memcached host:port") starts every error message.
pub struct Stream {
    inner: Inner,
    /// The TLS session over `inner`, once [`Stream::start_tls`] completed its handshake.
    tls: Option<Box<rustls::ClientConnection>>,
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
        Ok(Self { inner, tls: None, label: label.to_owned(), read_timeout: None, write_timeout: None })
    }

    /// Connect to `addr`, then (with `tls`) complete a TLS handshake for `host`, all before
    /// `deadline`.
    pub fn connect_with(addr: &Address, tls: Option<&Tls>, deadline: Instant, label: &str) -> Result<Self, Error> {
        let mut stream = Self::connect(addr, deadline, label)?;
        if let Some(tls) = tls {
            let host = match addr {
                Address::Tcp(host, _) => host.as_str(),
                // TLS over a unix socket: the certificate can only name the local host.
                Address::Unix(_) => "localhost",
            };
            stream.tls = Some(Box::new(tls.session(host, label)?));
            stream.handshake(deadline)?;
        }
        Ok(stream)
    }

    /// Whether the stream is under TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn handshake(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            let Some(session) = self.tls.as_deref() else { return Ok(()) };
            if !session.is_handshaking() {
                break;
            }
            if session.wants_write() {
                self.flush_tls(deadline)?;
            } else {
                self.read_records(deadline, "TLS handshake")?;
            }
        }
        // The client's last flight (its Finished, and its certificate for mutual TLS).
        self.flush_tls(deadline)
    }

    /// Read what records have arrived (waiting for at least one byte) and process them.
    fn read_records(&mut self, deadline: Instant, what: &str) -> Result<(), Error> {
        loop {
            let left = match remaining(deadline, &self.label, what) {
                Ok(left) => left,
                // Past the deadline, records that have arrived are still taken (see `read`).
                Err(late) => return self.without_waiting(Stream::read_records_once).unwrap_or(Err(late)),
            };
            self.set_read_timeout(next_wait(left))?;
            let Some(session) = self.tls.as_deref_mut() else { return Ok(()) };
            match session.read_tls(&mut self.inner) {
                Ok(0) => {
                    return Err(Error::new(ErrorKind::Io, format!("{}: connection closed by the server", self.label)));
                }
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        // Tell the server why (an alert), as far as the socket takes it at once.
                        let _ = session.write_tls(&mut self.inner);
                        return Err(tls_error(&self.label, &e));
                    }
                    return Ok(());
                }
                Err(e) if is_wait_over(&e) => check_interrupt()?,
                Err(e) => return Err(io_error(&self.label, "receive", &e)),
            }
        }
    }

    /// One read of the records that are there, processed.
    fn read_records_once(&mut self) -> std::io::Result<Result<(), Error>> {
        let Some(session) = self.tls.as_deref_mut() else { return Ok(Ok(())) };
        match session.read_tls(&mut self.inner)? {
            0 => Ok(Err(Error::new(ErrorKind::Io, format!("{}: connection closed by the server", self.label)))),
            _ => Ok(session.process_new_packets().map(|_| ()).map_err(|e| tls_error(&self.label, &e))),
        }
    }

    /// Run `f` with the socket non-blocking: `None` when it would have had to wait (or the
    /// socket failed), else what `f` made of the bytes that had arrived.
    fn without_waiting<T>(&mut self, f: impl FnOnce(&mut Self) -> std::io::Result<T>) -> Option<T> {
        self.inner.sock().set_nonblocking(true).ok()?;
        let result = f(self);
        // Blocking again (with the read/write timeouts set) for the next exchange; a socket
        // that refuses is no use for one.
        self.inner.sock().set_nonblocking(false).ok()?;
        result.ok()
    }

    /// Send every TLS record waiting to go out.
    fn flush_tls(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            let Some(session) = self.tls.as_deref_mut() else { return Ok(()) };
            if !session.wants_write() {
                return Ok(());
            }
            let left = remaining(deadline, &self.label, "send")?;
            self.set_write_timeout(next_wait(left))?;
            let Some(session) = self.tls.as_deref_mut() else { return Ok(()) };
            match session.write_tls(&mut self.inner) {
                Ok(0) => {
                    return Err(Error::new(ErrorKind::Io, format!("{}: connection closed while sending", self.label)));
                }
                Ok(_) => {}
                Err(e) if is_wait_over(&e) => check_interrupt()?,
                Err(e) => return Err(io_error(&self.label, "send", &e)),
            }
        }
    }

    fn read_tls_plain(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, Error> {
        loop {
            let Some(session) = self.tls.as_deref_mut() else { return Ok(0) };
            match session.reader().read(buf) {
                Ok(0) if !buf.is_empty() => {
                    return Err(Error::new(ErrorKind::Io, format!("{}: connection closed by the server", self.label)));
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("{}: connection closed by the server (without a TLS close_notify)", self.label),
                    ));
                }
                Err(e) => return Err(io_error(&self.label, "receive", &e)),
            }
            // Records the session wants sent first (a key update's answer, an alert).
            self.flush_tls(deadline)?;
            self.read_records(deadline, "no complete reply")?;
        }
    }

    fn write_tls_plain(&mut self, parts: &[&[u8]], deadline: Instant) -> Result<(), Error> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().filter(|p| !p.is_empty()).map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let Some(session) = self.tls.as_deref_mut() else { return Ok(()) };
            // Encrypted into the session's buffer (up to its limit), then sent.
            let n = session.writer().write_vectored(rest).map_err(|e| io_error(&self.label, "send", &e))?;
            IoSlice::advance_slices(&mut rest, n);
            self.flush_tls(deadline)?;
        }
        Ok(())
    }

    /// Whether a connection that sat idle can no longer be used: the server closed it (a
    /// restart, an idle timeout, CLIENT KILL), reset it, or sent something no request asked for.
    /// Asked without waiting, before a pooled connection carries a request, so a server that went
    /// away while the connection was idle costs a new connection, never a failed call, whatever
    /// the command. (Under TLS, records that arrived, such as TLS 1.3 session tickets, are
    /// processed first: only a close or application data makes it stale.)
    pub fn is_stale(&mut self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit()];
        match self.inner.sock().recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Ok(n) if n > 0 && self.tls.is_some() => self.tls_is_stale(),
            _ => true,
        }
    }

    /// Records arrived on an idle TLS connection: whether they closed it or carried data.
    fn tls_is_stale(&mut self) -> bool {
        let Some(session) = self.tls.as_deref_mut() else { return true };
        // The bytes are there already: this read does not wait.
        match session.read_tls(&mut self.inner) {
            Ok(n) if n > 0 => {}
            _ => return true,
        }
        if session.process_new_packets().is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        !matches!(session.reader().read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Ask the kernel to probe an idle TCP connection: after `idle` without traffic, a probe
    /// every `interval`, and the connection reset after `probes` unanswered ones (a peer that
    /// vanished without a reset, a network partition). Nothing for a unix socket (a peer that
    /// dies closes it).
    pub fn set_keepalive(&mut self, idle: Duration, interval: Duration, probes: u32) -> Result<(), Error> {
        let Inner::Tcp(_) = &self.inner else { return Ok(()) };
        let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(probes);
        self.inner.sock().set_tcp_keepalive(&keepalive).map_err(|e| io_error(&self.label, "set keepalive", &e))
    }

    /// Put the socket in non-blocking mode for good: for a connection that is only ever read
    /// with [`Stream::read_arrived`] and written with [`Stream::send_arrived`] (the near cache's
    /// invalidation connection, read before every local hit: one system call each).
    /// The socket's descriptor (for an event loop to watch).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match &self.inner {
            Inner::Tcp(s) => s.as_raw_fd(),
            Inner::Unix(s) => s.as_raw_fd(),
        }
    }

    pub fn set_nonblocking(&mut self) -> Result<(), Error> {
        self.inner.sock().set_nonblocking(true).map_err(|e| io_error(&self.label, "set non-blocking", &e))
    }

    /// On a non-blocking socket: read what has already arrived, `None` when nothing has. A
    /// closed connection is an error.
    pub fn read_arrived(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        let closed = || Error::new(ErrorKind::Io, format!("{}: connection closed by the server", self.label));
        loop {
            let Some(session) = self.tls.as_deref_mut() else {
                return match self.inner.read(buf) {
                    Ok(0) if !buf.is_empty() => Err(closed()),
                    Ok(n) => Ok(Some(n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(io_error(&self.label, "receive", &e)),
                };
            };
            match session.reader().read(buf) {
                Ok(0) if !buf.is_empty() => return Err(closed()),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io_error(&self.label, "receive", &e)),
            }
            match session.read_tls(&mut self.inner) {
                Ok(0) => return Err(closed()),
                Ok(_) => {
                    if let Err(e) = session.process_new_packets() {
                        return Err(tls_error(&self.label, &e));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.label, "receive", &e)),
            }
        }
    }

    /// On a non-blocking socket: send a few bytes at once (a heartbeat); a socket that cannot
    /// take them now is as good as dead to its caller.
    pub fn send_arrived(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let full = || Error::new(ErrorKind::Io, format!("{}: the connection takes no more bytes", self.label));
        if let Some(session) = self.tls.as_deref_mut() {
            session.writer().write_all(bytes).map_err(|e| io_error(&self.label, "send", &e))?;
            while session.wants_write() {
                match session.write_tls(&mut self.inner) {
                    Ok(0) => return Err(full()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(full()),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error(&self.label, "send", &e)),
                }
            }
            return Ok(());
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.inner.write(rest) {
                Ok(0) => return Err(full()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(full()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.label, "send", &e)),
            }
        }
        Ok(())
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
    ///
    /// Once the deadline has passed, bytes that have already arrived are still read (without
    /// waiting): a call over several servers that waited its whole deadline on a silent one then
    /// still takes the replies the others sent in time, and they are not charged with its
    /// timeout.
    pub fn read(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, Error> {
        if self.tls.is_some() {
            return self.read_tls_plain(buf, deadline);
        }
        loop {
            let left = match remaining(deadline, &self.label, "no complete reply") {
                Ok(left) => left,
                Err(late) => {
                    return match self.without_waiting(|s| s.inner.read(buf)) {
                        Some(0) if !buf.is_empty() => {
                            Err(Error::new(ErrorKind::Io, format!("{}: connection closed by the server", self.label)))
                        }
                        Some(n) => Ok(n),
                        None => Err(late),
                    };
                }
            };
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
        if self.tls.is_some() {
            return self.write_tls_plain(parts, deadline);
        }
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
    fn bytes_that_arrived_are_read_after_the_deadline_without_waiting() {
        use std::io::Write as _;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp("127.0.0.1".into(), listener.local_addr().unwrap().port());
        let mut s = Stream::connect(&addr, Instant::now() + Duration::from_secs(1), "test").unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"+OK\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let past = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf, past).unwrap(), 5);
        // Nothing more has arrived: a timeout at once, and the socket blocks again afterwards.
        let start = Instant::now();
        assert_eq!(s.read(&mut buf, past).unwrap_err().kind(), ErrorKind::Timeout);
        assert!(start.elapsed() < Duration::from_millis(50));
        peer.write_all(b"+A\r\n").unwrap();
        assert_eq!(s.read(&mut buf, Instant::now() + Duration::from_secs(1)).unwrap(), 4);
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
