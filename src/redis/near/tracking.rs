//! The near cache's invalidation connection to one server: RESP3, `CLIENT TRACKING ON BCAST`
//! with the cache's key prefix, on a connection of its own that carries nothing else.
//!
//! Why broadcast mode on its own connection, rather than the default mode with `REDIRECT`:
//! - the server's promise is about this one connection: while it is up, every write under
//!   the prefix sends us its keys; when it drops we see it and
//!   empty the store. Under `REDIRECT`, the promise hangs on every pooled data connection: one
//!   of them dropping silently ends the invalidations of the keys it read (redis #11767),
//!   and nothing tells the invalidation connection;
//! - the pools, the async multiplexed connections and the cluster redirections stay as they
//!   are (no `CLIENT TRACKING` on each data connection, no client id to keep in step), and
//!   the server keeps no table of the keys each process read;
//! - the price: every write under the prefix is pushed to every process with tracking on,
//!   read or not (a few dozen bytes per key written, per process).
//!
//! The connection is non-blocking once subscribed: [`Tracking::drain`] reads what has arrived
//! (one system call when nothing has) before every local hit, so an invalidation the server
//! sent before the hit began is applied before the hit is served.

use std::time::{Duration, Instant};

use redis::Value;

use crate::error::{Error, ErrorKind};
use crate::net::{Address, Stream, Tls};
use crate::redis::wire::Framing;

/// A connection that was behind (see [`BEHIND`]) asks the server for a mark (a PING: its
/// answer comes after everything queued for us before it); unanswered this long, the
/// connection counts as lost.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// A silent peer (gone without a reset, a network partition) is found by the kernel's TCP
/// keepalive: probes after 1 s idle, every 1 s, the connection reset after 2 unanswered.
/// Nothing is sent on the connection for it: a command of ours would queue output for this
/// connection early in the server's event-loop pass, and the server would then write the
/// replies of writes made later in that pass before our invalidations (it writes clients in
/// the order they got output), opening a window this design keeps shut.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(1), Duration::from_secs(1), 2);

/// The most bytes one drain reads (a flood of invalidations is applied in batches). A drain that
/// stops there has not read everything that arrived: it vouches for nothing this time.
const READ_CHUNK: usize = 256 * 1024;

/// A drain that finds at least this much waiting was behind: the server may hold more for us
/// than the socket did (it stops writing to a connection whose reader falls behind), so the
/// connection vouches for nothing until a mark (PING) sent after that is answered (its answer
/// comes after everything queued before it).
const BEHIND: usize = 8 * 1024;

/// The most bytes of one unfinished push held (an invalidation of very many keys at once is
/// far below it); past it the connection is dropped, and the store emptied.
const MAX_PARTIAL: usize = 64 * 1024 * 1024;

/// What a drain found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// These keys changed (or expired, or were evicted).
    Invalidate(Vec<Vec<u8>>),
    /// Every key may have changed (FLUSHALL, FLUSHDB, a tracking table overflow).
    Flush,
}

/// How to subscribe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// `None`: every key of the server (a key function we cannot see into).
    pub prefix: Option<Vec<u8>>,
    /// An ACL user (with `password`).
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
}

/// The frames this connection gets by the thousand, read without the general parser (which
/// costs microseconds a frame): an invalidation of keys (`>2 $10 invalidate *N $len key...`),
/// the whole keyspace's (`>2 $10 invalidate _`), and the answer to our mark (`+PONG`). `None`
/// for anything else, or any doubt: the general parser reads it.
fn quick(frame: &[u8]) -> Option<Value> {
    const HEAD: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";
    if frame == b"+PONG\r\n" {
        return Some(Value::SimpleString("PONG".to_owned()));
    }
    let mut rest = frame.strip_prefix(HEAD)?;
    if rest == b"_\r\n" || rest == b"*-1\r\n" {
        return Some(Value::Push { kind: redis::PushKind::Invalidate, data: vec![Value::Nil] });
    }
    let line = |bytes: &[u8], kind: u8| -> Option<(usize, usize)> {
        let (&first, after) = bytes.split_first()?;
        let end = after.windows(2).position(|w| w == b"\r\n")?;
        let digits = std::str::from_utf8(&after[..end]).ok()?;
        (first == kind && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
            .map(|n| (n, 1 + end + 2))
    };
    let (count, used) = line(rest, b'*')?;
    rest = &rest[used..];
    let mut keys = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (len, used) = line(rest, b'$')?;
        let body = rest.get(used..used.checked_add(len)?)?;
        if rest.get(used + len..used + len + 2)? != b"\r\n" {
            return None;
        }
        keys.push(Value::BulkString(body.to_vec()));
        rest = &rest[used + len + 2..];
    }
    rest.is_empty().then(|| Value::Push { kind: redis::PushKind::Invalidate, data: vec![Value::Array(keys)] })
}

/// A subscribed invalidation connection.
pub struct Tracking {
    stream: Stream,
    framing: Framing,
    /// Bytes read that do not yet make a whole push.
    partial: Vec<u8>,
    /// Where a read lands (kept: zeroing a fresh buffer at every local hit costs more than the
    /// read that usually finds nothing).
    buf: Box<[u8]>,
    /// When a mark (PING) went out that has not been answered.
    ping_sent: Option<Instant>,
    /// When the last answered mark went out (first: when the subscription was asked).
    answered: Instant,
    /// Since when the connection is known to have been behind (see [`BEHIND`]): it vouches for
    /// nothing until a mark sent at or after this is answered.
    behind: Option<Instant>,
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

impl Tracking {
    /// Connect to `addr`, speak RESP3 (logging in, as configured) and subscribe to the prefix's
    /// invalidations, before `deadline`. A server that refuses (redis before 6, a service that
    /// disables tracking) answers with a [`ErrorKind::Server`] error naming why.
    pub fn subscribe(
        addr: &Address,
        tls: Option<&Tls>,
        subscription: &Subscription,
        deadline: Instant,
    ) -> Result<Self, Error> {
        let label =
            if tls.is_some() { format!("redis {addr} (TLS, tracking)") } else { format!("redis {addr} (tracking)") };
        let mut stream = Stream::connect_with(addr, tls, deadline, &label)?;
        let mut hello = redis::cmd("HELLO");
        hello.arg(3);
        if let Some(password) = &subscription.password {
            hello.arg("AUTH").arg(subscription.username.as_deref().unwrap_or("default")).arg(password);
        }
        let mut track = redis::cmd("CLIENT");
        track.arg("TRACKING").arg("ON").arg("BCAST");
        if let Some(prefix) = &subscription.prefix {
            track.arg("PREFIX").arg(prefix.as_slice());
        }
        let (hello, track) = (hello.get_packed_command(), track.get_packed_command());
        let asked = Instant::now();
        stream.write_all(&[&hello, &track], deadline)?;
        let mut conn = Self {
            stream,
            framing: Framing::default(),
            partial: Vec::new(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            ping_sent: None,
            answered: asked,
            behind: None,
        };
        for what in ["HELLO 3", "CLIENT TRACKING"] {
            match conn.reply(deadline)? {
                Value::ServerError(e) => {
                    let e: redis::RedisError = e.into();
                    return Err(Error::new(
                        ErrorKind::Server,
                        format!(
                            "{label}: the server refused {what} (client-side caching needs redis 6 or later with tracking allowed): {e}"
                        ),
                    ));
                }
                _ if what == "HELLO 3" => {}
                Value::Okay => {}
                Value::SimpleString(s) if s == "OK" => {}
                other => {
                    return Err(Error::new(ErrorKind::Protocol, format!("{label}: {what} answered {other:?}")));
                }
            }
        }
        conn.stream.set_keepalive(KEEPALIVE.0, KEEPALIVE.1, KEEPALIVE.2)?;
        conn.stream.set_nonblocking()?;
        Ok(conn)
    }

    /// One whole reply, waiting for it until `deadline` (the subscription's answers).
    fn reply(&mut self, deadline: Instant) -> Result<Value, Error> {
        loop {
            if let Some(value) = self.take()? {
                // A push may come before the answer (an invalidation already): not the answer.
                if !matches!(value, Value::Push { .. }) {
                    return Ok(value);
                }
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf, deadline)?;
            self.partial.extend_from_slice(&buf[..n]);
        }
    }

    /// The first whole value in `partial`, taken out of it.
    fn take(&mut self) -> Result<Option<Value>, Error> {
        let mut at = 0;
        let value = self.next_value(&mut at)?;
        self.partial.drain(..at);
        Ok(value)
    }

    /// The whole value in `partial` that starts at `at`, moving `at` past it (the bytes stay:
    /// the caller removes what it consumed once, not a shift of the rest per value).
    fn next_value(&mut self, at: &mut usize) -> Result<Option<Value>, Error> {
        let rest = &self.partial[*at..];
        let Some(end) = self.framing.whole(rest, self.stream.label())? else { return Ok(None) };
        let frame = &rest[..end];
        let value = match quick(frame) {
            Some(value) => value,
            None => redis::parse_redis_value(frame)
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("{}: {e}", self.stream.label())))?,
        };
        *at += end;
        Ok(Some(value))
    }

    /// Read every push that has arrived, without waiting, into `events`. Whether the connection
    /// vouches for local hits now: everything that arrived was read, and it is not catching up
    /// (see [`BEHIND`]; then a mark is asked for, and its answer ends the catching up). An error
    /// means the connection is lost (closed, reset, a mark unanswered past [`SILENCE`], or
    /// nonsense): drop it, and everything it vouched for.
    pub fn drain(&mut self, now: Instant, events: &mut Vec<Event>) -> Result<bool, Error> {
        let mut read = 0;
        let mut emptied = false;
        while read < READ_CHUNK {
            let Some(n) = self.stream.read_arrived(&mut self.buf)? else {
                emptied = true;
                break;
            };
            read += n;
            if self.partial.len() + n > MAX_PARTIAL {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("{}: a push longer than {MAX_PARTIAL} bytes", self.stream.label()),
                ));
            }
            self.partial.extend_from_slice(&self.buf[..n]);
            let mut at = 0;
            while let Some(value) = self.next_value(&mut at)? {
                self.apply(value, events)?;
            }
            self.partial.drain(..at);
        }
        if let Some(sent) = self.ping_sent
            && now.saturating_duration_since(sent) > SILENCE
        {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("{}: no answer to a PING in {SILENCE:?}", self.stream.label()),
            ));
        }
        // Behind: much was waiting, or a push is half read (the server is writing it now).
        if read >= BEHIND || !self.partial.is_empty() {
            self.behind = Some(now);
        }
        if self.behind.is_some_and(|since| self.answered >= since) {
            self.behind = None;
        }
        if self.ping_sent.is_none() && self.behind.is_some() {
            self.stream.send_arrived(PING)?;
            self.ping_sent = Some(now);
        }
        Ok(emptied && self.behind.is_none())
    }

    /// Read what has arrived (keeping the socket flowing while reads go to the server), without
    /// vouching for anything.
    pub fn keep_up(&mut self, now: Instant, events: &mut Vec<Event>) -> Result<(), Error> {
        self.drain(now, events).map(|_| ())
    }

    fn apply(&mut self, value: Value, events: &mut Vec<Event>) -> Result<(), Error> {
        match value {
            Value::Push { kind: redis::PushKind::Invalidate, data } => {
                match data.into_iter().next() {
                    Some(Value::Array(keys)) => {
                        let keys = keys
                            .into_iter()
                            .map(|k| match k {
                                Value::BulkString(b) => Ok(b),
                                Value::SimpleString(s) => Ok(s.into_bytes()),
                                other => Err(other),
                            })
                            .collect::<Result<Vec<_>, _>>();
                        match keys {
                            Ok(keys) => events.push(Event::Invalidate(keys)),
                            // Keys we cannot read: every key may have changed.
                            Err(_) => events.push(Event::Flush),
                        }
                    }
                    // A null: the whole keyspace (FLUSHALL, FLUSHDB, the tracking table's
                    // overflow).
                    _ => events.push(Event::Flush),
                }
                Ok(())
            }
            // Another push (a server notice): not ours to read.
            Value::Push { .. } => Ok(()),
            // The answer to our mark.
            Value::SimpleString(s) if s == "PONG" => match self.ping_sent.take() {
                Some(sent) => {
                    self.answered = sent;
                    Ok(())
                }
                None => {
                    Err(Error::new(ErrorKind::Protocol, format!("{}: a PONG nobody asked for", self.stream.label())))
                }
            },
            Value::ServerError(e) => {
                let e: redis::RedisError = e.into();
                Err(Error::new(ErrorKind::Server, format!("{}: {e}", self.stream.label())))
            }
            other => Err(Error::new(ErrorKind::Protocol, format!("{}: unexpected {other:?}", self.stream.label()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general parser makes of `frame`.
    fn general(frame: &[u8]) -> Value {
        redis::parse_redis_value(frame).expect("a frame the test made whole")
    }

    #[test]
    fn the_quick_reader_agrees_with_the_general_parser() {
        let frames: [&[u8]; 6] = [
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nk:1\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$0\r\n\r\n",
            // A key holding CRLF and a byte that is not UTF-8.
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$4\r\n\r\n\xff!\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*0\r\n",
            b">2\r\n$10\r\ninvalidate\r\n_\r\n",
            b"+PONG\r\n",
        ];
        for frame in frames {
            assert_eq!(quick(frame), Some(general(frame)), "{}", String::from_utf8_lossy(frame));
        }
    }

    #[test]
    fn the_quick_reader_leaves_what_it_doubts_to_the_general_parser() {
        let frames: [&[u8]; 7] = [
            // A length that runs past the frame, or stops short of it.
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$9\r\nk:1\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk:1\r\n",
            // More bytes than the count says; a negative or signed count.
            b">2\r\n$10\r\ninvalidate\r\n*0\r\n$1\r\na\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*-2\r\n",
            b">2\r\n$10\r\ninvalidate\r\n*+1\r\n$1\r\na\r\n",
            // Another push kind; another answer.
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b"-ERR no\r\n",
        ];
        for frame in frames {
            assert_eq!(quick(frame), None, "{}", String::from_utf8_lossy(frame));
        }
    }
}
