//! Each multi-key call of the memcached client as one plan, run by both runners (`client.rs`
//! blocking, `aio.rs` async): the keys are grouped by server, each server gets one pipelined
//! request for its share, each server's replies are read by the dialect, and the answers are
//! put back in the keys' order.
//!
//! A [`Plan`] borrows the call's keys and values while its requests are written; its [`Read`]
//! owns what the reading needs, so it may outlive the call's arguments (the async replies come
//! in on an I/O thread).

use std::collections::HashMap;

use super::dialect::{Dialect, Item, Replies, Stored};
use super::protocol::Store;
use super::router::Router;
use super::wire::Expect;
use crate::error::Error;
use crate::net::Counters;

/// A multi-key call: its keys, and the request a server gets for its share of them.
pub trait Plan {
    /// What reads the servers' answers.
    type Read: Read;

    /// The keys, in the call's order.
    fn keys(&self) -> impl Iterator<Item = &[u8]>;

    /// The request for the keys at `group` (positions in the call's keys).
    fn encode(&self, dialect: Dialect, request: &mut Vec<u8>, group: &[usize]) -> Result<(), Error>;

    /// The reading of the answers, given each server's positions.
    fn reader(&self, dialect: Dialect, groups: Vec<Vec<usize>>) -> Self::Read;
}

/// How a multi-key call's answers are read and put together.
pub trait Read: Send + Sync + 'static {
    /// One server's answer.
    type Part: Send + 'static;
    /// The call's answer.
    type Output: Send + 'static;

    /// Which frames answer server `si`'s request (async).
    fn frames(&self, si: usize) -> Expect;

    /// Read server `si`'s replies.
    fn read(&self, si: usize, replies: &mut impl Replies) -> Result<Self::Part, Error>;

    /// The servers' answers (or errors), put together and counted.
    fn gather(&self, results: PerServer<Self::Part>, counters: &Counters) -> Self::Output;
}

/// Each server's index and its result (or its error).
pub type PerServer<T> = Vec<(usize, Result<T, Error>)>;

/// Each server's index and its request.
pub type Requests = Vec<(usize, Vec<u8>)>;

/// One request per server that holds some of the plan's keys, and the plan's reader.
pub fn prepare<P: Plan>(plan: &P, router: &Router, dialect: Dialect) -> Result<(Requests, P::Read), Error> {
    let groups = router.group(plan.keys())?;
    let mut requests = Vec::new();
    for (si, group) in groups.iter().enumerate() {
        if !group.is_empty() {
            let mut request = Vec::new();
            plan.encode(dialect, &mut request, group)?;
            requests.push((si, request));
        }
    }
    Ok((requests, plan.reader(dialect, groups)))
}

/// Put each server's per-item replies (or its error, for all its items) back in item order.
fn scatter<T>(out: &mut [Result<T, Error>], groups: &[Vec<usize>], results: PerServer<Vec<T>>) {
    for (si, result) in results {
        match result {
            Ok(replies) => {
                for (&i, reply) in groups[si].iter().zip(replies) {
                    out[i] = Ok(reply);
                }
            }
            Err(e) => {
                for &i in &groups[si] {
                    out[i] = Err(e.clone());
                }
            }
        }
    }
}

/// Fetch several keys: the items in the order of the keys, and the errors of the servers that
/// failed (their keys read as misses).
pub struct GetMany<'a>(pub &'a [&'a [u8]]);

/// [`GetMany`]'s reading: where each key was asked for.
pub struct GetManyRead {
    dialect: Dialect,
    count: usize,
    positions: HashMap<Vec<u8>, Vec<usize>>,
}

impl Plan for GetMany<'_> {
    type Read = GetManyRead;
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().copied()
    }
    fn encode(&self, dialect: Dialect, request: &mut Vec<u8>, group: &[usize]) -> Result<(), Error> {
        let keys: Vec<&[u8]> = group.iter().map(|&i| self.0[i]).collect();
        dialect.encode_get(request, &keys)
    }
    fn reader(&self, dialect: Dialect, _: Vec<Vec<usize>>) -> GetManyRead {
        let mut positions: HashMap<Vec<u8>, Vec<usize>> = HashMap::with_capacity(self.0.len());
        for (i, key) in self.0.iter().enumerate() {
            positions.entry(key.to_vec()).or_default().push(i);
        }
        GetManyRead { dialect, count: self.0.len(), positions }
    }
}

impl Read for GetManyRead {
    type Part = Vec<(Vec<u8>, Item)>;
    type Output = (Vec<Option<Item>>, Vec<Error>);
    fn frames(&self, _: usize) -> Expect {
        Expect::Answers(1)
    }
    fn read(&self, _: usize, replies: &mut impl Replies) -> Result<Self::Part, Error> {
        self.dialect.read_get(replies)
    }
    fn gather(&self, results: PerServer<Self::Part>, counters: &Counters) -> Self::Output {
        let mut found: Vec<Option<Item>> = vec![None; self.count];
        let mut errors = Vec::new();
        for (_, result) in results {
            match result {
                Ok(hits) => {
                    for (key, item) in hits {
                        // A key asked for twice is answered at each of its positions.
                        for &i in self.positions.get(&key).map_or(&[][..], Vec::as_slice) {
                            found[i] = Some(item.clone());
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let hits = found.iter().filter(|f| f.is_some()).count();
        counters.lookups(hits, found.len() - hits);
        (found, errors)
    }
}

/// Store every item (`set`), pipelined per server: one result per item, in order (a failed
/// server's error for each of its items).
pub struct SetMany<'a> {
    /// `(key, flags, data)`.
    pub items: &'a [(&'a [u8], u32, &'a [u8])],
    /// The expiry, as the protocol takes it.
    pub exptime: i64,
}

/// [`SetMany`]'s and [`DeleteMany`]'s reading: each server's positions.
pub struct PerItem {
    dialect: Dialect,
    groups: Vec<Vec<usize>>,
}

/// [`SetMany`]'s reading.
pub struct SetManyRead(PerItem);

impl Plan for SetMany<'_> {
    type Read = SetManyRead;
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.items.iter().map(|(k, _, _)| *k)
    }
    fn encode(&self, dialect: Dialect, request: &mut Vec<u8>, group: &[usize]) -> Result<(), Error> {
        request.reserve(group.iter().map(|&i| self.items[i].0.len() + self.items[i].2.len() + 48).sum());
        group.iter().try_for_each(|&i| {
            let (key, flags, data) = self.items[i];
            dialect.encode_store(request, Store::Set, key, flags, self.exptime, data)
        })
    }
    fn reader(&self, dialect: Dialect, groups: Vec<Vec<usize>>) -> SetManyRead {
        SetManyRead(PerItem { dialect, groups })
    }
}

impl Read for SetManyRead {
    type Part = Vec<Stored>;
    type Output = Vec<Result<Stored, Error>>;
    fn frames(&self, si: usize) -> Expect {
        Expect::Frames(self.0.groups[si].len())
    }
    fn read(&self, si: usize, replies: &mut impl Replies) -> Result<Self::Part, Error> {
        self.0.groups[si].iter().map(|_| self.0.dialect.read_stored(replies)).collect()
    }
    fn gather(&self, results: PerServer<Self::Part>, counters: &Counters) -> Self::Output {
        let count = self.0.groups.iter().map(Vec::len).sum();
        let mut out: Vec<Result<Stored, Error>> = (0..count).map(|_| Ok(Stored::No)).collect();
        scatter(&mut out, &self.0.groups, results);
        counters.sets(out.iter().filter(|r| matches!(r, Ok(Stored::Yes))).count());
        out
    }
}

/// Delete several keys, pipelined per server: the errors of the servers that failed.
pub struct DeleteMany<'a>(pub &'a [&'a [u8]]);

/// [`DeleteMany`]'s reading.
pub struct DeleteManyRead(PerItem);

impl Plan for DeleteMany<'_> {
    type Read = DeleteManyRead;
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().copied()
    }
    fn encode(&self, dialect: Dialect, request: &mut Vec<u8>, group: &[usize]) -> Result<(), Error> {
        group.iter().try_for_each(|&i| dialect.encode_delete(request, self.0[i]))
    }
    fn reader(&self, dialect: Dialect, groups: Vec<Vec<usize>>) -> DeleteManyRead {
        DeleteManyRead(PerItem { dialect, groups })
    }
}

impl Read for DeleteManyRead {
    type Part = ();
    type Output = Vec<Error>;
    fn frames(&self, si: usize) -> Expect {
        Expect::Frames(self.0.groups[si].len())
    }
    fn read(&self, si: usize, replies: &mut impl Replies) -> Result<(), Error> {
        self.0.groups[si].iter().try_for_each(|_| self.0.dialect.read_deleted(replies).map(|_| ()))
    }
    fn gather(&self, results: PerServer<()>, _: &Counters) -> Vec<Error> {
        results.into_iter().filter_map(|(_, r)| r.err()).collect()
    }
}
