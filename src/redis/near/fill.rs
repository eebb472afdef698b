//! The near cache's reads from the server: a value with what is left of its life (PTTL), from
//! the key's primary, so that a fill keeps the server's TTL and never a replica's older value.

use redis::Value;

use crate::error::{Error, ErrorKind};
use crate::net::Counters;
use crate::redis::commands::{Changes, Command, Request, Route, no_error};
use crate::redis::wire::typed;

/// GET with what is left of the key's life (PTTL), in one exchange with the key's primary: the
/// near cache's fill (a replica that lags would fill it with an older value than the one whose
/// invalidation it already had).
pub struct GetFresh(pub Vec<u8>);

/// What [`GetFresh`] read: the value (or none), and the key's TTL (`None`: no expiry).
pub type Fresh = (Option<Vec<u8>>, Option<std::time::Duration>);

/// The TTL a fill keeps from PTTL's answer: -1 none; -2 (no key) after a value was read means
/// the key went between the two commands (deleted, flushed, expired): a zero TTL, so the
/// value is never served locally.
fn fresh_ttl(had_value: bool, pttl: i64) -> Option<std::time::Duration> {
    match u64::try_from(pttl) {
        Ok(ms) => Some(std::time::Duration::from_millis(ms)),
        Err(_) if pttl == -2 && had_value => Some(std::time::Duration::ZERO),
        Err(_) => None,
    }
}

impl Command for GetFresh {
    type Output = Fresh;
    fn route(&self) -> Route<'_> {
        Route::Key { key: &self.0, write: true }
    }
    fn changes(&self) -> Changes<'_> {
        Changes::None
    }
    fn empty(&self) -> Self::Output {
        (None, None)
    }
    fn request(&self, _: &[usize], _: bool) -> Request {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&self.0).cmd("PTTL").arg(&self.0);
        Request::pipe(&pipe)
    }
    fn read(
        &self,
        _: &[usize],
        _: bool,
        replies: Vec<Value>,
        out: &mut Self::Output,
        label: &str,
    ) -> Result<(), Error> {
        let mut replies = replies.into_iter();
        let (Some(value), Some(ttl)) = (replies.next(), replies.next()) else {
            return Err(Error::new(ErrorKind::Protocol, format!("{label}: GET and PTTL gave fewer than 2 replies")));
        };
        let value: Option<Vec<u8>> = typed(label, value)?;
        let ttl: i64 = typed(label, ttl)?;
        let ttl = fresh_ttl(value.is_some(), ttl);
        *out = (value, ttl);
        Ok(())
    }
    fn count(&self, out: &Self::Output, counters: &Counters) {
        counters.lookups(usize::from(out.0.is_some()), usize::from(out.0.is_none()));
    }
    /// An answer from the node a migrating slot's key went to is not kept: the near cache
    /// reads the invalidations of the node the map names, and the key's next write will be on
    /// the other.
    fn asked(&self, _: &[usize], out: &mut Self::Output) {
        out.1 = Some(std::time::Duration::ZERO);
    }
}

/// [`GetMany`] with each key's TTL, from the keys' primaries: the near cache's fill of a
/// `get_many` (one MGET and one PTTL per key, pipelined per node).
pub struct GetFreshMany(pub Vec<Vec<u8>>);

impl Command for GetFreshMany {
    type Output = Vec<Fresh>;
    fn route(&self) -> Route<'_> {
        Route::Keys { keys: &self.0, write: true }
    }
    fn changes(&self) -> Changes<'_> {
        Changes::None
    }
    fn empty(&self) -> Self::Output {
        vec![(None, None); self.0.len()]
    }
    fn request(&self, keys: &[usize], _: bool) -> Request {
        let mut pipe = redis::pipe();
        for &i in keys {
            // A one-key MGET: nil for a key of another type, as get_many reads it.
            pipe.cmd("MGET").arg(&self.0[i]).cmd("PTTL").arg(&self.0[i]);
        }
        Request::pipe(&pipe)
    }
    fn read(
        &self,
        keys: &[usize],
        _: bool,
        replies: Vec<Value>,
        out: &mut Self::Output,
        label: &str,
    ) -> Result<(), Error> {
        no_error(label, &replies)?;
        if replies.len() != 2 * keys.len() {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("{label}: MGET and PTTL gave another number of replies"),
            ));
        }
        let mut replies = replies.into_iter();
        for &i in keys {
            let (Some(values), Some(ttl)) = (replies.next(), replies.next()) else { break };
            let mut values: Vec<Option<Vec<u8>>> = typed(label, values)?;
            let value = values.pop().flatten();
            let ttl = fresh_ttl(value.is_some(), typed(label, ttl)?);
            out[i] = (value, ttl);
        }
        Ok(())
    }
    fn count(&self, out: &Self::Output, counters: &Counters) {
        let hits = out.iter().filter(|v| v.0.is_some()).count();
        counters.lookups(hits, out.len() - hits);
    }
    /// As [`GetFresh::asked`]: those answers are not kept.
    fn asked(&self, keys: &[usize], out: &mut Self::Output) {
        for &i in keys {
            if let Some(fresh) = out.get_mut(i) {
                fresh.1 = Some(std::time::Duration::ZERO);
            }
        }
    }
}
