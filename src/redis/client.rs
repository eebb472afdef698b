//! The redis client: Django's topology (the first server takes every write; reads go to a
//! random one of the others, or to the first when it is alone), one pool per server, and the
//! commands a cache backend needs, each one round trip.

use std::sync::atomic::{AtomicU64, Ordering};

use num_bigint::BigInt;
use redis::{Connection, ConnectionLike, Script, Value};

use super::pool::{Loan, Pool, convert};
use crate::error::{Error, ErrorKind};

/// Add to a number only when the key exists, keeping its TTL (INCRBY keeps it): atomic on the
/// server, and a missing key is reported instead of created.
const INCR_IF_EXISTS: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return false end \
                              return redis.call('INCRBY', KEYS[1], ARGV[1])";

fn is_connection_failure(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Protocol)
}

/// What an increment past 64 bits came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BigIncr {
    /// The new value, as decimal digits.
    Value(String),
    /// The key does not exist.
    Missing,
    /// The stored value is not an integer.
    NotInteger,
}

/// A redis client over a leader and its read replicas.
pub struct Client {
    pools: Vec<Pool>,
    incr: Script,
    /// xorshift state for picking a replica
    pick: AtomicU64,
}

impl Client {
    /// A client over `pools`; the first is the leader.
    pub fn new(pools: Vec<Pool>) -> Result<Self, Error> {
        if pools.is_empty() {
            return Err(Error::new(ErrorKind::InvalidKey, "no redis server configured"));
        }
        Ok(Self { pools, incr: Script::new(INCR_IF_EXISTS), pick: AtomicU64::new(0x9E37_79B9_7F4A_7C15) })
    }

    /// The pools, leader first.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The index of the server for a read or a write.
    pub fn server_for(&self, write: bool) -> usize {
        if write || self.pools.len() == 1 {
            return 0;
        }
        let mut x = self.pick.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.pick.store(x, Ordering::Relaxed);
        1 + (x % (self.pools.len() as u64 - 1)) as usize
    }

    /// Run `f` on a connection to the server for `write`. A connection that fails is dropped,
    /// never pooled again. When a pooled connection turns out dead (the server restarted since)
    /// and the command is `idempotent`, it is run once more on a new connection, so a restart
    /// costs no error.
    pub fn run<T>(
        &self,
        write: bool,
        idempotent: bool,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let pool = &self.pools[self.server_for(write)];
        let Loan { mut conn, mut pooled } = pool.take()?;
        loop {
            match f(&mut conn) {
                Ok(v) => {
                    pool.put(conn);
                    return Ok(v);
                }
                Err(e) => {
                    let err = convert(pool.name(), &e);
                    drop(conn);
                    if !is_connection_failure(&err) {
                        // An error reply: the exchange completed, the connection is in step.
                        // Its slot is freed; a new connection will be made when needed.
                        pool.forget();
                        return Err(err);
                    }
                    if pooled && idempotent && err.kind() == ErrorKind::Io {
                        pool.drop_idle();
                        conn = pool.replace()?;
                        pooled = false;
                        continue;
                    }
                    pool.forget();
                    if pooled {
                        pool.drop_idle();
                    }
                    return Err(err);
                }
            }
        }
    }

    /// GET.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.run(false, true, |c| redis::cmd("GET").arg(key).query(c))
    }

    /// MGET, in one round trip; `None` for the keys not found.
    pub fn mget(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(false, true, |c| redis::cmd("MGET").arg(keys).query(c))
    }

    /// SET with an optional expiry in seconds and NX/XX; whether it was stored.
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Option<u64>, nx: bool, xx: bool) -> Result<bool, Error> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("EX").arg(ttl);
        }
        if nx {
            cmd.arg("NX");
        } else if xx {
            cmd.arg("XX");
        }
        // A plain SET may be repeated; SET NX/XX may not (the first may have applied).
        self.run(true, !nx && !xx, |c| cmd.query::<Option<String>>(c)).map(|r| r.is_some())
    }

    /// Store every item with one pipeline (one round trip): `SET k v [EX ttl]` each.
    pub fn set_many(&self, items: &[(&[u8], &[u8])], ttl: Option<u64>) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (k, v) in items {
            let cmd = pipe.cmd("SET").arg(*k).arg(*v);
            if let Some(ttl) = ttl {
                cmd.arg("EX").arg(ttl);
            }
            cmd.ignore();
        }
        self.run(true, true, |c| pipe.query::<()>(c))
    }

    /// DEL; how many keys were there.
    pub fn delete(&self, keys: &[&[u8]]) -> Result<u64, Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(true, true, |c| redis::cmd("DEL").arg(keys).query(c))
    }

    /// EXISTS.
    pub fn exists(&self, key: &[u8]) -> Result<bool, Error> {
        self.run(false, true, |c| redis::cmd("EXISTS").arg(key).query(c))
    }

    /// EXPIRE (seconds); whether the key exists.
    pub fn expire(&self, key: &[u8], seconds: u64) -> Result<bool, Error> {
        self.run(true, true, |c| redis::cmd("EXPIRE").arg(key).arg(seconds).query(c))
    }

    /// PERSIST; whether the key exists. (PERSIST answers 0 for a key without a TTL, so the
    /// existence is asked in the same round trip.)
    pub fn persist(&self, key: &[u8]) -> Result<bool, Error> {
        self.run(true, true, |c| {
            let (_, exists): (i64, bool) = redis::pipe().cmd("PERSIST").arg(key).cmd("EXISTS").arg(key).query(c)?;
            Ok(exists)
        })
    }

    /// INCRBY on an existing key only, atomically; `None` when the key is missing.
    pub fn incr(&self, key: &[u8], delta: i64) -> Result<Option<i64>, Error> {
        let script = &self.incr;
        self.run(true, false, |c| {
            let value: Value = script.key(key).arg(delta).invoke(c)?;
            match value {
                Value::Int(n) => Ok(Some(n)),
                _ => Ok(None),
            }
        })
    }

    /// Add `delta` to an integer of any size: WATCH, GET, then `SET ... KEEPTTL` in MULTI/EXEC,
    /// again until no other client changed the key in between. For values INCRBY refuses (past
    /// 64 bits, or a result that would overflow).
    pub fn incr_big(&self, key: &[u8], delta: i64) -> Result<BigIncr, Error> {
        self.run(true, false, |c| {
            loop {
                redis::cmd("WATCH").arg(key).query::<()>(c)?;
                let current: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(c)?;
                let parsed = current
                    .as_deref()
                    .map(|b| std::str::from_utf8(b).ok().and_then(|s| s.trim().parse::<BigInt>().ok()));
                let n = match parsed {
                    None => {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        return Ok(BigIncr::Missing);
                    }
                    Some(None) => {
                        redis::cmd("UNWATCH").query::<()>(c)?;
                        return Ok(BigIncr::NotInteger);
                    }
                    Some(Some(n)) => n,
                };
                let new = (n + delta).to_string();
                let done: Option<()> =
                    redis::pipe().atomic().cmd("SET").arg(key).arg(&new).arg("KEEPTTL").ignore().query(c)?;
                if done.is_some() {
                    return Ok(BigIncr::Value(new));
                }
            }
        })
    }

    /// Any command, as given: for the extension API (TTL, SCAN, EVAL, ...). Not retried on a
    /// stale connection unless `idempotent`.
    pub fn execute(&self, args: &[Vec<u8>], write: bool, idempotent: bool) -> Result<Value, Error> {
        let Some((name, rest)) = args.split_first() else {
            return Err(Error::new(ErrorKind::InvalidKey, "execute() needs a command"));
        };
        let mut cmd = redis::cmd(&String::from_utf8_lossy(name));
        for a in rest {
            cmd.arg(a.as_slice());
        }
        self.run(write, idempotent, |c| cmd.query::<Value>(c))
    }

    /// FLUSHDB.
    pub fn flushdb(&self) -> Result<(), Error> {
        self.run(true, true, |c| redis::cmd("FLUSHDB").query::<()>(c))
    }

    /// PING every server; the errors of those that failed.
    pub fn ping_all(&self) -> Vec<Error> {
        let mut errors = Vec::new();
        for pool in &self.pools {
            let result = pool.take().and_then(|Loan { mut conn, .. }| match conn.req_command(&redis::cmd("PING")) {
                Ok(_) => {
                    pool.put(conn);
                    Ok(())
                }
                Err(e) => {
                    pool.forget();
                    Err(convert(pool.name(), &e))
                }
            });
            if let Err(e) = result {
                errors.push(e);
            }
        }
        errors
    }
}
