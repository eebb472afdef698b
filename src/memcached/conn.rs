//! One connection to one server: TCP (with TCP_NODELAY) or a unix socket, buffered reads, and a
//! deadline on every exchange.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::binary::{self, Packet};
use super::protocol::{self, Reply};
use crate::error::{Error, ErrorKind};

/// A reply parser: the reply and the bytes it took, or `None` until it has all arrived.
type Parser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, Error>;

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

/// Deadlines for connecting and for one request/reply exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish a connection.
    pub connect: Duration,
    /// For one socket write to make progress.
    pub send: Duration,
    /// For the whole reply to one request (and for each read within it).
    pub receive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(1), send: Duration::from_secs(3), receive: Duration::from_secs(3) }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, t: &Timeouts) -> std::io::Result<()> {
        let (send, recv) = (Some(t.send.max(Duration::from_millis(1))), Some(t.receive.max(Duration::from_millis(1))));
        match self {
            Stream::Tcp(s) => {
                s.set_write_timeout(send)?;
                s.set_read_timeout(recv)
            }
            Stream::Unix(s) => {
                s.set_write_timeout(send)?;
                s.set_read_timeout(recv)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn io_error(addr: &Address, what: &str, e: &std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        _ => ErrorKind::Io,
    };
    Error::new(kind, format!("memcached {addr}: {what}: {e}"))
}

/// A connection. Whoever gets an error from it must drop it: after a failure the stream may be
/// half way through a reply.
pub struct Conn {
    stream: Stream,
    addr: Address,
    timeouts: Timeouts,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
}

impl Conn {
    /// Connect to `addr` within `timeouts.connect`.
    pub fn connect(addr: &Address, timeouts: &Timeouts) -> Result<Self, Error> {
        let stream = match addr {
            Address::Tcp(host, port) => {
                let addrs = (host.as_str(), *port).to_socket_addrs().map_err(|e| io_error(addr, "resolve", &e))?;
                let mut last = None;
                let mut connected = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, timeouts.connect.max(Duration::from_millis(1))) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (connected, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(io_error(addr, "connect", &e)),
                    (None, None) => {
                        return Err(Error::new(ErrorKind::Io, format!("memcached {addr}: no address")));
                    }
                };
                s.set_nodelay(true).map_err(|e| io_error(addr, "TCP_NODELAY", &e))?;
                Stream::Tcp(s)
            }
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(|e| io_error(addr, "connect", &e))?),
        };
        stream.set_timeouts(timeouts).map_err(|e| io_error(addr, "set timeouts", &e))?;
        Ok(Self { stream, addr: addr.clone(), timeouts: *timeouts, rbuf: vec![0; 16 * 1024], rstart: 0, rend: 0 })
    }

    /// The server's address.
    pub fn addr(&self) -> &Address {
        &self.addr
    }

    /// Write all of `buf`.
    pub fn send(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.stream.write_all(buf).map_err(|e| io_error(&self.addr, "send", &e))
    }

    /// Write all of `parts`, in order, with vectored writes (no copy into one buffer).
    pub fn send_parts(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.stream.write_vectored(rest) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("memcached {}: connection closed while sending", self.addr),
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.addr, "send", &e)),
            }
        }
        Ok(())
    }

    /// The deadline for a reply to a request sent now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeouts.receive
    }

    /// Read one text-protocol reply, failing with a timeout once `deadline` has passed.
    pub fn read_reply(&mut self, deadline: Instant) -> Result<Reply, Error> {
        self.read_with(deadline, protocol::parse, protocol::value_frame_len)
    }

    /// Read one binary-protocol packet, failing with a timeout once `deadline` has passed.
    pub fn read_packet(&mut self, deadline: Instant) -> Result<Packet, Error> {
        self.read_with(deadline, binary::parse, binary::frame_len)
    }

    fn read_with<T>(
        &mut self,
        deadline: Instant,
        parse: Parser<T>,
        frame_len: fn(&[u8]) -> Option<usize>,
    ) -> Result<T, Error> {
        loop {
            if self.rend > self.rstart
                && let Some((reply, used)) = parse(&self.rbuf[self.rstart..self.rend])?
            {
                self.rstart += used;
                if self.rstart == self.rend {
                    self.rstart = 0;
                    self.rend = 0;
                }
                return Ok(reply);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("memcached {}: no complete reply in time", self.addr),
                ));
            }
            if let Some(total) = frame_len(&self.rbuf[self.rstart..self.rend]) {
                self.reserve_frame(total);
            }
            self.fill()?;
        }
    }

    /// SASL PLAIN authentication on the binary protocol, right after connecting.
    pub fn authenticate(&mut self, username: &str, password: &str) -> Result<(), Error> {
        let mut request = Vec::new();
        binary::encode_sasl_plain(&mut request, username, password)?;
        self.send(&request)?;
        let deadline = self.deadline();
        let packet = self.read_packet(deadline)?;
        if packet.status == binary::status::OK {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Server,
            format!("memcached {}: SASL authentication as {username:?} failed ({})", self.addr, packet.status_text()),
        ))
    }

    /// Make room for a frame of `total` bytes starting at `rstart`, in one step.
    fn reserve_frame(&mut self, total: usize) {
        if self.rbuf.len() - self.rstart >= total + 8 * 1024 {
            return;
        }
        if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rbuf.len() < total + 8 * 1024 {
            self.rbuf.resize(total + 16 * 1024, 0);
        }
    }

    fn fill(&mut self) -> Result<(), Error> {
        if self.rstart > 0 && self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if self.rbuf.len() - self.rend < 8 * 1024 {
            if self.rstart > 0 {
                self.rbuf.copy_within(self.rstart..self.rend, 0);
                self.rend -= self.rstart;
                self.rstart = 0;
            }
            if self.rbuf.len() - self.rend < 8 * 1024 {
                let grown = (self.rbuf.len() * 2).max(self.rend + 64 * 1024);
                self.rbuf.resize(grown, 0);
            }
        }
        match self.stream.read(&mut self.rbuf[self.rend..]) {
            Ok(0) => {
                Err(Error::new(ErrorKind::Io, format!("memcached {}: connection closed by the server", self.addr)))
            }
            Ok(n) => {
                self.rend += n;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(io_error(&self.addr, "receive", &e)),
        }
    }

    /// Whether unread bytes are buffered (a connection in that state must not be reused).
    pub fn has_pending_input(&self) -> bool {
        self.rend > self.rstart
    }

    /// Shrink a read buffer that grew for a large value, so idle connections stay small.
    pub fn trim(&mut self) {
        if self.rbuf.len() > 2 * 1024 * 1024 && !self.has_pending_input() {
            self.rbuf = vec![0; 16 * 1024];
            self.rstart = 0;
            self.rend = 0;
        }
    }
}
