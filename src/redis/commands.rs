//! Every redis command the backends send, each written once: where it goes ([`Route`]), the
//! bytes of its request, and how its replies are read. The blocking runner (`client.rs`) and
//! the async one (`aio.rs`) run the same [`Command`] values, on every topology; a command over
//! many keys is asked for the part of its keys that one node holds, and its replies are folded
//! into one answer part by part.
//!
//! Calls made of several commands are in `calls.rs`.

use redis::{FromRedisValue, Value};

use super::wire::{classify, typed};
use crate::error::{Error, ErrorKind};
use crate::net::Counters;

/// Add to a number only when the key exists, keeping its TTL (INCRBY keeps it): atomic on the
/// server, and a missing key is reported instead of created. The result is read back with GET:
/// returning INCRBY's integer would pass it through a Lua number (a double), which is inexact
/// past 2**53.
pub const INCR_IF_EXISTS: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return false end \
                              redis.call('INCRBY', KEYS[1], ARGV[1]) \
                              return redis.call('GET', KEYS[1])";

/// RENAME that reports a missing source key instead of failing with an error reply.
pub const RENAME_IF_EXISTS: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return false end \
                                redis.call('RENAME', KEYS[1], KEYS[2]) return 1";

/// Where a command goes; the topology answers with nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A command on one key: a write goes to the key's primary, a read may go to a replica.
    Key { key: &'a [u8], write: bool },
    /// A command over many keys, split by node (and sent to every node at once).
    Keys { keys: &'a [Vec<u8>], write: bool },
    /// A command without a key, on the primary (of the first node).
    Primary,
    /// A read without a key that any server of the first node may answer.
    AnyReplica,
    /// Every primary serving keys (FLUSHDB).
    AllPrimaries,
    /// The node at this index of [`Topology::nodes`] (SCAN, one node at a time).
    Node { index: usize, write: bool },
}

impl Route<'_> {
    /// Whether the command writes (and so goes to a primary).
    pub fn writes(&self) -> bool {
        match self {
            Route::Key { write, .. } | Route::Keys { write, .. } | Route::Node { write, .. } => *write,
            Route::Primary | Route::AllPrimaries => true,
            Route::AnyReplica => false,
        }
    }

    /// How many keys the route's parts are made of (1 for a route without keys).
    pub fn key_count(&self) -> usize {
        match self {
            Route::Keys { keys, .. } => keys.len(),
            _ => 1,
        }
    }
}

/// The keys whose near-cache copies a command makes stale when it has run (or failed: it may
/// have been applied).
#[derive(Debug, PartialEq, Eq)]
pub enum Changes<'a> {
    /// A read.
    None,
    /// These keys.
    Keys(Vec<&'a [u8]>),
    /// Keys it does not name (FLUSHDB, a command we cannot read the keys of).
    All,
}

impl Changes<'_> {
    /// The same, owning its keys (to carry to where the call ends).
    pub fn owned(&self) -> OwnedChanges {
        match self {
            Changes::None => OwnedChanges::None,
            Changes::Keys(keys) => OwnedChanges::Keys(keys.iter().map(|k| k.to_vec()).collect()),
            Changes::All => OwnedChanges::All,
        }
    }
}

/// [`Changes`] owning its keys.
#[derive(Debug, PartialEq, Eq)]
pub enum OwnedChanges {
    /// A read.
    None,
    /// These keys.
    Keys(Vec<Vec<u8>>),
    /// Keys it does not name.
    All,
}

impl OwnedChanges {
    /// As [`Changes`].
    pub fn borrowed(&self) -> Changes<'_> {
        match self {
            OwnedChanges::None => Changes::None,
            OwnedChanges::Keys(keys) => Changes::Keys(keys.iter().map(Vec::as_slice).collect()),
            OwnedChanges::All => Changes::All,
        }
    }
}

/// Writes of one key, their first argument (what a raw command may change without emptying the
/// whole near cache).
const ONE_KEY_WRITES: &[&str] = &[
    "SET",
    "SETEX",
    "PSETEX",
    "SETNX",
    "GETSET",
    "GETDEL",
    "GETEX",
    "APPEND",
    "SETRANGE",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "DECR",
    "DECRBY",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "RESTORE",
    "DEL",
    "UNLINK",
    "SADD",
    "SREM",
    "SPOP",
    "HSET",
    "HSETNX",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HMSET",
    "LPUSH",
    "RPUSH",
    "LPUSHX",
    "RPUSHX",
    "LPOP",
    "RPOP",
    "LSET",
    "LREM",
    "LTRIM",
    "LINSERT",
    "ZADD",
    "ZREM",
    "ZINCRBY",
    "ZPOPMIN",
    "ZPOPMAX",
    "ZREMRANGEBYSCORE",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYLEX",
    "PFADD",
    "SETBIT",
    "XADD",
    "XTRIM",
    "XDEL",
];

/// Packed commands and how many replies they give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The bytes to send.
    pub packed: Vec<u8>,
    /// How many replies they give.
    pub replies: usize,
    /// Where each command starts in `packed` (for [`Request::asking`]).
    starts: Vec<usize>,
}

impl Request {
    /// One command.
    pub fn one(cmd: &redis::Cmd) -> Self {
        Self { packed: cmd.get_packed_command(), replies: 1, starts: vec![0] }
    }

    /// A pipeline of commands (not a transaction).
    pub fn pipe(pipe: &redis::Pipeline) -> Self {
        let mut packed = Vec::new();
        let mut starts = Vec::new();
        for cmd in pipe.cmd_iter() {
            starts.push(packed.len());
            cmd.write_packed_command(&mut packed);
        }
        Self { packed, replies: starts.len(), starts }
    }

    /// The same request with ASKING before each of its commands (a Redis Cluster slot being
    /// migrated: ASKING holds for the one command after it). Its replies alternate: ASKING's,
    /// then the command's.
    #[must_use]
    pub fn asking(self) -> Self {
        let asking = redis::cmd("ASKING").get_packed_command();
        let mut packed = Vec::with_capacity(self.packed.len() + asking.len() * self.starts.len());
        let mut starts = Vec::with_capacity(self.starts.len() * 2);
        for (i, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.packed.len());
            starts.push(packed.len());
            packed.extend_from_slice(&asking);
            starts.push(packed.len());
            packed.extend_from_slice(&self.packed[start..end]);
        }
        Self { packed, replies: self.replies * 2, starts }
    }
}

/// A redis command: where it goes, what it sends, how its replies are read.
pub trait Command: Send + Sync + 'static {
    /// The answer.
    type Output: Send + Sync + 'static;

    /// Where it goes.
    fn route(&self) -> Route<'_>;

    /// Whether it may run twice (then a pooled connection that turns out stale runs it again).
    fn idempotent(&self) -> bool {
        true
    }

    /// The answer before any reply is in.
    fn empty(&self) -> Self::Output;

    /// The keys whose near-cache copies it makes stale: by default those of a write's route (a
    /// write without keys: every key).
    fn changes(&self) -> Changes<'_> {
        match self.route() {
            route if !route.writes() => Changes::None,
            Route::Key { key, .. } => Changes::Keys(vec![key]),
            Route::Keys { keys, .. } => Changes::Keys(keys.iter().map(Vec::as_slice).collect()),
            _ => Changes::All,
        }
    }

    /// The request for the keys at `keys` (positions in the route's keys; `[0]` for a route
    /// without keys). `each`: one command per key (a Redis Cluster node: no command spans
    /// slots), every key's commands giving the same number of replies.
    fn request(&self, keys: &[usize], each: bool) -> Request;

    /// Fold the replies to [`Command::request`]`(keys, each)` into `out`; `label` names the
    /// server for errors.
    fn read(
        &self,
        keys: &[usize],
        each: bool,
        replies: Vec<Value>,
        out: &mut Self::Output,
        label: &str,
    ) -> Result<(), Error>;

    /// Count the answer in the client's counters.
    fn count(&self, _out: &Self::Output, _counters: &Counters) {}

    /// The answers for `keys` came from a node the slot map does not name (ASK: the slot is
    /// being migrated), after [`Command::read`] folded them in.
    fn asked(&self, _keys: &[usize], _out: &mut Self::Output) {}
}

/// The only reply of a one-command request, as `T`.
fn only<T: FromRedisValue>(label: &str, replies: Vec<Value>) -> Result<T, Error> {
    typed(label, replies.into_iter().next_back().unwrap_or(Value::Nil))
}

/// The first error reply among `replies`, as ours.
pub(crate) fn no_error(label: &str, replies: &[Value]) -> Result<(), Error> {
    match replies.iter().find_map(|v| if let Value::ServerError(e) = v { Some(e.clone()) } else { None }) {
        Some(e) => Err(classify(label, &e.into())),
        None => Ok(()),
    }
}

/// The values of MGET replies as one array: the one MGET's, or (one MGET per key, `each`) each
/// one's only value. (MGET, unlike GET, answers nil for a key of another type.)
fn mget_values(label: &str, each: bool, replies: Vec<Value>) -> Result<Vec<Value>, Error> {
    let mut values = Vec::new();
    for reply in replies {
        let Value::Array(found) = reply else {
            return Err(Error::new(ErrorKind::Protocol, format!("{label}: MGET answered {reply:.40?}")));
        };
        if each && found.len() != 1 {
            return Err(Error::new(ErrorKind::Protocol, format!("{label}: MGET answered another number of values")));
        }
        values.extend(found);
    }
    Ok(values)
}

/// GET.
pub struct Get(pub Vec<u8>);

impl Command for Get {
    type Output = Option<Vec<u8>>;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.0, write: false }
    }
    fn empty(&self) -> Self::Output {
        None
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        Request::one(redis::cmd("GET").arg(&self.0))
    }
    fn read(
        &self,
        _: &[usize],
        _: bool,
        replies: Vec<Value>,
        out: &mut Self::Output,
        label: &str,
    ) -> Result<(), Error> {
        *out = only(label, replies)?;
        Ok(())
    }
    fn count(&self, out: &Self::Output, counters: &Counters) {
        counters.lookups(usize::from(out.is_some()), usize::from(out.is_none()));
    }
}

/// MGET (a node's keys in one command), or a GET per key on a Redis Cluster node; `None` for
/// the keys not found.
pub struct GetMany(pub Vec<Vec<u8>>);

impl Command for GetMany {
    type Output = Vec<Option<Vec<u8>>>;
    fn route(&self) -> Route<'_> {
        Route::Keys { keys: &self.0, write: false }
    }
    fn empty(&self) -> Self::Output {
        vec![None; self.0.len()]
    }
    fn request(&self, keys: &[usize], each: bool) -> Request {
        Raw::split("MGET", &self.0, keys, each)
    }
    fn read(
        &self,
        keys: &[usize],
        each: bool,
        replies: Vec<Value>,
        out: &mut Self::Output,
        label: &str,
    ) -> Result<(), Error> {
        no_error(label, &replies)?;
        let found: Vec<Option<Vec<u8>>> = typed(label, Value::Array(mget_values(label, each, replies)?))?;
        if found.len() != keys.len() {
            return Err(Error::new(ErrorKind::Protocol, format!("{label}: MGET answered another number of values")));
        }
        for (&i, value) in keys.iter().zip(found) {
            out[i] = value;
        }
        Ok(())
    }
    fn count(&self, out: &Self::Output, counters: &Counters) {
        let hits = out.iter().filter(|v| v.is_some()).count();
        counters.lookups(hits, out.len() - hits);
    }
}

/// `SET key value [EX ttl] [NX|XX]`; whether it was stored.
pub struct Set {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Seconds to live; `None`: for good.
    pub ttl: Option<u64>,
    /// Only if absent.
    pub nx: bool,
    /// Only if present.
    pub xx: bool,
}

impl Command for Set {
    type Output = bool;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.key, write: true }
    }
    fn idempotent(&self) -> bool {
        // A plain SET may be repeated; SET NX/XX may not (the first may have applied).
        !self.nx && !self.xx
    }
    fn empty(&self) -> bool {
        false
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.key).arg(&self.value);
        if let Some(ttl) = self.ttl {
            cmd.arg("EX").arg(ttl);
        }
        if self.nx {
            cmd.arg("NX");
        } else if self.xx {
            cmd.arg("XX");
        }
        Request::one(&cmd)
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, out: &mut bool, label: &str) -> Result<(), Error> {
        *out = only::<Option<String>>(label, replies)?.is_some();
        Ok(())
    }
    fn count(&self, out: &bool, counters: &Counters) {
        counters.sets(usize::from(*out));
    }
}

/// `SET k v [EX ttl]` for every item: one pipeline per node.
pub struct SetMany {
    /// The keys.
    pub keys: Vec<Vec<u8>>,
    /// Their values.
    pub values: Vec<Vec<u8>>,
    /// Seconds to live; `None`: for good.
    pub ttl: Option<u64>,
}

impl Command for SetMany {
    type Output = ();
    fn route(&self) -> Route<'_> {
        Route::Keys { keys: &self.keys, write: true }
    }
    fn empty(&self) {}
    fn request(&self, keys: &[usize], _: bool) -> Request {
        let mut pipe = redis::pipe();
        for &i in keys {
            let cmd = pipe.cmd("SET").arg(&self.keys[i]).arg(&self.values[i]);
            if let Some(ttl) = self.ttl {
                cmd.arg("EX").arg(ttl);
            }
        }
        Request::pipe(&pipe)
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, (): &mut (), label: &str) -> Result<(), Error> {
        no_error(label, &replies)
    }
    fn count(&self, (): &(), counters: &Counters) {
        counters.sets(self.keys.len());
    }
}

/// DEL (a node's keys in one command, a DEL per key on a Redis Cluster node); how many keys
/// were there.
pub struct Delete(pub Vec<Vec<u8>>);

impl Command for Delete {
    type Output = u64;
    fn route(&self) -> Route<'_> {
        Route::Keys { keys: &self.0, write: true }
    }
    fn empty(&self) -> u64 {
        0
    }
    fn request(&self, keys: &[usize], each: bool) -> Request {
        Raw::split("DEL", &self.0, keys, each)
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, out: &mut u64, label: &str) -> Result<(), Error> {
        no_error(label, &replies)?;
        for reply in replies {
            *out += typed::<i64>(label, reply)?.max(0).unsigned_abs();
        }
        Ok(())
    }
}

/// EXISTS of one key.
pub struct Exists(pub Vec<u8>);

impl Command for Exists {
    type Output = bool;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.0, write: false }
    }
    fn empty(&self) -> bool {
        false
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        Request::one(redis::cmd("EXISTS").arg(&self.0))
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, out: &mut bool, label: &str) -> Result<(), Error> {
        *out = only(label, replies)?;
        Ok(())
    }
}

/// EXPIRE (seconds), or with `None` PERSIST; whether the key exists.
pub struct Expire {
    /// The key.
    pub key: Vec<u8>,
    /// Seconds from now; `None`: never.
    pub seconds: Option<u64>,
}

impl Command for Expire {
    type Output = bool;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.key, write: true }
    }
    fn empty(&self) -> bool {
        false
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        match self.seconds {
            Some(seconds) => Request::one(redis::cmd("EXPIRE").arg(&self.key).arg(seconds)),
            // PERSIST answers 0 for a key without a TTL: its existence is asked in the same trip.
            None => Request::pipe(redis::pipe().cmd("PERSIST").arg(&self.key).cmd("EXISTS").arg(&self.key)),
        }
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, out: &mut bool, label: &str) -> Result<(), Error> {
        no_error(label, &replies)?;
        *out = only(label, replies)?;
        Ok(())
    }
}

/// INCRBY on an existing key only ([`INCR_IF_EXISTS`]): the digits it came to, `None` when the
/// key is missing. An error reply (a non-integer, or past 64 bits) is the caller's to follow up.
pub struct Increment {
    /// The key.
    pub key: Vec<u8>,
    /// The amount.
    pub delta: i64,
}

impl Command for Increment {
    type Output = Result<Option<Vec<u8>>, Error>;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.key, write: true }
    }
    fn idempotent(&self) -> bool {
        false
    }
    fn empty(&self) -> Self::Output {
        Ok(None)
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        Request::one(redis::cmd("EVAL").arg(INCR_IF_EXISTS).arg(1).arg(&self.key).arg(self.delta))
    }
    fn read(
        &self,
        _: &[usize],
        _: bool,
        replies: Vec<Value>,
        out: &mut Self::Output,
        label: &str,
    ) -> Result<(), Error> {
        *out = match replies.into_iter().next_back() {
            Some(Value::BulkString(digits)) => Ok(Some(digits)),
            // INCRBY refused (not an integer, or past 64 bits): the caller's to follow up.
            Some(Value::ServerError(e)) => Err(classify(label, &e.into())),
            _ => Ok(None),
        };
        Ok(())
    }
}

/// RENAME `from` to `to` on one node ([`RENAME_IF_EXISTS`]); whether `from` existed.
pub struct Rename {
    /// The source.
    pub from: Vec<u8>,
    /// The target.
    pub to: Vec<u8>,
}

impl Command for Rename {
    fn changes(&self) -> Changes<'_> {
        Changes::Keys(vec![&self.from, &self.to])
    }
    type Output = bool;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.from, write: true }
    }
    fn idempotent(&self) -> bool {
        false
    }
    fn empty(&self) -> bool {
        false
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        Request::one(redis::cmd("EVAL").arg(RENAME_IF_EXISTS).arg(2).arg(&self.from).arg(&self.to))
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, out: &mut bool, label: &str) -> Result<(), Error> {
        no_error(label, &replies)?;
        *out = matches!(replies.last(), Some(Value::Int(_)));
        Ok(())
    }
}

/// FLUSHDB on every primary.
pub struct FlushDb;

impl Command for FlushDb {
    type Output = ();
    fn route(&self) -> Route<'_> {
        Route::AllPrimaries
    }
    fn empty(&self) {}
    fn request(&self, _: &[usize], _: bool) -> Request {
        Request::one(&redis::cmd("FLUSHDB"))
    }
    fn read(&self, _: &[usize], _: bool, replies: Vec<Value>, (): &mut (), label: &str) -> Result<(), Error> {
        only::<()>(label, replies)
    }
}

/// How a command as given (`execute`) is split over nodes and its answers merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// One node answers.
    One,
    /// Every key's count, added (DEL, UNLINK, EXISTS, TOUCH).
    Sum,
    /// Every key's value, in the keys' order (MGET).
    Values,
}

/// Any command, as given (the extension API: TTL, SCAN, EVAL, ...): on the node of its key (of
/// its first key for EVAL); DEL, UNLINK, EXISTS, TOUCH and MGET split by node and merged; on
/// the node asked for with `node`.
pub struct Raw {
    args: Vec<Vec<u8>>,
    pub(crate) write: bool,
    idempotent: bool,
    node: Option<usize>,
    merge: Merge,
    /// The keys of a split command (its arguments after the name).
    keys: Vec<Vec<u8>>,
}

impl Raw {
    /// `args` (the name first) as given; `write` picks a primary, `idempotent` lets a stale
    /// pooled connection run it again, `node` names the node by its index in
    /// [`Topology::nodes`].
    pub fn new(args: Vec<Vec<u8>>, write: bool, idempotent: bool, node: Option<usize>) -> Result<Self, Error> {
        let Some(name) = args.first() else {
            return Err(Error::new(ErrorKind::Config, "execute() needs a command"));
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let merge = match name.as_str() {
            _ if node.is_some() || args.len() < 2 => Merge::One,
            "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => Merge::Sum,
            "MGET" => Merge::Values,
            _ => Merge::One,
        };
        let keys = if merge == Merge::One { Vec::new() } else { args[1..].to_vec() };
        // An MGET may always go again; so may the counting commands a caller said may.
        let idempotent = idempotent || merge == Merge::Values;
        Ok(Self { args, write, idempotent, node, merge, keys })
    }

    /// The command's name, upper case.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.args[0]).to_ascii_uppercase()
    }

    /// The arguments, the name first.
    pub fn args(&self) -> &[Vec<u8>] {
        &self.args
    }

    /// `name` over the keys at `at`: one command, or one per key.
    pub(crate) fn split(name: &str, keys: &[Vec<u8>], at: &[usize], each: bool) -> Request {
        if each {
            let mut pipe = redis::pipe();
            for &i in at {
                pipe.cmd(name).arg(&keys[i]);
            }
            return Request::pipe(&pipe);
        }
        let mut cmd = redis::cmd(name);
        for &i in at {
            cmd.arg(&keys[i]);
        }
        Request::one(&cmd)
    }

    /// The key that places a one-node command: EVAL's first key (none: the first node), else the
    /// first argument.
    fn placing_key(&self) -> Option<&[u8]> {
        let name = self.name();
        if name == "EVAL" || name == "EVALSHA" || name == "FCALL" || name == "FCALL_RO" {
            let keys = std::str::from_utf8(self.args.get(2)?).ok()?.parse::<usize>().ok()?;
            return if keys > 0 { self.args.get(3).map(Vec::as_slice) } else { None };
        }
        self.args.get(1).map(Vec::as_slice)
    }
}

impl Command for Raw {
    type Output = Value;
    fn changes(&self) -> Changes<'_> {
        if !self.write {
            return Changes::None;
        }
        if self.node.is_some() {
            return Changes::All;
        }
        if self.merge != Merge::One {
            return Changes::Keys(self.keys.iter().map(Vec::as_slice).collect());
        }
        let name = self.name();
        if matches!(name.as_str(), "EVAL" | "EVALSHA" | "FCALL") {
            let count = self.args.get(2).and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok());
            return match count.and_then(|n| self.args.get(3..3 + n)) {
                Some(keys) => Changes::Keys(keys.iter().map(Vec::as_slice).collect()),
                None => Changes::All,
            };
        }
        match self.args.get(1) {
            Some(key) if ONE_KEY_WRITES.contains(&name.as_str()) => Changes::Keys(vec![key]),
            _ => Changes::All,
        }
    }
    fn route(&self) -> Route<'_> {
        if let Some(index) = self.node {
            return Route::Node { index, write: self.write };
        }
        if self.merge != Merge::One {
            return Route::Keys { keys: &self.keys, write: self.write };
        }
        match self.placing_key() {
            Some(key) => Route::Key { key, write: self.write },
            None if self.write => Route::Primary,
            None => Route::AnyReplica,
        }
    }
    fn idempotent(&self) -> bool {
        self.idempotent
    }
    fn empty(&self) -> Value {
        match self.merge {
            Merge::One => Value::Nil,
            Merge::Sum => Value::Int(0),
            Merge::Values => Value::Array(vec![Value::Nil; self.keys.len()]),
        }
    }
    fn request(&self, keys: &[usize], each: bool) -> Request {
        match self.merge {
            Merge::One => {
                let mut cmd = redis::cmd(&String::from_utf8_lossy(&self.args[0]));
                for a in &self.args[1..] {
                    cmd.arg(a.as_slice());
                }
                Request::one(&cmd)
            }
            Merge::Sum => Self::split(&self.name(), &self.keys, keys, each),
            Merge::Values => Self::split("MGET", &self.keys, keys, each),
        }
    }
    fn read(&self, keys: &[usize], each: bool, replies: Vec<Value>, out: &mut Value, label: &str) -> Result<(), Error> {
        no_error(label, &replies)?;
        match self.merge {
            Merge::One => *out = replies.into_iter().next_back().unwrap_or(Value::Nil),
            Merge::Sum => {
                let total: i64 = replies.into_iter().map(|r| typed::<i64>(label, r)).sum::<Result<i64, Error>>()?;
                if let Value::Int(n) = out {
                    *n += total;
                }
            }
            Merge::Values => {
                let values = mget_values(label, each, replies)?;
                if values.len() != keys.len() {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        format!("{label}: MGET answered another number of values"),
                    ));
                }
                if let Value::Array(slots) = out {
                    for (&i, value) in keys.iter().zip(values) {
                        slots[i] = value;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_goes_before_each_command_of_a_pipeline() {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg("k").cmd("PTTL").arg("k");
        let asked = Request::pipe(&pipe).asking();
        let mut expected = redis::pipe();
        expected.cmd("ASKING").cmd("GET").arg("k").cmd("ASKING").cmd("PTTL").arg("k");
        assert_eq!(asked.packed, expected.get_packed_pipeline());
        assert_eq!(asked.replies, 4);
        let one = Request::one(redis::cmd("GET").arg("k")).asking();
        let mut expected = redis::pipe();
        expected.cmd("ASKING").cmd("GET").arg("k");
        assert_eq!((one.packed, one.replies), (expected.get_packed_pipeline(), 2));
    }
}
