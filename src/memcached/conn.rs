//! One connection to one server: TCP (with TCP_NODELAY) or a unix socket, buffered reads, and a
//! deadline on every exchange.

use std::time::{Duration, Instant};

use super::binary::{self, Packet};
use super::protocol::{self, Reply};
use crate::error::{Error, ErrorKind};
use crate::net::Stream;

/// A reply parser: the reply and the bytes it took, or `None` until it has all arrived.
type Parser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, Error>;

pub use crate::net::Address;

/// Deadlines for connecting and for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish a connection (and authenticate); within the call's deadline.
    pub connect: Duration,
    /// The whole call: connect, send and every reply together.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(1), call: Duration::from_secs(3) }
    }
}

/// The most read-buffer room reserved ahead of bytes that have arrived: a length a server
/// announces is believed only as far as this; past it the buffer grows as the bytes come.
const MAX_RESERVE: usize = 16 * 1024 * 1024;

/// A connection. Whoever gets an error from it must drop it: after a failure the stream may be
/// half way through a reply.
pub struct Conn {
    stream: Stream,
    addr: Address,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
}

impl Conn {
    /// Connect to `addr` before `deadline` (and within `timeouts.connect`).
    pub fn connect(addr: &Address, timeouts: &Timeouts, deadline: Instant) -> Result<Self, Error> {
        let deadline = deadline.min(Instant::now() + timeouts.connect);
        let stream = Stream::connect(addr, deadline, &format!("memcached {addr}"))?;
        Ok(Self { stream, addr: addr.clone(), rbuf: vec![0; 16 * 1024], rstart: 0, rend: 0 })
    }

    /// Whether the server closed or reset the connection while it sat idle (or sent bytes no
    /// request asked for).
    pub fn is_stale(&mut self) -> bool {
        self.rstart != self.rend || self.stream.is_stale()
    }

    /// The server's address.
    pub fn addr(&self) -> &Address {
        &self.addr
    }

    /// Write all of `parts`, in order, before `deadline` (vectored: large values are not
    /// copied into one buffer).
    pub fn send(&mut self, parts: &[&[u8]], deadline: Instant) -> Result<(), Error> {
        self.stream.write_all(parts, deadline)
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
            if let Some(total) = frame_len(&self.rbuf[self.rstart..self.rend]) {
                self.reserve_frame(total.min(MAX_RESERVE));
            }
            self.fill(deadline)?;
        }
    }

    /// SASL PLAIN authentication on the binary protocol, right after connecting.
    pub fn authenticate(&mut self, username: &str, password: &str, deadline: Instant) -> Result<(), Error> {
        let mut request = Vec::new();
        binary::encode_sasl_plain(&mut request, username, password)?;
        self.send(&[&request], deadline)?;
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

    fn fill(&mut self, deadline: Instant) -> Result<(), Error> {
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
        self.rend += self.stream.read(&mut self.rbuf[self.rend..], deadline)?;
        Ok(())
    }

    /// The socket, for an event loop's thread (`bindings::on_loop`): a connection handed to
    /// one is made non-blocking and never goes back to a pool.
    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
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
