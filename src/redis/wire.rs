//! RESP on the wire, shared by every connection: the bounds on what a server may announce, the
//! framing that checks them as bytes arrive (and tells where each reply ends, for the
//! multiplexed connections), and how a reply or an error reply becomes ours.

use redis::{FromRedisValue, RedisError, ServerErrorKind, Value};

use crate::error::{Error, ErrorKind, Redirect};
use crate::net::aio::Wire;

/// The most one reply may be: redis's own bulk limit (`proto-max-bulk-len`, 512 MiB) plus room
/// for the framing. A longer reply is a protocol error that drops the connection.
pub const MAX_REPLY_BYTES: usize = 512 * 1024 * 1024 + 64 * 1024;

/// The longest bulk string a server may announce (redis's own `proto-max-bulk-len` default).
pub const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;

/// The most elements an array (map, set, push) may announce.
pub const MAX_ELEMENTS: i64 = 1 << 24;

/// Aggregates may nest this deep at most (a deeper reply is hostile).
const MAX_DEPTH: usize = 128;

/// Follows the RESP framing of every byte read, so a length a server announces is checked the
/// moment its header line is complete, before the parser waits for (or reserves) that much; and
/// tells where each whole reply ends (for the multiplexed connections, which cut replies from
/// what they read).
#[derive(Debug, Default)]
pub struct Framing {
    /// Raw bytes (a bulk string and its CRLF) still to pass before the next header.
    skip: usize,
    /// Within a header line: its type byte.
    kind: Option<u8>,
    /// The line's number so far, and its sign.
    number: i64,
    negative: bool,
    /// The open aggregates: elements each still waits for, and whether it is an attribute
    /// (which precedes the element it annotates instead of being one).
    open: Vec<(i64, bool)>,
}

impl Framing {
    /// Follow `bytes`; an error names the first length past the bounds.
    pub(crate) fn follow(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        while let Some(end) = self.advance(bytes)? {
            bytes = &bytes[end..];
        }
        Ok(())
    }

    /// Where the first whole reply in `bytes` ends, for a reader that keeps what it read until
    /// a reply is whole: `None` (and the framing started over, to follow the same bytes and
    /// more next time) when none ends there yet; a length past the bounds is an error naming
    /// `label`.
    pub fn whole(&mut self, bytes: &[u8], label: &str) -> Result<Option<usize>, Error> {
        let end = self
            .advance(bytes)
            .map_err(|what| Error::new(ErrorKind::TooLarge, format!("{label}: the server announced {what}")))?;
        if end.is_none() {
            *self = Self::default();
        }
        Ok(end)
    }

    /// Follow `bytes` up to the end of a whole reply: how many bytes that took, or `None` when
    /// they all went without one ending.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut at = 0;
        while at < bytes.len() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() - at);
                self.skip -= n;
                at += n;
                if self.skip == 0 && self.element_done() {
                    return Ok(Some(at));
                }
                continue;
            }
            let b = bytes[at];
            at += 1;
            let Some(kind) = self.kind else {
                self.kind = Some(b);
                self.number = 0;
                self.negative = false;
                continue;
            };
            match b {
                b'\n' => {
                    self.kind = None;
                    let n = if self.negative { -self.number } else { self.number };
                    let done = match kind {
                        b'$' | b'=' | b'!' if n > MAX_BULK_LEN => return Err("a bulk string past 512 MiB"),
                        b'$' | b'=' | b'!' if n >= 0 => {
                            self.skip = n as usize + 2;
                            false
                        }
                        b'*' | b'%' | b'~' | b'>' | b'|' if n > MAX_ELEMENTS => {
                            return Err("an array past 2**24 elements");
                        }
                        b'*' | b'%' | b'~' | b'>' | b'|' if n > 0 => {
                            if self.open.len() >= MAX_DEPTH {
                                return Err("aggregates nested past 128 levels");
                            }
                            let pairs = matches!(kind, b'%' | b'|');
                            self.open.push((if pairs { 2 * n } else { n }, kind == b'|'));
                            false
                        }
                        _ => self.element_done(),
                    };
                    if done {
                        return Ok(Some(at));
                    }
                }
                b'-' if self.number == 0 => self.negative = true,
                b'0'..=b'9' if matches!(kind, b'$' | b'=' | b'!' | b'*' | b'%' | b'~' | b'>' | b'|') => {
                    self.number = self.number.saturating_mul(10).saturating_add(i64::from(b - b'0'));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// One element ended: whether that ended a whole reply.
    fn element_done(&mut self) -> bool {
        loop {
            let Some((left, attribute)) = self.open.last_mut() else { return true };
            *left -= 1;
            if *left > 0 {
                return false;
            }
            let attribute = *attribute;
            self.open.pop();
            if attribute {
                // An attribute's pairs are in; the element it annotates comes next.
                return false;
            }
        }
    }
}

/// RESP as the multiplexed connections read it: whole replies cut at their ends (lengths
/// bounded as they are announced), each parsed by the `redis` crate.
pub struct RedisWire;

/// Where the framing stopped in the bytes not yet taken.
#[derive(Default)]
pub struct Scan {
    framing: Framing,
    scanned: usize,
}

impl Wire for RedisWire {
    type Frame = Value;
    /// How many replies the request's commands give.
    type Expect = usize;
    type Scan = Scan;

    fn next_frame(scan: &mut Scan, buf: &[u8]) -> Result<Option<(Value, usize)>, Error> {
        let mut base = 0;
        loop {
            let from = base + scan.scanned;
            let found = scan
                .framing
                .advance(&buf[from..])
                .map_err(|what| Error::new(ErrorKind::TooLarge, format!("redis: the server announced {what}")))?;
            let Some(n) = found else {
                scan.scanned = buf.len() - base;
                if scan.scanned > MAX_REPLY_BYTES {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("redis: a reply larger than {MAX_REPLY_BYTES} bytes"),
                    ));
                }
                return Ok(None);
            };
            let end = from + n;
            scan.scanned = 0;
            let value = redis::parse_redis_value(&buf[base..end])
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("redis: an unparsable reply: {e}")))?;
            // RESP3 pushes are not replies (we speak RESP2, but a proxy might not).
            if matches!(value, Value::Push { .. }) {
                base = end;
                continue;
            }
            return Ok(Some((value, end)));
        }
    }

    fn is_last(expect: &mut usize, _frame: &Value) -> bool {
        *expect = expect.saturating_sub(1);
        *expect == 0
    }
}

/// A reply as `T`: an error reply is the server's error, a reply of another shape a protocol
/// error.
pub fn typed<T: FromRedisValue>(label: &str, value: Value) -> Result<T, Error> {
    if let Value::ServerError(e) = value {
        return Err(classify(label, &e.into()));
    }
    redis::from_redis_value(value).map_err(|e| Error::new(ErrorKind::Protocol, format!("{label}: {e}")))
}

/// Whether a server refused with READONLY (a replica now).
pub fn read_only(values: &[Value]) -> bool {
    values.iter().any(|v| matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::ReadOnly)))
}

/// The first error reply among `values`, as ours.
pub fn no_error_reply(label: &str, values: &[Value]) -> Result<(), Error> {
    match values.iter().find_map(|v| if let Value::ServerError(e) = v { Some(e.clone()) } else { None }) {
        Some(e) => Err(classify(label, &e.into())),
        None => Ok(()),
    }
}

/// Whether an error reply is READONLY: the server is a replica (a master demoted since the
/// connection was made).
pub fn is_read_only(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A `redis` crate error as ours: the server's error replies, conversions of a reply to the
/// wanted type (the connection is still in step after both), and unparsable replies (it is not).
pub fn classify(label: &str, e: &RedisError) -> Error {
    use redis::ServerErrorKind as S;
    let kind = match e.kind() {
        redis::ErrorKind::Server(k @ (S::Moved | S::Ask)) => {
            // "<slot> <host:port>", the protocol's own shape.
            let mut parts = e.detail().unwrap_or_default().split_whitespace();
            let slot = parts.next().and_then(|s| s.parse::<u16>().ok());
            let address = parts.next().map(str::to_owned);
            if let (Some(slot), Some(address)) = (slot, address) {
                return Error::redirected(format!("{label}: {e}"), Redirect { ask: k == S::Ask, slot, address });
            }
            ErrorKind::Protocol
        }
        redis::ErrorKind::Server(S::TryAgain | S::ClusterDown | S::MasterDown) => ErrorKind::ClusterBusy,
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension | redis::ErrorKind::AuthenticationFailed => {
            ErrorKind::Server
        }
        redis::ErrorKind::Io => ErrorKind::Io,
        // Unparsable replies, and replies of another type than the command has: out of step.
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("{label}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_replies_cut_anywhere() {
        let stream = b"+OK\r\n$5\r\nhe\r\nl\r\n*2\r\n:1\r\n$-1\r\n-ERR x\r\n$0\r\n\r\n";
        for cut in 0..stream.len() {
            let mut f = Framing::default();
            f.follow(&stream[..cut]).unwrap();
            f.follow(&stream[cut..]).unwrap();
            assert_eq!((f.skip, f.kind), (0, None), "cut at {cut}");
        }
    }

    #[test]
    fn framing_finds_where_each_reply_ends() {
        let replies: [&[u8]; 8] = [
            b"+OK\r\n",
            b"$5\r\nhe\r\nl\r\n",
            b"*2\r\n:1\r\n$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n*1\r\n$4\r\n*1\r\n\r\n%1\r\n+a\r\n*0\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n",
            b"-ERR x\r\n",
        ];
        let stream: Vec<u8> = replies.concat();
        for cut in 0..stream.len() {
            let mut f = Framing::default();
            let mut ends = Vec::new();
            let mut base = 0;
            for part in [&stream[..cut], &stream[cut..]] {
                let mut at = 0;
                while let Some(n) = f.advance(&part[at..]).unwrap() {
                    at += n;
                    ends.push(base + at);
                }
                base += part.len();
            }
            let expected: Vec<usize> = replies
                .iter()
                .scan(0, |sum, r| {
                    *sum += r.len();
                    Some(*sum)
                })
                .collect();
            assert_eq!(ends, expected, "cut at {cut}");
        }
    }

    #[test]
    fn framing_refuses_deep_nesting() {
        let mut f = Framing::default();
        assert!(f.follow(&b"*1\r\n".repeat(200)).is_err());
    }

    #[test]
    fn framing_refuses_hostile_lengths_at_the_header() {
        let mut f = Framing::default();
        assert!(f.follow(b"$1099511627776\r\n").is_err());
        let mut f = Framing::default();
        assert!(f.follow(b"*99999999999999999999999\r\n").is_err());
        let mut f = Framing::default();
        // A bulk string's bytes are skipped, never read as headers, whatever they hold.
        f.follow(b"$16\r\n$9999999999999\r\n\r\n").unwrap();
        assert_eq!((f.skip, f.kind), (0, None));
    }
}
