//! Memcached's text protocol: requests are written into a buffer, replies are parsed from the
//! bytes read so far (returning `None` until a whole reply is there).
//!
//! Keys reach this module already checked (`keys::check`): no whitespace, no control
//! characters, at most 250 bytes, so they can never split a command line.

use std::io::Write as _;

use crate::error::{Error, ErrorKind};

/// The largest value a server may announce: memcached's own ceiling for its item size (`-I`
/// accepts at most 1 GiB). A longer length is a protocol error, never an allocation.
pub const MAX_VALUE_LEN: usize = 1 << 30;

/// Which storage command to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Store unconditionally.
    Set,
    /// Store only if the key holds nothing.
    Add,
    /// Store only if the key holds something.
    Replace,
}

/// One reply line (with its data block, for `VALUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `VALUE <key> <flags> <bytes> [<cas>]` and its data block.
    Value { key: Vec<u8>, flags: u32, data: Vec<u8>, cas: Option<u64> },
    /// `END`: the end of a retrieval's values.
    End,
    /// `STORED`.
    Stored,
    /// `NOT_STORED`: `add` found a value, `replace` found none, or the item was refused.
    NotStored,
    /// `EXISTS`: `cas` found a newer value.
    Exists,
    /// `NOT_FOUND`.
    NotFound,
    /// `DELETED`.
    Deleted,
    /// `TOUCHED`.
    Touched,
    /// The new value of `incr`/`decr`.
    Number(u64),
    /// `OK` (`flush_all`, `verbosity`).
    Ok,
    /// `VERSION <version>`.
    Version(String),
    /// `STAT <name> <value>`.
    Stat(String, String),
    /// `ERROR`, `CLIENT_ERROR <message>` or `SERVER_ERROR <message>`: the server refused the
    /// command. The connection stays in step (memcached reads and drops the data block).
    Error(String),
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if !crate::keys::wire_ok(key, false) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("invalid memcached key {:?}", String::from_utf8_lossy(key)),
        ));
    }
    Ok(())
}

/// `get k1 k2 ...` (or `gets`, which also returns CAS ids).
pub fn encode_get(buf: &mut Vec<u8>, keys: &[&[u8]], with_cas: bool) -> Result<(), Error> {
    buf.extend_from_slice(if with_cas { b"gets" } else { b"get" });
    for key in keys {
        check_key(key)?;
        buf.push(b' ');
        buf.extend_from_slice(key);
    }
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// The command line of a storage command, without its data block (which follows it on the
/// wire, then `\r\n`): for sending large values without copying them.
pub fn encode_store_header(
    buf: &mut Vec<u8>,
    cmd: Store,
    key: &[u8],
    flags: u32,
    exptime: i64,
    len: usize,
) -> Result<(), Error> {
    check_key(key)?;
    let name: &[u8] = match cmd {
        Store::Set => b"set ",
        Store::Add => b"add ",
        Store::Replace => b"replace ",
    };
    buf.extend_from_slice(name);
    buf.extend_from_slice(key);
    let _ = write!(buf, " {flags} {exptime} {len}\r\n");
    Ok(())
}

/// How many bytes the reply at the start of `buf` takes in all, when it is a `VALUE` whose
/// header line has arrived: lets a reader size its buffer once for a large value.
pub fn value_frame_len(buf: &[u8]) -> Option<usize> {
    if !buf.starts_with(b"VALUE ") {
        return None;
    }
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(buf[..eol].split(|&b| b == b' ').nth(3)?).ok()?.parse().ok()?;
    eol.checked_add(2)?.checked_add(len)?.checked_add(2)
}

/// A storage command and its data block.
pub fn encode_store(
    buf: &mut Vec<u8>,
    cmd: Store,
    key: &[u8],
    flags: u32,
    exptime: i64,
    data: &[u8],
) -> Result<(), Error> {
    encode_store_header(buf, cmd, key, flags, exptime, data.len())?;
    buf.extend_from_slice(data);
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `delete <key>`.
pub fn encode_delete(buf: &mut Vec<u8>, key: &[u8]) -> Result<(), Error> {
    check_key(key)?;
    buf.extend_from_slice(b"delete ");
    buf.extend_from_slice(key);
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// `incr <key> <delta>` or `decr <key> <delta>`.
pub fn encode_incr(buf: &mut Vec<u8>, key: &[u8], delta: u64, decr: bool) -> Result<(), Error> {
    check_key(key)?;
    buf.extend_from_slice(if decr { b"decr " } else { b"incr " });
    buf.extend_from_slice(key);
    let _ = write!(buf, " {delta}\r\n");
    Ok(())
}

/// `touch <key> <exptime>`.
pub fn encode_touch(buf: &mut Vec<u8>, key: &[u8], exptime: i64) -> Result<(), Error> {
    check_key(key)?;
    buf.extend_from_slice(b"touch ");
    buf.extend_from_slice(key);
    let _ = write!(buf, " {exptime}\r\n");
    Ok(())
}

/// A command without arguments that can be sent as is: `flush_all`, `version`, `stats`.
pub fn encode_simple(buf: &mut Vec<u8>, command: &str) {
    buf.extend_from_slice(command.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

fn protocol_error(what: &str, line: &[u8]) -> Error {
    Error::new(ErrorKind::Protocol, format!("memcached sent {what}: {:?}", String::from_utf8_lossy(line)))
}

fn parse_num<T: std::str::FromStr>(field: Option<&[u8]>, line: &[u8]) -> Result<T, Error> {
    field
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| protocol_error("a malformed line", line))
}

/// Parse one reply from the start of `buf`. `Ok(None)`: more bytes are needed. Otherwise the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, Error> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        // A line longer than any reply line memcached sends means we are out of step.
        if buf.len() > 8192 && !buf.starts_with(b"VALUE ") {
            return Err(protocol_error("an overlong line", &buf[..64]));
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let after_line = eol + 2;
    let reply = match line {
        b"END" => Reply::End,
        b"STORED" => Reply::Stored,
        b"NOT_STORED" => Reply::NotStored,
        b"EXISTS" => Reply::Exists,
        b"NOT_FOUND" => Reply::NotFound,
        b"DELETED" => Reply::Deleted,
        b"TOUCHED" => Reply::Touched,
        b"OK" => Reply::Ok,
        b"ERROR" => Reply::Error("ERROR".into()),
        _ if line.starts_with(b"VALUE ") => {
            let mut fields = line.split(|&b| b == b' ').skip(1);
            let key = fields.next().ok_or_else(|| protocol_error("a malformed VALUE line", line))?.to_vec();
            let flags: u32 = parse_num(fields.next(), line)?;
            let len: usize = parse_num(fields.next(), line)?;
            let cas = match fields.next() {
                Some(f) => Some(parse_num::<u64>(Some(f), line)?),
                None => None,
            };
            if len > MAX_VALUE_LEN {
                return Err(protocol_error("a value length past memcached's 1 GiB item limit", line));
            }
            let end = after_line
                .checked_add(len)
                .and_then(|n| n.checked_add(2))
                .ok_or_else(|| protocol_error("an impossible length", line))?;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(protocol_error("a data block without its CRLF", line));
            }
            let data = buf[after_line..end - 2].to_vec();
            return Ok(Some((Reply::Value { key, flags, data, cas }, end)));
        }
        _ if line.starts_with(b"VERSION ") => Reply::Version(String::from_utf8_lossy(&line[8..]).into_owned()),
        _ if line.starts_with(b"STAT ") => {
            let rest = String::from_utf8_lossy(&line[5..]).into_owned();
            let (name, value) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            Reply::Stat(name.to_owned(), value.to_owned())
        }
        _ if line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR") => {
            Reply::Error(String::from_utf8_lossy(line).into_owned())
        }
        _ if !line.is_empty() && line.iter().all(u8::is_ascii_digit) => Reply::Number(parse_num(Some(line), line)?),
        _ => return Err(protocol_error("an unexpected line", line)),
    };
    Ok(Some((reply, after_line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> (Reply, usize) {
        parse(bytes).unwrap().unwrap()
    }

    #[test]
    fn encodes_commands() {
        let mut b = Vec::new();
        encode_get(&mut b, &[b"a", b"b"], false).unwrap();
        encode_store(&mut b, Store::Add, b"k", 16, -1, b"v\r\n").unwrap();
        encode_store(&mut b, Store::Replace, b"k", 0, 0, b"").unwrap();
        encode_incr(&mut b, b"n", 5, true).unwrap();
        encode_touch(&mut b, b"t", 300).unwrap();
        encode_delete(&mut b, b"d").unwrap();
        assert_eq!(
            b,
            b"get a b\r\nadd k 16 -1 3\r\nv\r\n\r\nreplace k 0 0 0\r\n\r\ndecr n 5\r\ntouch t 300\r\ndelete d\r\n"
                .to_vec()
        );
    }

    #[test]
    fn refuses_keys_that_could_inject_commands() {
        let mut b = Vec::new();
        for key in [&b"a b"[..], b"x\r\nflush_all", b"", &[b'k'; 251], b"tab\t", b"\x00"] {
            assert_eq!(encode_delete(&mut b, key).unwrap_err().kind(), ErrorKind::InvalidKey);
            assert_eq!(encode_get(&mut b, &[b"ok", key], false).unwrap_err().kind(), ErrorKind::InvalidKey);
        }
    }

    #[test]
    fn parses_values_incrementally() {
        let full = b"VALUE k 4 5 99\r\nhe\r\nl\r\nEND\r\n";
        for cut in 0..full.len() - 5 {
            if cut < 20 {
                assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
            }
        }
        let (reply, used) = one(full);
        assert_eq!(reply, Reply::Value { key: b"k".to_vec(), flags: 4, data: b"he\r\nl".to_vec(), cas: Some(99) });
        assert_eq!(one(&full[used..]), (Reply::End, 5));
    }

    #[test]
    fn frame_length_of_a_value() {
        assert_eq!(value_frame_len(b"VALUE k 0 5\r\nhe"), Some(13 + 5 + 2));
        assert_eq!(value_frame_len(b"VALUE k 0 5"), None);
        assert_eq!(value_frame_len(b"END\r\n"), None);
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(one(b"STORED\r\n").0, Reply::Stored);
        assert_eq!(one(b"NOT_STORED\r\n").0, Reply::NotStored);
        assert_eq!(one(b"NOT_FOUND\r\n").0, Reply::NotFound);
        assert_eq!(one(b"18446744073709551615\r\n").0, Reply::Number(u64::MAX));
        assert_eq!(one(b"VERSION 1.6.18\r\n").0, Reply::Version("1.6.18".into()));
        assert_eq!(one(b"STAT pid 42\r\n").0, Reply::Stat("pid".into(), "42".into()));
        assert!(
            matches!(one(b"SERVER_ERROR object too large for cache\r\n").0, Reply::Error(m) if m.contains("too large"))
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert_eq!(parse(b"HELLO\r\n").unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse(b"VALUE k x 1\r\na\r\n").unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse(b"VALUE k 0 1\r\nab\r\n").unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse(b"VALUE k 0 99999999999999999999999\r\n").unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse(b"VALUE k 0 1099511627776\r\n").unwrap_err().kind(), ErrorKind::Protocol);
        assert_eq!(parse(&[b'x'; 9000]).unwrap_err().kind(), ErrorKind::Protocol);
    }
}
