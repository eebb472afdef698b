//! Calls made of several commands, each written once for both runners: an `add` that must keep
//! nothing, an increment past 64 bits, a RENAME between nodes, a set command over keys on
//! several nodes. They are `async fn`s over a [`Runner`]: the async runner awaits each step; the
//! blocking runner's steps are done by the time they are awaited, so [`finish`] drives them in
//! one poll.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use redis::Value;

use super::commands::{Command, Delete, Increment, Raw, Rename, Set};
use super::topology::Topology;
use super::wire::typed;
use crate::error::{Error, ErrorKind};

/// What runs commands: the blocking client (each step done when awaited) or the async one.
pub trait Runner: Sync {
    /// Run `cmd`: its answer, every redirection followed.
    fn call<C: Command>(&self, cmd: C) -> impl Future<Output = Result<C::Output, Error>> + Send;

    /// The topology the runner places commands on.
    fn topology(&self) -> &Topology;

    /// Add `delta` to an integer of any size (WATCH/MULTI on one connection of the key's
    /// primary): the digits it came to; `NotFound`, `NotNumeric`.
    fn increment_big(&self, key: Vec<u8>, delta: i64) -> impl Future<Output = Result<String, Error>> + Send;
}

/// Drive a composite call of the blocking runner, whose every step is done when awaited.
pub fn finish<T>(call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    let mut call = pin!(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(Error::new(ErrorKind::Protocol, "redis: a blocking call was left waiting")),
    }
}

/// A key not found, in Django's words.
pub fn missing(key: &[u8]) -> Error {
    Error::new(ErrorKind::NotFound, format!("Key '{}' not found.", String::from_utf8_lossy(key)))
}

/// Django's `add`: store only if absent; with `zero` (a timeout of 0), report whether it would
/// have been stored and keep nothing.
pub async fn add<R: Runner>(
    runner: &R,
    key: Vec<u8>,
    value: Vec<u8>,
    ttl: Option<u64>,
    zero: bool,
) -> Result<bool, Error> {
    let stored =
        runner.call(Set { key: key.clone(), value, ttl: if zero { None } else { ttl }, nx: true, xx: false }).await?;
    if stored && zero {
        runner.call(Delete(vec![key])).await?;
    }
    Ok(stored)
}

/// INCRBY on an existing key only, atomically, its TTL kept; past 64 bits, or on a value
/// INCRBY refuses, it goes on with WATCH/MULTI (which tells a non-integer apart). The digits it
/// came to.
pub async fn increment<R: Runner>(runner: &R, key: Vec<u8>, delta: i64) -> Result<String, Error> {
    match runner.call(Increment { key: key.clone(), delta }).await? {
        Ok(Some(digits)) => Ok(String::from_utf8_lossy(&digits).trim().to_owned()),
        Ok(None) => Err(missing(&key)),
        Err(e) if e.kind() == ErrorKind::Server => runner.increment_big(key, delta).await,
        Err(e) => Err(e),
    }
}

/// RENAME `from` to `to`, the TTL kept: atomic where both keys are on one node (in one slot),
/// else DUMP + PTTL, RESTORE on the target's node, then DEL. `NotFound` when `from` is missing.
pub async fn rename<R: Runner>(runner: &R, from: Vec<u8>, to: Vec<u8>) -> Result<(), Error> {
    if runner.topology().together(&[&from, &to]) {
        return if runner.call(Rename { from: from.clone(), to }).await? { Ok(()) } else { Err(missing(&from)) };
    }
    let raw = |args: Vec<&[u8]>, idempotent: bool| {
        Raw::new(args.into_iter().map(<[u8]>::to_vec).collect(), true, idempotent, None)
    };
    let data = runner.call(raw(vec![b"DUMP", &from], true)?).await?;
    if data == Value::Nil {
        return Err(missing(&from));
    }
    let Value::BulkString(data) = data else {
        return Err(Error::new(ErrorKind::Protocol, "redis DUMP: not a bulk string"));
    };
    let ttl = typed::<i64>("redis PTTL", runner.call(raw(vec![b"PTTL", &from], true)?).await?)?.max(0);
    let ttl = ttl.to_string();
    runner.call(raw(vec![b"RESTORE", &to, ttl.as_bytes(), &data, b"REPLACE"], false)?).await?;
    runner.call(raw(vec![b"DEL", &from], false)?).await?;
    Ok(())
}

/// The set commands whose keys may sit on several nodes, and where their keys end (SMOVE's
/// third argument is a member).
fn set_keys(name: &str, args: &[Vec<u8>]) -> Option<std::ops::Range<usize>> {
    match name {
        "SUNION" | "SINTER" | "SDIFF" | "SUNIONSTORE" | "SINTERSTORE" | "SDIFFSTORE" => Some(1..args.len()),
        "SMOVE" if args.len() == 4 => Some(1..3),
        _ => None,
    }
}

/// A command as given: a set command over keys on several nodes (or slots) is made of one-key
/// commands (not atomic, as no cross-node command can be): the members are read with SMEMBERS
/// and combined here; the STORE forms then replace the destination (DEL + SADD); SMOVE is SREM,
/// then SADD if it removed the member. Any other command runs as it is.
pub async fn execute<R: Runner>(runner: &R, raw: Raw) -> Result<Value, Error> {
    let name = raw.name();
    let Some(range) = set_keys(&name, raw.args()) else { return runner.call(raw).await };
    let keys: Vec<&[u8]> = raw.args()[range].iter().map(Vec::as_slice).collect();
    if runner.topology().together(&keys) {
        return runner.call(raw).await;
    }
    let (write, args) = (raw.write, raw.args().to_vec());
    let one = |parts: Vec<Vec<u8>>| Raw::new(parts, write, true, None);
    if name == "SMOVE" {
        let removed = runner.call(one(vec![b"SREM".to_vec(), args[1].clone(), args[3].clone()])?).await?;
        if removed == Value::Int(0) {
            return Ok(Value::Int(0));
        }
        runner.call(one(vec![b"SADD".to_vec(), args[2].clone(), args[3].clone()])?).await?;
        return Ok(Value::Int(1));
    }
    let store = name.ends_with("STORE");
    let sources = if store { &args[2..] } else { &args[1..] };
    let mut sets: Vec<Vec<Vec<u8>>> = Vec::with_capacity(sources.len());
    for key in sources {
        sets.push(typed(&name, runner.call(one(vec![b"SMEMBERS".to_vec(), key.clone()])?).await?)?);
    }
    let mut result: Vec<Vec<u8>> = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let others: Vec<HashSet<&[u8]>> = sets.iter().skip(1).map(|s| s.iter().map(Vec::as_slice).collect()).collect();
    let candidates: Vec<&Vec<u8>> = if name.starts_with("SUNION") {
        sets.iter().flatten().collect()
    } else {
        sets.first().map(|s| s.iter().collect()).unwrap_or_default()
    };
    for member in candidates {
        let keep = if name.starts_with("SINTER") {
            others.iter().all(|o| o.contains(member.as_slice()))
        } else if name.starts_with("SDIFF") {
            !others.iter().any(|o| o.contains(member.as_slice()))
        } else {
            true
        };
        if keep && seen.insert(member.as_slice()) {
            result.push(member.clone());
        }
    }
    if !store {
        return Ok(Value::Array(result.into_iter().map(Value::BulkString).collect()));
    }
    let count = result.len() as i64;
    runner.call(one(vec![b"DEL".to_vec(), args[1].clone()])?).await?;
    if !result.is_empty() {
        let mut sadd = vec![b"SADD".to_vec(), args[1].clone()];
        sadd.extend(result);
        runner.call(one(sadd)?).await?;
    }
    Ok(Value::Int(count))
}
