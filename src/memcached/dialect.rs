//! The two memcached dialects behind one face: for each command, how its request is written and
//! how its reply is read into the same result. The text protocol is the default; the binary one
//! is used where SASL is configured (or asked for). Requests are encoded into buffers with no I/O;
//! replies are read a frame at a time through [`Conn`], whose parsers are pure functions of the
//! bytes. Every branch on the protocol lives here, so the client writes each command once.

use std::time::Instant;

use super::binary::{self, Op, Packet, status};
use super::conn::{Address, Conn};
use super::protocol::{self, Reply, Store};
use crate::error::{Error, ErrorKind};

/// Where a reply's frames come from: a connection, read under the call's deadline, or the frames
/// a multiplexed connection already read for the request.
pub trait Replies {
    /// The next text-protocol reply.
    fn reply(&mut self) -> Result<Reply, Error>;
    /// The next binary-protocol packet.
    fn packet(&mut self) -> Result<Packet, Error>;
    /// The server's address, for messages.
    fn addr(&self) -> &Address;
}

/// A connection's replies, each read before `deadline`.
pub struct Reading<'a> {
    /// The connection.
    pub conn: &'a mut Conn,
    /// The call's deadline.
    pub deadline: Instant,
}

impl Replies for Reading<'_> {
    fn reply(&mut self) -> Result<Reply, Error> {
        self.conn.read_reply(self.deadline)
    }

    fn packet(&mut self) -> Result<Packet, Error> {
        self.conn.read_packet(self.deadline)
    }

    fn addr(&self) -> &Address {
        self.conn.addr()
    }
}

/// A value as stored: the client flags and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The 32-bit client flags (pylibmc's type and compression bits).
    pub flags: u32,
    /// The stored bytes.
    pub data: Vec<u8>,
    /// The CAS id, when the server sent one.
    pub cas: Option<u64>,
}

/// What a storage command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored.
    Yes,
    /// The condition of add/replace did not hold.
    No,
    /// The server refused the item (e.g. larger than its item size limit).
    Refused(String),
}

/// Values at least this long are sent with a vectored write (header, value, trailer) rather than
/// copied into the request buffer.
pub const VECTORED_FROM: usize = 16 * 1024;

/// The protocol spoken with every server of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Memcached's text protocol.
    Text,
    /// The binary protocol (SASL).
    Binary,
}

fn unexpected(addr: &Address, reply: &Reply) -> Error {
    match reply {
        Reply::Error(message) => Error::new(ErrorKind::Server, format!("memcached {addr}: {message}")),
        other => Error::new(ErrorKind::Protocol, format!("memcached {addr}: unexpected reply {other:?}")),
    }
}

fn packet_error(addr: &Address, packet: &Packet) -> Error {
    Error::new(ErrorKind::Server, format!("memcached {addr}: {}", packet.status_text()))
}

fn non_numeric(key: &[u8]) -> Error {
    Error::new(
        ErrorKind::NotNumeric,
        format!("cannot increment or decrement the non-numeric value of '{}'", String::from_utf8_lossy(key)),
    )
}

fn store_op(cmd: Store) -> Op {
    match cmd {
        Store::Set => Op::Set,
        Store::Add => Op::Add,
        Store::Replace => Op::Replace,
    }
}

impl Dialect {
    /// Append a request for `keys`, answered by [`Dialect::read_get`] with the hits only.
    pub fn encode_get(self, buf: &mut Vec<u8>, keys: &[&[u8]]) -> Result<(), Error> {
        match self {
            Dialect::Text => protocol::encode_get(buf, keys, false),
            Dialect::Binary => {
                // Quiet gets answer hits only; the no-op after them marks the end.
                for key in keys {
                    binary::encode(buf, Op::GetKQ, key, b"", b"", 0, 0)?;
                }
                binary::encode(buf, Op::Noop, b"", b"", b"", 0, 0)
            }
        }
    }

    /// Read the hits of one [`Dialect::encode_get`] request: each key with its item.
    pub fn read_get(self, r: &mut impl Replies) -> Result<Vec<(Vec<u8>, Item)>, Error> {
        let mut hits = Vec::new();
        match self {
            Dialect::Text => loop {
                match r.reply()? {
                    Reply::Value { key, flags, data, cas } => hits.push((key, Item { flags, data, cas })),
                    Reply::End => return Ok(hits),
                    other => return Err(unexpected(r.addr(), &other)),
                }
            },
            Dialect::Binary => loop {
                let p = r.packet()?;
                if p.opcode == Op::Noop as u8 {
                    return Ok(hits);
                }
                match p.status {
                    status::OK => {
                        hits.push((p.key.clone(), Item { flags: p.flags(), cas: Some(p.cas), data: p.value }));
                    }
                    status::NOT_FOUND => {}
                    _ => return Err(packet_error(r.addr(), &p)),
                }
            },
        }
    }

    /// Append one whole storage request (value included).
    pub fn encode_store(
        self,
        buf: &mut Vec<u8>,
        cmd: Store,
        key: &[u8],
        flags: u32,
        exptime: i64,
        data: &[u8],
    ) -> Result<(), Error> {
        match self {
            Dialect::Text => protocol::encode_store(buf, cmd, key, flags, exptime, data),
            Dialect::Binary => binary::encode_store(buf, store_op(cmd), key, flags, exptime, data, 0),
        }
    }

    /// Write a storage request's header into `head` for a value of `len` bytes sent after it;
    /// returns what must follow the value.
    pub fn encode_store_header(
        self,
        head: &mut Vec<u8>,
        cmd: Store,
        key: &[u8],
        flags: u32,
        exptime: i64,
        len: usize,
    ) -> Result<&'static [u8], Error> {
        match self {
            Dialect::Text => {
                protocol::encode_store_header(head, cmd, key, flags, exptime, len)?;
                Ok(b"\r\n")
            }
            Dialect::Binary => {
                binary::encode_store_header(head, store_op(cmd), key, flags, exptime, len)?;
                Ok(b"")
            }
        }
    }

    /// Read the reply to one storage request.
    pub fn read_stored(self, r: &mut impl Replies) -> Result<Stored, Error> {
        match self {
            Dialect::Text => match r.reply()? {
                Reply::Stored => Ok(Stored::Yes),
                Reply::NotStored | Reply::Exists | Reply::NotFound => Ok(Stored::No),
                Reply::Error(message) if message.starts_with("SERVER_ERROR") => Ok(Stored::Refused(message)),
                other => Err(unexpected(r.addr(), &other)),
            },
            Dialect::Binary => {
                let p = r.packet()?;
                match p.status {
                    status::OK => Ok(Stored::Yes),
                    status::NOT_FOUND | status::EXISTS | status::NOT_STORED => Ok(Stored::No),
                    status::TOO_LARGE => Ok(Stored::Refused(p.status_text())),
                    _ => Err(packet_error(r.addr(), &p)),
                }
            }
        }
    }

    /// Append a delete request.
    pub fn encode_delete(self, buf: &mut Vec<u8>, key: &[u8]) -> Result<(), Error> {
        match self {
            Dialect::Text => protocol::encode_delete(buf, key),
            Dialect::Binary => binary::encode(buf, Op::Delete, key, b"", b"", 0, 0),
        }
    }

    /// Read the reply to a delete: whether the key was there.
    pub fn read_deleted(self, r: &mut impl Replies) -> Result<bool, Error> {
        self.read_found(r, Reply::Deleted)
    }

    /// Append a touch request.
    pub fn encode_touch(self, buf: &mut Vec<u8>, key: &[u8], exptime: i64) -> Result<(), Error> {
        match self {
            Dialect::Text => protocol::encode_touch(buf, key, exptime),
            Dialect::Binary => binary::encode_touch(buf, key, exptime),
        }
    }

    /// Read the reply to a touch: whether the key was there.
    pub fn read_touched(self, r: &mut impl Replies) -> Result<bool, Error> {
        self.read_found(r, Reply::Touched)
    }

    fn read_found(self, r: &mut impl Replies, done: Reply) -> Result<bool, Error> {
        match self {
            Dialect::Text => match r.reply()? {
                Reply::NotFound => Ok(false),
                reply if reply == done => Ok(true),
                other => Err(unexpected(r.addr(), &other)),
            },
            Dialect::Binary => {
                let p = r.packet()?;
                match p.status {
                    status::OK => Ok(true),
                    status::NOT_FOUND => Ok(false),
                    _ => Err(packet_error(r.addr(), &p)),
                }
            }
        }
    }

    /// Append an incr/decr request (a missing key is reported, never created).
    pub fn encode_incr(self, buf: &mut Vec<u8>, key: &[u8], delta: u64, decr: bool) -> Result<(), Error> {
        match self {
            Dialect::Text => protocol::encode_incr(buf, key, delta, decr),
            Dialect::Binary => binary::encode_incr(buf, key, delta, decr),
        }
    }

    /// Read the reply to an incr/decr of `key`: the new value, or None when the key is missing.
    pub fn read_counter(self, r: &mut impl Replies, key: &[u8]) -> Result<Option<u64>, Error> {
        match self {
            Dialect::Text => match r.reply()? {
                Reply::Number(n) => Ok(Some(n)),
                Reply::NotFound => Ok(None),
                // The text protocol's only CLIENT_ERROR for a well-formed incr: a non-numeric value.
                Reply::Error(message) if message.starts_with("CLIENT_ERROR") => Err(non_numeric(key)),
                other => Err(unexpected(r.addr(), &other)),
            },
            Dialect::Binary => {
                let p = r.packet()?;
                match p.status {
                    status::OK => match p.value.get(..8) {
                        Some(b) => Ok(Some(u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))),
                        None => Err(Error::new(ErrorKind::Protocol, "memcached sent a short incr reply")),
                    },
                    status::NOT_FOUND => Ok(None),
                    status::NON_NUMERIC => Err(non_numeric(key)),
                    _ => Err(packet_error(r.addr(), &p)),
                }
            }
        }
    }

    /// Append a request without arguments (`flush_all`, `version`, `stats`).
    pub fn encode_simple(self, buf: &mut Vec<u8>, command: Simple) -> Result<(), Error> {
        match self {
            Dialect::Text => {
                protocol::encode_simple(buf, command.text());
                Ok(())
            }
            Dialect::Binary => binary::encode(buf, command.op(), b"", b"", b"", 0, 0),
        }
    }

    /// Read the reply to `flush_all`.
    pub fn read_flushed(self, r: &mut impl Replies) -> Result<(), Error> {
        match self {
            Dialect::Text => match r.reply()? {
                Reply::Ok => Ok(()),
                other => Err(unexpected(r.addr(), &other)),
            },
            Dialect::Binary => Self::read_ok_packet(r).map(|_| ()),
        }
    }

    /// Read the reply to `version`.
    pub fn read_version(self, r: &mut impl Replies) -> Result<String, Error> {
        match self {
            Dialect::Text => match r.reply()? {
                Reply::Version(v) => Ok(v),
                other => Err(unexpected(r.addr(), &other)),
            },
            Dialect::Binary => Self::read_ok_packet(r).map(|p| String::from_utf8_lossy(&p.value).into_owned()),
        }
    }

    /// Read the reply to `stats`: name/value pairs.
    pub fn read_stats(self, r: &mut impl Replies) -> Result<Vec<(String, String)>, Error> {
        let mut stats = Vec::new();
        loop {
            match self {
                Dialect::Text => match r.reply()? {
                    Reply::Stat(name, value) => stats.push((name, value)),
                    Reply::End => return Ok(stats),
                    other => return Err(unexpected(r.addr(), &other)),
                },
                Dialect::Binary => {
                    let p = Self::read_ok_packet(r)?;
                    if p.key.is_empty() {
                        return Ok(stats);
                    }
                    stats.push((
                        String::from_utf8_lossy(&p.key).into_owned(),
                        String::from_utf8_lossy(&p.value).into_owned(),
                    ));
                }
            }
        }
    }

    fn read_ok_packet(r: &mut impl Replies) -> Result<Packet, Error> {
        let p = r.packet()?;
        if p.status == status::OK { Ok(p) } else { Err(packet_error(r.addr(), &p)) }
    }
}

/// The commands without arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simple {
    /// `flush_all`.
    Flush,
    /// `version`.
    Version,
    /// `stats`.
    Stats,
}

impl Simple {
    fn text(self) -> &'static str {
        match self {
            Simple::Flush => "flush_all",
            Simple::Version => "version",
            Simple::Stats => "stats",
        }
    }

    fn op(self) -> Op {
        match self {
            Simple::Flush => Op::Flush,
            Simple::Version => Op::Version,
            Simple::Stats => Op::Stat,
        }
    }
}
