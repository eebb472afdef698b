//! Memcached's binary protocol, used only where SASL authentication is configured (memcached
//! speaks SASL on the binary protocol alone). Requests are encoded into a buffer; responses are
//! parsed from the bytes read so far.

use crate::error::{Error, ErrorKind};

const REQUEST: u8 = 0x80;
const RESPONSE: u8 = 0x81;
const HEADER: usize = 24;
/// A response body larger than this is treated as a protocol error (memcached's item limit is
/// at most 1 GiB).
const MAX_BODY: usize = 1 << 30;

/// The opcodes we send.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Get = 0x00,
    Set = 0x01,
    Add = 0x02,
    Replace = 0x03,
    Delete = 0x04,
    Increment = 0x05,
    Decrement = 0x06,
    Flush = 0x08,
    Noop = 0x0a,
    Version = 0x0b,
    GetKQ = 0x0d,
    Stat = 0x10,
    Touch = 0x1c,
    SaslAuth = 0x21,
}

/// Response statuses we act on.
pub mod status {
    /// Success.
    pub const OK: u16 = 0x00;
    /// Key not found.
    pub const NOT_FOUND: u16 = 0x01;
    /// Key exists (add, cas).
    pub const EXISTS: u16 = 0x02;
    /// Value too large.
    pub const TOO_LARGE: u16 = 0x03;
    /// Item not stored.
    pub const NOT_STORED: u16 = 0x05;
    /// incr/decr on a non-numeric value.
    pub const NON_NUMERIC: u16 = 0x06;
    /// Authentication failed.
    pub const AUTH_ERROR: u16 = 0x20;
}

/// A parsed response packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The opcode it answers.
    pub opcode: u8,
    /// The status (0: success).
    pub status: u16,
    /// The opaque value of the request it answers.
    pub opaque: u32,
    /// The CAS id.
    pub cas: u64,
    /// Extras (flags on a get).
    pub extras: Vec<u8>,
    /// The key (GetK, Stat).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

impl Packet {
    /// The client flags of a get response.
    pub fn flags(&self) -> u32 {
        match self.extras.get(..4) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    /// The error this status stands for, as text.
    pub fn status_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.value);
        format!("status 0x{:02x}{}{}", self.status, if text.is_empty() { "" } else { ": " }, text)
    }
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if !crate::keys::wire_ok(key, true) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("invalid memcached key {:?}", String::from_utf8_lossy(key)),
        ));
    }
    Ok(())
}

/// The expiry for the binary protocol, which has no negative times: "already expired"
/// (Django's timeout 0, sent as -1) becomes an absolute time in the past.
fn exptime32(exptime: i64) -> u32 {
    if exptime < 0 { 2_592_001 } else { u32::try_from(exptime).unwrap_or(u32::MAX) }
}

/// Append one request packet.
pub fn encode(
    buf: &mut Vec<u8>,
    op: Op,
    key: &[u8],
    extras: &[u8],
    value: &[u8],
    opaque: u32,
    cas: u64,
) -> Result<(), Error> {
    if op != Op::SaslAuth {
        check_key(key)?;
    }
    let key_len = u16::try_from(key.len()).map_err(|_| Error::new(ErrorKind::InvalidKey, "key too long"))?;
    let extras_len = u8::try_from(extras.len()).map_err(|_| Error::new(ErrorKind::Protocol, "extras too long"))?;
    let body = u32::try_from(key.len() + extras.len() + value.len())
        .map_err(|_| Error::new(ErrorKind::InvalidKey, "value too large for the binary protocol"))?;
    buf.reserve(HEADER + body as usize);
    buf.push(REQUEST);
    buf.push(op as u8);
    buf.extend_from_slice(&key_len.to_be_bytes());
    buf.push(extras_len);
    buf.push(0); // data type
    buf.extend_from_slice(&0u16.to_be_bytes()); // vbucket
    buf.extend_from_slice(&body.to_be_bytes());
    buf.extend_from_slice(&opaque.to_be_bytes());
    buf.extend_from_slice(&cas.to_be_bytes());
    buf.extend_from_slice(extras);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
    Ok(())
}

/// A set/add/replace request (extras: flags, expiry).
pub fn encode_store(
    buf: &mut Vec<u8>,
    op: Op,
    key: &[u8],
    flags: u32,
    exptime: i64,
    value: &[u8],
    cas: u64,
) -> Result<(), Error> {
    let mut extras = [0u8; 8];
    extras[..4].copy_from_slice(&flags.to_be_bytes());
    extras[4..].copy_from_slice(&exptime32(exptime).to_be_bytes());
    encode(buf, op, key, &extras, value, 0, cas)
}

/// The header (with extras and key) of a set/add/replace request whose `len`-byte value is sent
/// right after it: for large values, written without copying them.
pub fn encode_store_header(
    buf: &mut Vec<u8>,
    op: Op,
    key: &[u8],
    flags: u32,
    exptime: i64,
    len: usize,
) -> Result<(), Error> {
    let start = buf.len();
    encode_store(buf, op, key, flags, exptime, b"", 0)?;
    let body = u32::try_from(8 + key.len() + len)
        .map_err(|_| Error::new(ErrorKind::TooLarge, "value too large for the binary protocol"))?;
    buf[start + 8..start + 12].copy_from_slice(&body.to_be_bytes());
    Ok(())
}

/// An incr/decr request that fails on a missing key (expiry 0xffffffff) instead of creating it.
pub fn encode_incr(buf: &mut Vec<u8>, key: &[u8], delta: u64, decr: bool) -> Result<(), Error> {
    let mut extras = [0u8; 20];
    extras[..8].copy_from_slice(&delta.to_be_bytes());
    extras[16..].copy_from_slice(&u32::MAX.to_be_bytes());
    encode(buf, if decr { Op::Decrement } else { Op::Increment }, key, &extras, b"", 0, 0)
}

/// A touch request.
pub fn encode_touch(buf: &mut Vec<u8>, key: &[u8], exptime: i64) -> Result<(), Error> {
    encode(buf, Op::Touch, key, &exptime32(exptime).to_be_bytes(), b"", 0, 0)
}

/// SASL PLAIN authentication: `\0user\0password`.
pub fn encode_sasl_plain(buf: &mut Vec<u8>, username: &str, password: &str) -> Result<(), Error> {
    let mut credentials = Vec::with_capacity(username.len() + password.len() + 2);
    credentials.push(0);
    credentials.extend_from_slice(username.as_bytes());
    credentials.push(0);
    credentials.extend_from_slice(password.as_bytes());
    encode(buf, Op::SaslAuth, b"PLAIN", b"", &credentials, 0, 0)
}

/// How many bytes the packet at the start of `buf` takes, once its header has arrived.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..HEADER)?;
    let body = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    Some(HEADER + body)
}

/// Parse one response packet from the start of `buf`: `Ok(None)` until it has all arrived.
pub fn parse(buf: &[u8]) -> Result<Option<(Packet, usize)>, Error> {
    let Some(h) = buf.get(..HEADER) else { return Ok(None) };
    if h[0] != RESPONSE {
        return Err(Error::new(ErrorKind::Protocol, format!("memcached sent a packet with magic 0x{:02x}", h[0])));
    }
    let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let extras_len = usize::from(h[4]);
    let status = u16::from_be_bytes([h[6], h[7]]);
    let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let cas = u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    if body > MAX_BODY || key_len + extras_len > body {
        return Err(Error::new(ErrorKind::Protocol, "memcached sent a malformed packet header"));
    }
    let total = HEADER + body;
    if buf.len() < total {
        return Ok(None);
    }
    let b = &buf[HEADER..total];
    let packet = Packet {
        opcode: h[1],
        status,
        opaque,
        cas,
        extras: b[..extras_len].to_vec(),
        key: b[extras_len..extras_len + key_len].to_vec(),
        value: b[extras_len + key_len..].to_vec(),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(opcode: u8, status: u16, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![RESPONSE, opcode];
        b.extend_from_slice(&(key.len() as u16).to_be_bytes());
        b.push(extras.len() as u8);
        b.push(0);
        b.extend_from_slice(&status.to_be_bytes());
        b.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(extras);
        b.extend_from_slice(key);
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn encodes_a_set() {
        let mut b = Vec::new();
        encode_store(&mut b, Op::Set, b"k", 16, 300, b"v", 0).unwrap();
        assert_eq!(b.len(), 24 + 8 + 1 + 1);
        assert_eq!(&b[..2], &[0x80, 0x01]);
        assert_eq!(&b[2..4], &1u16.to_be_bytes());
        assert_eq!(b[4], 8);
        assert_eq!(&b[8..12], &10u32.to_be_bytes());
        assert_eq!(&b[24..28], &16u32.to_be_bytes());
        assert_eq!(&b[28..32], &300u32.to_be_bytes());
        assert_eq!(&b[32..], b"kv");
    }

    #[test]
    fn negative_expiry_is_a_time_in_the_past() {
        let mut b = Vec::new();
        encode_touch(&mut b, b"k", -1).unwrap();
        assert_eq!(&b[24..28], &2_592_001u32.to_be_bytes());
    }

    #[test]
    fn incr_fails_instead_of_creating() {
        let mut b = Vec::new();
        encode_incr(&mut b, b"n", 5, true).unwrap();
        assert_eq!(b[1], Op::Decrement as u8);
        assert_eq!(&b[24..32], &5u64.to_be_bytes());
        assert_eq!(&b[40..44], &u32::MAX.to_be_bytes());
    }

    #[test]
    fn a_store_header_and_its_value_are_the_whole_request() {
        let mut whole = Vec::new();
        encode_store(&mut whole, Op::Set, b"k", 16, 300, b"value", 0).unwrap();
        let mut head = Vec::new();
        encode_store_header(&mut head, Op::Set, b"k", 16, 300, 5).unwrap();
        head.extend_from_slice(b"value");
        assert_eq!(head, whole);
    }

    #[test]
    fn parses_incrementally() {
        let full = response(0x00, 0, &16u32.to_be_bytes(), b"", b"hello");
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None);
        }
        let (p, used) = parse(&full).unwrap().unwrap();
        assert_eq!(used, full.len());
        assert_eq!((p.status, p.flags(), p.value.as_slice(), p.opaque, p.cas), (0, 16, &b"hello"[..], 7, 9));
        assert_eq!(frame_len(&full), Some(full.len()));
    }

    #[test]
    fn refuses_bad_keys_and_bad_packets() {
        let mut b = Vec::new();
        assert_eq!(encode(&mut b, Op::Get, b"a b", b"", b"", 0, 0).unwrap_err().kind(), ErrorKind::InvalidKey);
        assert_eq!(encode(&mut b, Op::Get, &[b'k'; 251], b"", b"", 0, 0).unwrap_err().kind(), ErrorKind::InvalidKey);
        let mut bad = response(0, 0, b"", b"", b"x");
        bad[0] = 0x42;
        assert_eq!(parse(&bad).unwrap_err().kind(), ErrorKind::Protocol);
        let mut lying = response(0, 0, b"", b"kk", b"");
        lying[11] = 1; // body shorter than the key
        assert_eq!(parse(&lying).unwrap_err().kind(), ErrorKind::Protocol);
    }
}
