//! One connection to a redis server, ours rather than the `redis` crate's: the crate still
//! packs the commands, parses the replies (its `Parser`) and runs scripts and pipelines through
//! [`ConnectionLike`], but the socket is a [`Stream`] with one deadline per call, interrupted
//! system calls retried, signals noticed while waiting, and a bound on how much one reply may be.

use std::io::Read;
use std::time::Instant;

use redis::{ConnectionLike, Parser, RedisError, RedisResult, Value};

use super::wire::{Framing, MAX_REPLY_BYTES, classify};
use crate::error::{Error, ErrorKind};
use crate::net::{Address, Stream, Tls};

/// A connection whose parser grew past this while reading goes back to the pool with a fresh
/// (small) one, so a few large values do not keep their buffers for good.
const TRIM_ABOVE: usize = 1024 * 1024;

/// A redis connection. After an error of its own (`take_failure` returns one) it must be dropped.
pub struct Conn {
    stream: Stream,
    parser: Parser,
    deadline: Instant,
    /// The error that ended the last exchange, classified here: the `redis` crate only sees an
    /// opaque I/O error.
    failure: Option<Error>,
    /// The largest reply read since the parser was last renewed.
    largest: usize,
    /// Whether the current call's request failed to go out before any reply came: nothing
    /// reached the server, so even a command that must not run twice may run on a new connection.
    unsent: bool,
    framing: Framing,
    db: i64,
    /// The sentinels' epoch the connection was made in (see `Pool::refresh`).
    pub epoch: u64,
    /// The server's address.
    pub peer: Address,
}

/// The socket as the crate's parser reads it: each read bounded by the call's deadline and by
/// what is left of the reply's byte budget.
struct Bounded<'a> {
    stream: &'a mut Stream,
    framing: &'a mut Framing,
    deadline: Instant,
    left: usize,
    failure: &'a mut Option<Error>,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            *self.failure = Some(Error::new(
                ErrorKind::TooLarge,
                format!("{}: a reply larger than {MAX_REPLY_BYTES} bytes", self.stream.label()),
            ));
            return Err(std::io::Error::other("reply too large"));
        }
        let n = buf.len().min(self.left);
        match self.stream.read(&mut buf[..n], self.deadline) {
            Ok(read) => {
                self.left -= read;
                if let Err(what) = self.framing.follow(&buf[..read]) {
                    *self.failure = Some(Error::new(
                        ErrorKind::TooLarge,
                        format!("{}: the server announced {what}", self.stream.label()),
                    ));
                    return Err(std::io::Error::other("reply too large"));
                }
                Ok(read)
            }
            Err(e) => {
                *self.failure = Some(e);
                Err(std::io::Error::other("connection failed"))
            }
        }
    }
}

/// What a new connection says first: AUTH, SELECT and CLIENT SETNAME, as configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Login<'a> {
    /// An ACL user (with `password`).
    pub username: Option<&'a str>,
    /// The password (AUTH).
    pub password: Option<&'a str>,
    /// The db to SELECT (0 needs none).
    pub db: i64,
    /// The connection's name (CLIENT SETNAME).
    pub client_name: Option<&'a str>,
    /// Ask the server its ROLE last, and refuse it unless it is a master (a Sentinel-managed
    /// master pool: an address the sentinels gave may have been demoted since).
    pub master_only: bool,
    /// Send READONLY (a Redis Cluster replica then serves reads of its slots).
    pub readonly: bool,
}

impl Conn {
    /// Connect to `addr`, then log in (AUTH, SELECT, CLIENT SETNAME) in one round trip, all
    /// before `deadline`.
    pub fn connect(addr: &Address, tls: Option<&Tls>, login: &Login<'_>, deadline: Instant) -> Result<Self, Error> {
        let label = if tls.is_some() { format!("redis {addr} (TLS)") } else { format!("redis {addr}") };
        let stream = Stream::connect_with(addr, tls, deadline, &label)?;
        let db = login.db;
        let mut conn = Self {
            stream,
            parser: Parser::new(),
            deadline,
            failure: None,
            largest: 0,
            unsent: false,
            framing: Framing::default(),
            db,
            epoch: 0,
            peer: addr.clone(),
        };
        if let Some(handshake) = handshake(login) {
            conn.begin(deadline);
            match handshake.query::<Vec<Value>>(&mut conn) {
                Ok(replies) if login.master_only => is_master(&label, replies.last())?,
                Ok(_) => {}
                Err(e) => return Err(conn.take_failure().unwrap_or_else(|| classify(&label, &e))),
            }
        }
        Ok(conn)
    }

    /// Start a call: every read and write from now on ends by `deadline`.
    pub fn begin(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.failure = None;
        self.unsent = true;
    }

    /// Whether the call's failure came before the server could have run anything: its first
    /// request was never written whole (EPIPE or a reset on send), and no reply was read.
    pub fn nothing_sent(&self) -> bool {
        self.unsent
    }

    /// Whether the connection, idle since its last call, is closed or reset by the server (or
    /// holds bytes no request asked for): then it must not carry another request.
    pub fn is_stale(&mut self) -> bool {
        self.stream.is_stale()
    }

    /// The connection-level error that ended the last exchange, if that is what ended it.
    pub fn take_failure(&mut self) -> Option<Error> {
        self.failure.take()
    }

    /// The label of the server ("redis host:port").
    pub fn label(&self) -> &str {
        self.stream.label()
    }

    /// Give up a parser buffer that grew for a large reply (before going back to the pool).
    pub fn trim(&mut self) {
        if self.largest > TRIM_ABOVE {
            self.parser = Parser::new();
            self.largest = 0;
        }
    }

    /// Read the replies of `offset + count` commands sent, keeping the last `count`: every reply
    /// is read, errors included, so the connection stays in step; the first error reply (or
    /// one among the skipped) is the answer then.
    pub fn read_replies(&mut self, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let mut out = Vec::with_capacity(count);
        let mut first_error = None;
        let mut index = 0;
        while index < offset + count {
            match self.read_one()? {
                // RESP3 pushes are not replies (we speak RESP2, but a proxy might not).
                Value::Push { .. } => continue,
                Value::ServerError(e) if index < offset => {
                    first_error.get_or_insert(e);
                }
                value if index >= offset => out.push(value),
                _ => {}
            }
            index += 1;
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// The socket, for an event loop's thread (`bindings::on_loop`): a connection handed to
    /// one is made non-blocking and never goes back to a pool.
    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }

    /// Send packed commands (their replies are read later, with [`Conn::read_replies`]).
    pub fn send(&mut self, cmd: &[u8]) -> RedisResult<()> {
        match self.stream.write_all(&[cmd], self.deadline) {
            Ok(()) => {
                self.unsent = false;
                Ok(())
            }
            Err(e) => {
                self.failure = Some(e);
                Err(RedisError::from(std::io::Error::other("connection failed")))
            }
        }
    }

    fn read_one(&mut self) -> RedisResult<Value> {
        let mut reader = Bounded {
            stream: &mut self.stream,
            framing: &mut self.framing,
            deadline: self.deadline,
            left: MAX_REPLY_BYTES,
            failure: &mut self.failure,
        };
        let value = self.parser.parse_value(&mut reader);
        self.largest = self.largest.max(MAX_REPLY_BYTES - reader.left);
        value
    }
}

/// The commands a new connection sends first (AUTH, SELECT, CLIENT SETNAME), if any.
pub fn handshake(login: &Login<'_>) -> Option<redis::Pipeline> {
    let mut pipe = redis::pipe();
    if let Some(password) = login.password {
        let auth = pipe.cmd("AUTH");
        if let Some(username) = login.username {
            auth.arg(username);
        }
        auth.arg(password);
    }
    if login.db != 0 {
        pipe.cmd("SELECT").arg(login.db);
    }
    if let Some(name) = login.client_name {
        pipe.cmd("CLIENT").arg("SETNAME").arg(name);
    }
    if login.readonly {
        pipe.cmd("READONLY");
    }
    if login.master_only {
        pipe.cmd("ROLE");
    }
    let any = login.password.is_some() || login.db != 0 || login.client_name.is_some();
    (any || login.master_only || login.readonly).then_some(pipe)
}

/// The reply to ROLE of a server taken for a master: anything else is refused as a failure of
/// the connection (so the pool asks the sentinels again), never used for a write.
pub fn is_master(label: &str, role: Option<&Value>) -> Result<(), Error> {
    let said = match role {
        Some(Value::Array(parts)) => match parts.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if said == "master" {
        return Ok(());
    }
    Err(Error::new(ErrorKind::Io, format!("{label}: not a master (ROLE says {said:?}): the sentinels are asked again")))
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.send(cmd)?;
        loop {
            match self.read_one()? {
                // RESP3 pushes are not replies (we speak RESP2, but a proxy might not).
                Value::Push { .. } => {}
                value => return Ok(value),
            }
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        self.send(cmd)?;
        self.read_replies(offset, count)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.failure.is_none()
    }
}
