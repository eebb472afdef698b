//! Each multi-key call of the memcached client as one plan, run by both runners (`client.rs`
//! blocking, `aio.rs` async): the keys are grouped by server, each server gets one pipelined
//! request for its share, each server's replies are read by the dialect, and the answers are
//! put back in the keys' order.
//!
//! A [`Plan`] borrows the call's keys and values while its requests are written; its [`Read`]
//! owns what the reading needs, so it may outlive the call's arguments (the async replies come
//! in on an I/O thread).

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

/// [`GetMany`]'s reading: the keys (one buffer, no allocation per key) and each server's
/// positions. A server answers its hits in the order it was asked, so each hit is matched by
/// walking that server's positions forward: no map of the keys, no copy of a value.
pub struct GetManyRead {
    dialect: Dialect,
    keys: Vec<u8>,
    /// Where key `i` ends in `keys` (it starts where key `i - 1` ends).
    ends: Vec<usize>,
    groups: Vec<Vec<usize>>,
}

impl GetManyRead {
    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.keys[start..self.ends[i]]
    }

    /// Put one server's hits at their positions in `found`.
    fn place(&self, group: &[usize], hits: Vec<(Vec<u8>, Item)>, found: &mut [Option<Item>]) {
        let mut next = 0;
        for (key, item) in hits {
            match group[next..].iter().position(|&i| self.key(i) == key.as_slice()) {
                Some(at) => {
                    found[group[next + at]] = Some(item);
                    next += at + 1;
                }
                // Not where the order says (a server that answers out of order, or twice): at
                // every position of that key, as a lookup by key would.
                None => {
                    for &i in group.iter().filter(|&&i| self.key(i) == key.as_slice()) {
                        found[i] = Some(item.clone());
                    }
                }
            }
        }
    }
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
    fn reader(&self, dialect: Dialect, groups: Vec<Vec<usize>>) -> GetManyRead {
        let mut keys = Vec::with_capacity(self.0.iter().map(|k| k.len()).sum());
        let mut ends = Vec::with_capacity(self.0.len());
        for key in self.0 {
            keys.extend_from_slice(key);
            ends.push(keys.len());
        }
        GetManyRead { dialect, keys, ends, groups }
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
        let mut found: Vec<Option<Item>> = vec![None; self.ends.len()];
        let mut errors = Vec::new();
        for (si, result) in results {
            match result {
                Ok(hits) => self.place(&self.groups[si], hits, &mut found),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(byte: u8) -> Item {
        Item { flags: 0, data: vec![byte], cas: None }
    }

    fn gathered(keys: &[&[u8]], groups: Vec<Vec<usize>>, results: PerServer<Vec<(Vec<u8>, Item)>>) -> Vec<Option<u8>> {
        let read = GetMany(keys).reader(Dialect::Text, groups);
        let (found, _) = read.gather(results, &Counters::default());
        found.into_iter().map(|f| f.map(|item| item.data[0])).collect()
    }

    #[test]
    fn hits_land_at_their_positions_across_servers() {
        let keys: &[&[u8]] = &[b"a", b"b", b"c", b"d", b"e"];
        let groups = vec![vec![0, 2, 4], vec![1, 3]];
        let results = vec![
            (0, Ok(vec![(b"a".to_vec(), item(1)), (b"e".to_vec(), item(5))])),
            (1, Ok(vec![(b"d".to_vec(), item(4))])),
        ];
        assert_eq!(gathered(keys, groups, results), [Some(1), None, None, Some(4), Some(5)]);
    }

    #[test]
    fn a_key_asked_twice_is_answered_at_each_position() {
        let keys: &[&[u8]] = &[b"k", b"x", b"k"];
        let groups = vec![vec![0, 1, 2]];
        // As memcached answers `get k x k`: once per asking.
        let twice = vec![(0, Ok(vec![(b"k".to_vec(), item(7)), (b"k".to_vec(), item(7))]))];
        assert_eq!(gathered(keys, groups.clone(), twice), [Some(7), None, Some(7)]);
        // A server that answers it once: still at both positions.
        let once = vec![(0, Ok(vec![(b"k".to_vec(), item(7))]))];
        assert_eq!(gathered(keys, groups, once)[0], Some(7));
    }

    #[test]
    fn out_of_order_and_unasked_answers_are_placed_by_key_or_dropped() {
        let keys: &[&[u8]] = &[b"a", b"b", b"c"];
        let groups = vec![vec![0, 1, 2]];
        let results =
            vec![(0, Ok(vec![(b"c".to_vec(), item(3)), (b"a".to_vec(), item(1)), (b"zz".to_vec(), item(9))]))];
        assert_eq!(gathered(keys, groups, results), [Some(1), None, Some(3)]);
    }

    #[test]
    fn a_failed_server_reads_as_misses_and_its_error_is_kept() {
        let keys: &[&[u8]] = &[b"a", b"b"];
        let read = GetMany(keys).reader(Dialect::Text, vec![vec![0], vec![1]]);
        let results = vec![
            (0, Ok(vec![(b"a".to_vec(), item(1))])),
            (1, Err(Error::new(crate::error::ErrorKind::Io, "127.0.0.1:1: reset"))),
        ];
        let (found, errors) = read.gather(results, &Counters::default());
        assert_eq!(found.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false]);
        assert_eq!(errors.len(), 1);
    }
}
