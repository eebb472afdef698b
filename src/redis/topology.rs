//! Where commands go, for every redis topology behind one face: Django's leader with read
//! replicas (or a Sentinel-managed master and its replicas) as one node; django-redis's and
//! django-redis-cache's client-side shards (a node per server, placed by the predecessor's
//! ring); a Redis Cluster (a node per shard, placed by the slot map its nodes give).
//!
//! A [`Route`] becomes [`Part`]s: a node and the keys it is asked for. A call's progress over
//! its parts ([`Call`]) is kept here too, so both runners follow redirections by one policy
//! (`cluster.rs`): a key moved, asked elsewhere, or refused by a busy or unreachable node goes
//! again, alone; the keys that were answered are read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::Value;

use super::cluster::{self, ATTEMPTS, Detour, SlotMap, SlotRange, key_slot};
use super::commands::{Command, Route};
use super::pool::{Pool, PoolConfig};
use super::ring::Ring;
use super::wire::classify;
use crate::error::{Error, ErrorKind};
use crate::net::Tls;

/// One node: a primary and the servers its reads may go to (Django's read replicas, a
/// Sentinel service's replicas, a cluster shard's replicas after READONLY).
pub struct Node {
    pools: Vec<Pool>,
    /// xorshift state for picking a replica.
    pick: AtomicU64,
}

impl Node {
    /// A node over `pools`, its primary first.
    pub fn new(pools: Vec<Pool>) -> Result<Self, Error> {
        if pools.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no redis server configured"));
        }
        Ok(Self { pools, pick: AtomicU64::new(0x9E37_79B9_7F4A_7C15) })
    }

    /// The pools, the primary first.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The index of the server for a read or a write. A read goes to a random replica, or to
    /// the primary when that replica is in its retry window.
    pub fn server_for(&self, write: bool) -> usize {
        if write || self.pools.len() == 1 {
            return 0;
        }
        let mut x = self.pick.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.pick.store(x, Ordering::Relaxed);
        let replica = 1 + (x % (self.pools.len() as u64 - 1)) as usize;
        if self.pools[replica].is_up() { replica } else { 0 }
    }

    /// The pool for a read or a write.
    pub fn pool(&self, write: bool) -> &Pool {
        &self.pools[self.server_for(write)]
    }
}

/// How a cluster's nodes are made: the seeds' scheme and credentials, their TLS, the pools'
/// settings, and whether reads go to the shards' replicas.
pub struct NodeRecipe {
    /// `redis://` (TLS is given apart), with the seeds' `user:password@` if any.
    pub prefix: String,
    /// Credentials OPTIONS give (the URL's win).
    pub username: Option<String>,
    /// ...
    pub password: Option<String>,
    /// TLS for every node, when the seeds use it.
    pub tls: Option<Tls>,
    /// The pools' settings.
    pub config: PoolConfig,
    /// Reads go to a shard's replicas (after READONLY).
    pub replica_reads: bool,
}

impl NodeRecipe {
    fn make(&self, primary: &str, replicas: &[String]) -> Result<Arc<Node>, Error> {
        let pool = |address: &str, readonly: bool| {
            let config = PoolConfig { readonly, ..self.config.clone() };
            let url = format!("{}{address}", self.prefix);
            Pool::new(&url, None, self.username.as_deref(), self.password.as_deref(), self.tls.clone(), config, None)
        };
        let mut pools = vec![pool(primary, false)?];
        if self.replica_reads {
            for replica in replicas {
                pools.push(pool(replica, true)?);
            }
        }
        Ok(Arc::new(Node::new(pools)?))
    }
}

/// A Redis Cluster: its seeds and its slot map, read on first use and again when the nodes
/// say it changed.
pub struct Cluster {
    seeds: Vec<String>,
    recipe: NodeRecipe,
    map: RwLock<SlotMap<Arc<Node>>>,
    /// When the map was last read (refreshes are one at a time).
    refreshed: Mutex<Option<Instant>>,
    /// No redirection is followed, and no further seed asked, once a call has taken this long.
    deadline: Duration,
}

enum Shape {
    Single(Arc<Node>),
    Sharded { nodes: Vec<Arc<Node>>, ring: Ring },
    Cluster(Box<Cluster>),
}

/// Every topology behind one face.
pub struct Topology {
    shape: Shape,
}

/// What one node is asked for in a call.
pub struct Part {
    /// The node.
    pub node: Arc<Node>,
    /// The positions of its keys in the route's keys (`[0]` for a route without keys).
    pub keys: Vec<usize>,
    /// One command per key (a cluster node).
    pub each: bool,
    /// Preceded by ASKING (a key whose slot is being migrated to this node).
    pub ask: bool,
    /// The node's server it goes to (its primary for a write or an ASK; a read may go to a
    /// replica).
    pub server: usize,
}

impl Part {
    fn new(node: &Arc<Node>, keys: Vec<usize>, each: bool, ask: bool, write: bool) -> Self {
        let server = if ask { 0 } else { node.server_for(write) };
        Self { node: node.clone(), keys, each, ask, server }
    }

    /// The pool the part goes to.
    pub fn pool(&self) -> &Pool {
        &self.node.pools()[self.server]
    }
}

/// How a call stands after an attempt.
pub enum Next {
    /// Answered: see [`Call::output`].
    Done,
    /// Failed.
    Fail(Error),
    /// Some keys go again, after this (see [`Topology::prepare`]).
    Again(cluster::Plan),
}

/// One call's progress over its parts.
pub struct Call<O> {
    out: O,
    attempt: usize,
    pending: Vec<usize>,
    asks: Vec<(usize, String)>,
    detours: Vec<Detour>,
    news: bool,
    failure: Option<Error>,
    detour_error: Option<Error>,
    until: Instant,
}

impl<O> Call<O> {
    /// The answer, once [`Topology::next`] said `Done`.
    pub fn output(self) -> O {
        self.out
    }
}

/// Whether an error reply is one the cluster policy follows, and which.
fn detour_of(label: &str, reply: &Value) -> Option<(Detour, Error)> {
    let Value::ServerError(e) = reply else { return None };
    let e = classify(label, &e.clone().into());
    Detour::of(&e).filter(|d| *d != Detour::Down).map(|d| (d, e))
}

impl Topology {
    /// One node: a leader and its read replicas, or a Sentinel service.
    pub fn single(node: Node) -> Self {
        Self { shape: Shape::Single(Arc::new(node)) }
    }

    /// Shards placed by `ring`, a node each (in LOCATION order).
    pub fn sharded(nodes: Vec<Node>, ring: Ring) -> Result<Self, Error> {
        if nodes.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no redis server configured"));
        }
        Ok(Self { shape: Shape::Sharded { nodes: nodes.into_iter().map(Arc::new).collect(), ring } })
    }

    /// A Redis Cluster reached first through `seeds` (`host:port`); the slot map is read on
    /// first use (never here: a seed that never answers must not hold whoever makes the client).
    pub fn cluster(seeds: Vec<String>, recipe: NodeRecipe, deadline: Duration) -> Result<Self, Error> {
        if seeds.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no redis cluster seed configured"));
        }
        let cluster =
            Cluster { seeds, recipe, map: RwLock::new(SlotMap::new()), refreshed: Mutex::new(None), deadline };
        Ok(Self { shape: Shape::Cluster(Box::new(cluster)) })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.shape, Shape::Cluster(_))
    }

    /// The nodes a call over every node visits (SCAN), by their index for [`Route::Node`]: the
    /// one node, every shard, or every cluster primary serving slots now.
    pub fn nodes(&self) -> Vec<usize> {
        match &self.shape {
            Shape::Single(_) => vec![0],
            Shape::Sharded { nodes, .. } => (0..nodes.len()).collect(),
            Shape::Cluster(c) => c.map.read().serving().into_iter().map(|(i, _)| i).collect(),
        }
    }

    /// Every pool of the nodes [`Topology::nodes`] lists (for `servers()`).
    pub fn pools(&self) -> Vec<(Arc<Node>, usize)> {
        let nodes: Vec<Arc<Node>> = match &self.shape {
            Shape::Single(node) => vec![node.clone()],
            Shape::Sharded { nodes, .. } => nodes.clone(),
            Shape::Cluster(c) => c.map.read().serving().into_iter().map(|(_, n)| n).collect(),
        };
        nodes.into_iter().flat_map(|n| (0..n.pools().len()).map(move |i| (n.clone(), i))).collect()
    }

    /// The first node's primary index (`server_for`).
    pub fn server_for(&self, write: bool) -> usize {
        match &self.shape {
            Shape::Single(node) => node.server_for(write),
            _ => 0,
        }
    }

    /// Whether `keys` may go in one command: one node, and on a cluster one slot.
    pub fn together(&self, keys: &[&[u8]]) -> bool {
        match &self.shape {
            Shape::Single(_) => true,
            Shape::Sharded { ring, .. } => keys.windows(2).all(|w| ring.index(w[0]) == ring.index(w[1])),
            Shape::Cluster(_) => keys.windows(2).all(|w| key_slot(w[0]) == key_slot(w[1])),
        }
    }

    /// `keys` in groups that may go in one command (one node; on a cluster one slot), by position.
    pub fn groups(&self, keys: &[&[u8]]) -> Vec<Vec<usize>> {
        let place = |key: &[u8]| match &self.shape {
            Shape::Single(_) => 0,
            Shape::Sharded { ring, .. } => ring.index(key),
            Shape::Cluster(_) => usize::from(key_slot(key)),
        };
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let at = place(key);
            match groups.iter_mut().find(|(p, _)| *p == at) {
                Some((_, group)) => group.push(i),
                None => groups.push((at, vec![i])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// The node of `key`'s primary (on a cluster, by the slot map as it stands).
    pub fn node_of(&self, key: &[u8]) -> Result<Arc<Node>, Error> {
        match &self.shape {
            Shape::Single(node) => Ok(node.clone()),
            Shape::Sharded { nodes, ring } => Ok(nodes[ring.index(key)].clone()),
            Shape::Cluster(c) => c.map.read().owner(key_slot(key)).map(|(_, n)| n.clone()).ok_or_else(|| self.no_map()),
        }
    }

    /// The index (for [`Route::Node`]) of the node of `key`'s primary.
    pub fn node_index(&self, key: &[u8]) -> Result<usize, Error> {
        match &self.shape {
            Shape::Single(_) => Ok(0),
            Shape::Sharded { ring, .. } => Ok(ring.index(key)),
            Shape::Cluster(c) => c.map.read().owner(key_slot(key)).map(|(i, _)| i).ok_or_else(|| self.no_map()),
        }
    }

    /// Whether the slot map must be read before a call can be placed.
    pub fn needs_map(&self) -> bool {
        matches!(&self.shape, Shape::Cluster(c) if !c.map.read().is_known())
    }

    /// A call of `cmd` about to start.
    pub fn begin<C: Command>(&self, cmd: &C) -> Call<C::Output> {
        let deadline = match &self.shape {
            Shape::Cluster(c) => c.deadline,
            _ => Duration::ZERO,
        };
        Call {
            out: cmd.empty(),
            attempt: 0,
            pending: (0..cmd.route().key_count()).collect(),
            asks: Vec::new(),
            detours: Vec::new(),
            news: false,
            failure: None,
            detour_error: None,
            until: Instant::now() + deadline,
        }
    }

    fn no_map(&self) -> Error {
        let seeds = match &self.shape {
            Shape::Cluster(c) => c.seeds.join(", "),
            _ => String::new(),
        };
        Error::new(ErrorKind::ServerDown, format!("redis cluster: no slot map yet (seeds {seeds})"))
    }

    /// The parts of the call's next attempt: its keys still to go, grouped by node.
    pub fn parts<C: Command>(&self, cmd: &C, call: &mut Call<C::Output>) -> Result<Vec<Part>, Error> {
        let route = cmd.route();
        let write = route.writes();
        let keys = std::mem::take(&mut call.pending);
        if keys.is_empty() && call.asks.is_empty() {
            return Ok(Vec::new());
        }
        let part = |node: &Arc<Node>, keys: Vec<usize>, each: bool| Part::new(node, keys, each, false, write);
        let mut parts = Vec::new();
        match &self.shape {
            Shape::Single(node) => match route {
                Route::Node { index, .. } if index > 0 => return Err(no_node(index)),
                _ => parts.push(part(node, keys, false)),
            },
            Shape::Sharded { nodes, ring } => match route {
                Route::Key { key, .. } => parts.push(part(&nodes[ring.index(key)], keys, false)),
                Route::Keys { keys: all, .. } => {
                    let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
                    for i in keys {
                        by_node[ring.index(&all[i])].push(i);
                    }
                    for (n, group) in by_node.into_iter().enumerate().filter(|(_, g)| !g.is_empty()) {
                        parts.push(part(&nodes[n], group, false));
                    }
                }
                Route::Primary | Route::AnyReplica => parts.push(part(&nodes[0], keys, false)),
                Route::AllPrimaries => parts.extend(nodes.iter().map(|n| part(n, vec![0], false))),
                Route::Node { index, .. } => {
                    parts.push(part(nodes.get(index).ok_or_else(|| no_node(index))?, keys, false));
                }
            },
            Shape::Cluster(c) => {
                let map = c.map.read();
                if !map.is_known() {
                    return Err(self.no_map());
                }
                let owner =
                    |key: &[u8]| map.owner(key_slot(key)).map(|(i, n)| (i, n.clone())).ok_or_else(|| self.no_map());
                match route {
                    _ if keys.is_empty() => {}
                    Route::Key { key, .. } => parts.push(part(&owner(key)?.1, keys, false)),
                    Route::Keys { keys: all, .. } => {
                        let mut by_node: Vec<(usize, Arc<Node>, Vec<usize>)> = Vec::new();
                        for i in keys {
                            let (n, node) = owner(&all[i])?;
                            match by_node.iter_mut().find(|(m, _, _)| *m == n) {
                                Some((_, _, group)) => group.push(i),
                                None => by_node.push((n, node, vec![i])),
                            }
                        }
                        parts.extend(by_node.into_iter().map(|(_, node, group)| part(&node, group, true)));
                    }
                    Route::Primary | Route::AnyReplica => {
                        let first = map.serving().into_iter().next().ok_or_else(|| self.no_map())?;
                        parts.push(part(&first.1, keys, false));
                    }
                    Route::AllPrimaries => parts.extend(map.serving().iter().map(|(_, n)| part(n, vec![0], false))),
                    Route::Node { index, .. } => {
                        parts.push(part(map.node(index).ok_or_else(|| no_node(index))?, keys, false));
                    }
                }
                drop(map);
                for (key, address) in std::mem::take(&mut call.asks) {
                    let (_, node) = c.map.write().at(&address, |a| c.recipe.make(a, &[]))?;
                    parts.push(Part::new(&node, vec![key], matches!(route, Route::Keys { .. }), true, true));
                }
            }
        }
        Ok(parts)
    }

    /// Take one part's outcome into the call: the keys a cluster node sent elsewhere (or could
    /// not serve) go again; the others are read.
    pub fn settle<C: Command>(
        &self,
        cmd: &C,
        call: &mut Call<C::Output>,
        part: &Part,
        outcome: Result<Vec<Value>, Error>,
    ) {
        let label = part.pool().label();
        let mut replies = match outcome {
            Ok(replies) => replies,
            Err(e) => {
                match (&self.shape, Detour::of(&e)) {
                    (Shape::Cluster(_), Some(detour)) => {
                        call.pending.extend(&part.keys);
                        call.detours.push(detour);
                        call.detour_error = Some(e);
                    }
                    _ => {
                        call.failure.get_or_insert(e);
                    }
                }
                return;
            }
        };
        if part.ask {
            // Each command went after an ASKING: its +OK is not the command's.
            let mut kept = Vec::with_capacity(replies.len() / 2);
            for (i, reply) in replies.into_iter().enumerate() {
                match reply {
                    Value::ServerError(e) if i % 2 == 0 => {
                        call.failure.get_or_insert(classify(label, &e.into()));
                        return;
                    }
                    _ if i % 2 == 0 => {}
                    reply => kept.push(reply),
                }
            }
            replies = kept;
        }
        let Shape::Cluster(c) = &self.shape else {
            if let Err(e) = cmd.read(&part.keys, part.each, replies, &mut call.out, label) {
                call.failure.get_or_insert(e);
            }
            return;
        };
        if !replies.iter().any(|r| detour_of(label, r).is_some()) {
            match cmd.read(&part.keys, part.each, replies, &mut call.out, label) {
                Ok(()) if part.ask => cmd.asked(&part.keys, &mut call.out),
                Ok(()) => {}
                Err(e) => {
                    call.failure.get_or_insert(e);
                }
            }
            return;
        }
        // Some keys were sent elsewhere: those go again, the rest are read.
        let per = if part.keys.len() > 1 && replies.len().is_multiple_of(part.keys.len()) {
            replies.len() / part.keys.len()
        } else {
            replies.len().max(1)
        };
        let (mut answered, mut answers) = (Vec::new(), Vec::new());
        let mut replies = replies.into_iter();
        for &key in &part.keys {
            let chunk: Vec<Value> = replies.by_ref().take(per).collect();
            if let Some((detour, e)) = chunk.iter().find_map(|r| detour_of(label, r)) {
                match &detour {
                    Detour::Ask(address) => call.asks.push((key, address.clone())),
                    Detour::Moved { slot, address } => {
                        let moved = c.map.write().moved(*slot, address, |a| c.recipe.make(a, &[]));
                        if let Err(e) = moved.map(|news| call.news |= news) {
                            call.failure.get_or_insert(e);
                        }
                        call.pending.push(key);
                    }
                    _ => call.pending.push(key),
                }
                call.detours.push(detour);
                call.detour_error = Some(e);
            } else {
                answered.push(key);
                answers.extend(chunk);
            }
        }
        if !answered.is_empty() {
            match cmd.read(&answered, part.each, answers, &mut call.out, label) {
                Ok(()) if part.ask => cmd.asked(&answered, &mut call.out),
                Ok(()) => {}
                Err(e) => {
                    call.failure.get_or_insert(e);
                }
            }
        }
    }

    /// After every part of an attempt is settled: the answer, the failure, or what the next
    /// attempt needs first.
    pub fn next<O>(&self, call: &mut Call<O>) -> Next {
        if let Some(e) = call.failure.take() {
            return Next::Fail(e);
        }
        if call.pending.is_empty() && call.asks.is_empty() {
            return Next::Done;
        }
        let attempt = call.attempt;
        call.attempt += 1;
        let detour_error =
            || call.detour_error.clone().unwrap_or_else(|| Error::new(ErrorKind::ClusterBusy, "redis cluster: busy"));
        if call.attempt >= ATTEMPTS || Instant::now() > call.until {
            return Next::Fail(detour_error());
        }
        let plan = cluster::plan(attempt, &call.detours, call.news);
        call.detours.clear();
        call.news = false;
        Next::Again(plan)
    }

    /// The error to fail with when a plan's `fail_unless_moved` finds nobody took over.
    pub fn stuck<O>(&self, call: &Call<O>) -> Error {
        call.detour_error.clone().unwrap_or_else(|| Error::new(ErrorKind::ServerDown, "redis cluster: a node is down"))
    }

    /// The slots' owners now (to tell whether a reading of the map moved anything).
    pub fn owners(&self) -> Vec<Option<u32>> {
        match &self.shape {
            Shape::Cluster(c) => c.map.read().owners(),
            _ => Vec::new(),
        }
    }

    /// Read the slot map again (from a primary serving slots, else a seed, else any node known
    /// before), unless another call did in the last 50 ms and `force` is false. `ask` reads
    /// CLUSTER SLOTS from a node, within its deadline.
    pub fn refresh(&self, force: bool, ask: impl Fn(&Node) -> Result<Value, Error>) -> Result<(), Error> {
        let Shape::Cluster(c) = &self.shape else { return Ok(()) };
        let started = Instant::now();
        let mut refreshed = c.refreshed.lock();
        if !force && refreshed.is_some_and(|t| t + Duration::from_millis(50) >= started) && c.map.read().is_known() {
            return Ok(());
        }
        // One deadline for the whole reading: a seed that never answers costs it once, and the
        // seeds after it are not tried past it.
        let until = Instant::now() + c.deadline;
        let candidates = c.map.read().candidates(&c.seeds);
        let mut last: Option<Error> = None;
        for address in &candidates {
            if last.is_some() && Instant::now() > until {
                break;
            }
            let node = c.map.write().at(address, |a| c.recipe.make(a, &[]));
            let ranges: Result<Vec<SlotRange>, Error> =
                node.and_then(|(_, node)| ask(&node)).and_then(|reply| cluster::parse_slots(&reply, address));
            match ranges {
                Ok(ranges) if !ranges.is_empty() => {
                    c.map.write().install(&ranges, |p, r| c.recipe.make(p, r))?;
                    *refreshed = Some(Instant::now());
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => last = Some(e),
            }
        }
        let last = last.map_or_else(String::new, |e| format!(" ({e})"));
        Err(Error::new(
            ErrorKind::ServerDown,
            format!("redis cluster: no node of [{}] gave its slot map{last}", candidates.join(", ")),
        ))
    }
}

fn no_node(index: usize) -> Error {
    Error::new(ErrorKind::Config, format!("redis: no node {index} (see nodes())"))
}
