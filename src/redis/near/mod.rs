//! The near cache of one redis client: a process-local store of what `get` read ([`store`]),
//! kept coherent by one invalidation connection per server the values come from
//! ([`tracking`]), or, where the user chose it instead, by a bound on each copy's age.
//!
//! The promise (tracking mode): a read that begins after a write has returned, in any process,
//! sees that write. Each piece of it:
//! - in broadcast mode the server queues a pass's invalidations at the end of the pass and
//!   writes its clients out last-queued first, so our push leaves before the reply of any write
//!   of that pass (the one exception, a flush in the same pass, is in the README); before any
//!   local hit, the invalidations that have arrived are read and applied ([`Near::lookup`]), so
//!   a hit never runs ahead of an invalidation that reached the socket;
//! - a fill keeps its answer only if no invalidation of its key, and no flush, came while it
//!   was in flight ([`store::Ticket`]);
//! - our own writes drop the local copy when the server answered;
//! - a server whose invalidation connection is not live serves nothing locally: not yet
//!   subscribed, closed, reset (a silent peer: by TCP keepalive), a Sentinel
//!   failover (another master), a cluster's slot map changed; losing one empties the store.

pub mod fill;
pub mod store;
pub mod tracking;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use fill::{Fresh, GetFresh, GetFreshMany};
pub use store::{Found, Limits, NearStats, NearStore, Ticket};
pub use tracking::{Event, Subscription, Tracking};

use super::commands::Changes;
use super::pool::Pool;
use super::topology::Topology;
use crate::error::{Error, ErrorKind};

/// After a failed subscription, the next attempt waits this long (calls go to the server
/// meanwhile, without the near cache).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How the near cache is kept coherent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Coherence {
    /// By the servers' invalidation pushes (`CLIENT TRACKING ... BCAST`) for keys under `prefix`
    /// (`None`: every key).
    Tracking(Option<Vec<u8>>),
    /// By age only: a copy is served for at most this long after it was read (the user's
    /// choice, where tracking is refused). Own writes still drop their copies.
    MaxStaleness(Duration),
}

/// The near cache's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NearSettings {
    /// The store's bounds.
    pub limits: Limits,
    /// How it is kept coherent.
    pub coherence: Coherence,
}

/// One server's invalidation connection, as the near cache keeps it.
#[derive(Default)]
struct Tracked {
    tracking: Option<Tracking>,
    /// The sentinels' epoch of the subscribed master (a failover names another).
    epoch: u64,
    /// No attempt to subscribe before this (a failed one was made).
    retry_at: Option<Instant>,
    /// A subscription is being made (outside the lock: nobody waits for it).
    connecting: bool,
}

/// What [`Near::begin_now`] found.
pub enum Begun {
    /// The fill's ticket (one that keeps nothing when the server's tracking is not live).
    Ticket(Ticket),
    /// The server has no invalidation connection yet: subscribe (blocking, off the caller's
    /// thread) with [`Near::begin`]; this read keeps nothing.
    Subscribe,
}

/// The near cache of one client.
pub struct Near {
    store: NearStore,
    settings: NearSettings,
    /// By the name of each node's primary pool.
    tracked: Mutex<HashMap<String, Tracked>>,
    /// The server refused tracking: every call says so (the settings cannot work).
    refused: Mutex<Option<Error>>,
}

impl Near {
    /// A near cache with `settings`, nothing subscribed yet.
    pub fn new(settings: NearSettings) -> Self {
        let store = NearStore::new(settings.limits);
        if matches!(settings.coherence, Coherence::MaxStaleness(_)) {
            store.set_live(true);
        }
        Self { store, settings, tracked: Mutex::new(HashMap::new()), refused: Mutex::new(None) }
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        match self.tracked.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                // Whatever the panic left behind vouches for nothing.
                let mut guard = poisoned.into_inner();
                guard.clear();
                self.store.set_live(false);
                self.tracked.clear_poison();
                guard
            }
        }
    }

    /// The store (its counters, and the tickets of fills).
    pub fn store(&self) -> &NearStore {
        &self.store
    }

    /// Whether `key` may be answered locally: under the tracked prefix (a key made by another
    /// key function than the one the cache started with would get no invalidation).
    pub fn covers(&self, key: &[u8]) -> bool {
        match &self.settings.coherence {
            Coherence::Tracking(Some(prefix)) => key.starts_with(prefix),
            _ => true,
        }
    }

    /// The error every call raises when the server refused tracking.
    pub fn refused(&self) -> Option<Error> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    /// The local answer for `key` (a hit, or [`Found::Unknown`]: ask the server). First reads
    /// the invalidations that have arrived from the key's server, without waiting; a server
    /// whose invalidation connection is not live (or just turned out lost) answers nothing
    /// locally.
    pub fn lookup(&self, topology: &Topology, key: &[u8], now: Instant) -> Found {
        if let Coherence::Tracking(_) = self.settings.coherence
            && !self.drain_for(topology, key, now)
        {
            self.store.lookup_counted_miss();
            return Found::Unknown;
        }
        self.store.lookup(key, now)
    }

    /// The local answers for `keys` (each key's server drained once).
    pub fn lookup_many(&self, topology: &Topology, keys: &[Vec<u8>], now: Instant) -> Vec<Found> {
        let tracking = matches!(self.settings.coherence, Coherence::Tracking(_));
        let mut drained: Vec<(String, bool)> = Vec::new();
        keys.iter()
            .map(|key| {
                if !self.covers(key) {
                    return Found::Unknown;
                }
                if tracking {
                    let Ok(node) = topology.node_of(key) else { return Found::Unknown };
                    let pool = &node.pools()[0];
                    let known = drained.iter().find(|(name, _)| name == pool.name()).map(|(_, v)| *v);
                    let vouched = known.unwrap_or_else(|| {
                        let vouched = self.drain_pool(pool, now);
                        drained.push((pool.name().to_owned(), vouched));
                        vouched
                    });
                    if !vouched {
                        self.store.lookup_counted_miss();
                        return Found::Unknown;
                    }
                }
                self.store.lookup(key, now)
            })
            .collect()
    }

    /// Read the invalidations that have arrived from `key`'s server: whether its tracking is
    /// live after that.
    fn drain_for(&self, topology: &Topology, key: &[u8], now: Instant) -> bool {
        let Ok(node) = topology.node_of(key) else { return false };
        self.drain_pool(&node.pools()[0], now)
    }

    /// Read the invalidations that have arrived from `pool`'s server: whether its tracking is
    /// live after that.
    fn drain_pool(&self, pool: &Pool, now: Instant) -> bool {
        let mut tracked = self.tracked();
        let Some(entry) = tracked.get_mut(pool.name()) else { return false };
        let Some(tracking) = entry.tracking.as_mut() else { return false };
        if entry.epoch != pool.current_epoch() {
            // Another master since the subscription: its invalidations were not ours.
            entry.tracking = None;
            self.store.flush();
            return false;
        }
        // Read and applied under the lock: a hit elsewhere that finds the socket empty after
        // us finds the store already reflecting what we read.
        let mut events = Vec::new();
        let drained = tracking.drain(now, &mut events);
        self.apply(events);
        if let Ok(vouched) = drained {
            return vouched;
        }
        entry.tracking = None;
        self.store.flush();
        drop(tracked);
        false
    }

    fn apply(&self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::Invalidate(keys) => self.store.invalidate(keys),
                Event::Flush => self.store.flush(),
            }
        }
    }

    /// Before a read that may fill: make sure `key`'s server is subscribed (connecting and
    /// subscribing, before `deadline`, when it is not), and take the fill's ticket. A server
    /// that refuses tracking is an [`ErrorKind::Unsupported`] error; one that cannot be reached
    /// now gives a ticket that keeps nothing (the read goes on without the near cache).
    pub fn begin(&self, topology: &Topology, key: &[u8], deadline: Instant) -> Result<Ticket, Error> {
        match self.begin_now(topology, key)? {
            Begun::Ticket(ticket) => Ok(ticket),
            Begun::Subscribe => {
                let node = topology.node_of(key)?;
                self.subscribe(&node.pools()[0], deadline)?;
                Ok(self.ticket_if_live(topology, key))
            }
        }
    }

    /// [`Near::begin`] without waiting: the ticket, or that the server must be subscribed first.
    pub fn begin_now(&self, topology: &Topology, key: &[u8]) -> Result<Begun, Error> {
        if let Some(e) = self.refused() {
            return Err(e);
        }
        if !self.covers(key) {
            return Ok(Begun::Ticket(self.store.no_ticket()));
        }
        let Coherence::Tracking(_) = &self.settings.coherence else {
            return Ok(Begun::Ticket(self.store.ticket(key)));
        };
        let node = topology.node_of(key)?;
        let pool = &node.pools()[0];
        let now = Instant::now();
        let mut tracked = self.tracked();
        let entry = tracked.entry(pool.name().to_owned()).or_default();
        if entry.tracking.is_some() && entry.epoch == pool.current_epoch() {
            drop(tracked);
            return Ok(Begun::Ticket(self.store.ticket(key)));
        }
        if entry.connecting || entry.retry_at.is_some_and(|at| now < at) {
            return Ok(Begun::Ticket(self.store.no_ticket()));
        }
        Ok(Begun::Subscribe)
    }

    fn ticket_if_live(&self, topology: &Topology, key: &[u8]) -> Ticket {
        match self.begin_now(topology, key) {
            Ok(Begun::Ticket(ticket)) => ticket,
            _ => self.store.no_ticket(),
        }
    }

    /// Subscribe to `pool`'s server, before `deadline`, unless it is subscribed or being
    /// subscribed. The connection is made outside the lock: hits on other servers, and calls
    /// that find this one being subscribed, never wait for it.
    pub fn subscribe(&self, pool: &Pool, deadline: Instant) -> Result<(), Error> {
        let Coherence::Tracking(prefix) = &self.settings.coherence else { return Ok(()) };
        let name = pool.name().to_owned();
        {
            let mut tracked = self.tracked();
            let entry = tracked.entry(name.clone()).or_default();
            if entry.connecting || (entry.tracking.is_some() && entry.epoch == pool.current_epoch()) {
                return Ok(());
            }
            entry.tracking = None;
            entry.connecting = true;
        }
        let (username, password) = pool.credentials();
        let subscription = Subscription {
            prefix: prefix.clone(),
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
        };
        let made = pool
            .endpoint(deadline)
            .and_then(|(addr, epoch)| Ok((Tracking::subscribe(&addr, pool.tls(), &subscription, deadline)?, epoch)));
        let mut tracked = self.tracked();
        let entry = tracked.entry(name).or_default();
        entry.connecting = false;
        match made {
            Ok((tracking, epoch)) => {
                *entry = Tracked { tracking: Some(tracking), epoch, retry_at: None, connecting: false };
                // What was held before vouches for nothing the new connection saw: emptied
                // before any hit can drain the new connection.
                self.store.set_live(true);
                drop(tracked);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Server => {
                drop(tracked);
                let refused = Error::new(ErrorKind::Unsupported, e.message().to_owned());
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(refused.clone());
                }
                Err(refused)
            }
            Err(e) => {
                entry.retry_at = Some(Instant::now() + RETRY_AFTER);
                if e.kind() == ErrorKind::Interrupted { Err(e) } else { Ok(()) }
            }
        }
    }

    /// A command ran (or failed after it may have been applied): drop the copies it changed.
    pub fn changed(&self, changes: Changes<'_>) {
        match changes {
            Changes::None => {}
            Changes::Keys(keys) => self.store.invalidate(keys),
            Changes::All => self.store.flush(),
        }
    }

    /// Fill `key`'s copy from a read begun with `ticket`: the value and its TTL, capped by the
    /// staleness bound in that mode. The invalidations that arrived meanwhile are read first
    /// (a fill they spoil keeps nothing, and a process that reads mostly from the server still
    /// keeps its invalidation socket flowing).
    pub fn fill(&self, key: &[u8], ticket: Ticket, value: Option<&[u8]>, ttl: Option<Duration>) {
        let now = Instant::now();
        let ttl = match self.settings.coherence {
            Coherence::MaxStaleness(most) => Some(ttl.map_or(most, |t| t.min(most))),
            Coherence::Tracking(_) => {
                self.keep_up(now);
                ttl
            }
        };
        self.store.fill(key, ticket, value, ttl, now);
    }

    /// Read every subscribed server's invalidations that have arrived (dropping a connection
    /// found lost), vouching for nothing. What is read is applied before the lock goes: a hit
    /// that drains after us must find the socket empty only once the store reflects it.
    fn keep_up(&self, now: Instant) {
        let mut lost = false;
        let mut events = Vec::new();
        let mut tracked = self.tracked();
        for entry in tracked.values_mut() {
            if let Some(tracking) = entry.tracking.as_mut()
                && tracking.keep_up(now, &mut events).is_err()
            {
                entry.tracking = None;
                lost = true;
            }
        }
        self.apply(events);
        if lost {
            self.store.flush();
        }
        drop(tracked);
    }

    /// The topology changed under the store (a cluster's slots moved): empty it.
    pub fn flush(&self) {
        self.store.flush();
    }
}
