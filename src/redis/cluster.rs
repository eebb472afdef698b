//! Redis Cluster, as data: a key's hash slot, the slot map the nodes give (`CLUSTER SLOTS`), and
//! the policy for what a call does when a node sends it elsewhere or cannot serve it. Both
//! runners (blocking and async) drive the same policy; no I/O here.
//!
//! - MOVED (the slot has a new owner): the slot is given to the node named (it knows best while
//!   other nodes' maps may lag), and the keys go again; the whole map is read again when that
//!   node served no slot a moment ago (a failover or a new node moves many slots at once), every
//!   32 moves, and when a call is moved a second time (then after a short pause: the nodes
//!   disagree for a moment while a migration settles).
//! - ASK (the slot is being migrated): the key goes once to the node named, after ASKING.
//! - TRYAGAIN / CLUSTERDOWN / MASTERDOWN: a short pause, the map read again, and again.
//! - a node that cannot be reached: the map is read again; its keys go again if another node
//!   serves their slots now, else the call fails at once (as on one server).
//!
//! Each at most [`ATTEMPTS`] times and within the call's deadline. No command spans slots: a node
//! gets one pipeline of one-key commands.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use crate::error::{Error, ErrorKind};

/// The cluster's hash slots.
pub const SLOTS: usize = 16384;

/// How many times one call follows redirections or waits out a busy or unreachable cluster.
pub const ATTEMPTS: usize = 6;

/// CRC16 (XMODEM: polynomial 0x1021, start 0), the slot hash.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// A key's hash slot: CRC16 of the key, or of the text between its first `{` and the next `}`
/// when that is not empty.
pub fn key_slot(key: &[u8]) -> u16 {
    let mut data = key;
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        data = &key[open + 1..open + 1 + len];
    }
    crc16(data) % SLOTS as u16
}

/// One range of `CLUSTER SLOTS`: its slots, its primary and its replicas (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    /// The first slot.
    pub first: u16,
    /// The last slot (inclusive).
    pub last: u16,
    /// The primary.
    pub primary: String,
    /// The replicas.
    pub replicas: Vec<String>,
}

fn bad(asked: &str, what: String) -> Error {
    Error::new(ErrorKind::Protocol, format!("redis cluster node {asked}: CLUSTER SLOTS answered {what}"))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `host:port` of a node entry (an empty host is the node asked).
fn node_address(entry: &Value, asked: &str) -> Result<String, Error> {
    let Value::Array(parts) = entry else { return Err(bad(asked, format!("a node entry {entry:.80?}"))) };
    let (Some(host), Some(port)) = (parts.first().and_then(text), parts.get(1)) else {
        return Err(bad(asked, format!("a node entry {entry:.80?}")));
    };
    let host =
        if host.is_empty() || host == "?" { asked.rsplit_once(':').map_or("", |(h, _)| h).to_owned() } else { host };
    match port {
        Value::Int(p) if (1..=65535).contains(p) => Ok(format!("{host}:{p}")),
        other => Err(bad(asked, format!("a node port {other:.40?}"))),
    }
}

/// CLUSTER SLOTS as ranges. A reply of another shape (a node that is no cluster node, a proxy
/// answering `+OK` to everything, an echo, a range without a node) is a protocol error of the
/// node asked, so the next one is tried.
pub fn parse_slots(reply: &Value, asked: &str) -> Result<Vec<SlotRange>, Error> {
    let Value::Array(entries) = reply else {
        return Err(bad(asked, format!("{reply:.80?} instead of a list of ranges")));
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { return Err(bad(asked, format!("a range {entry:.80?}"))) };
        if parts.len() < 3 {
            return Err(bad(asked, format!("a range {entry:.80?}")));
        }
        let (Value::Int(first), Value::Int(last)) = (&parts[0], &parts[1]) else {
            return Err(bad(asked, format!("a range's bounds {:.20?}-{:.20?}", parts[0], parts[1])));
        };
        if !(0 <= *first && first <= last && *last < SLOTS as i64) {
            return Err(bad(asked, format!("slots {first}-{last}")));
        }
        ranges.push(SlotRange {
            first: *first as u16,
            last: *last as u16,
            primary: node_address(&parts[2], asked)?,
            replicas: parts[3..].iter().map(|r| node_address(r, asked)).collect::<Result<_, _>>()?,
        });
    }
    Ok(ranges)
}

/// Which node serves each slot. Nodes are only ever added: an index read once stays valid.
#[derive(Debug)]
pub struct SlotMap<T> {
    /// Per slot, the index of its node; `None` until a map names one.
    slots: Vec<Option<u32>>,
    nodes: Vec<T>,
    /// A node by its primary and replicas, as a map named them.
    shards: HashMap<(String, Vec<String>), usize>,
    /// A node by its primary's address (the latest one made for it).
    by_primary: HashMap<String, usize>,
    moves: u64,
    /// Whether a whole map was installed (a node made to be asked for it does not count: the
    /// calls that find the map unknown wait for the reading instead of failing for no owner).
    installed: bool,
}

impl<T: Clone> Default for SlotMap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> SlotMap<T> {
    /// An empty map: no slot served yet.
    pub fn new() -> Self {
        Self {
            slots: vec![None; SLOTS],
            nodes: Vec::new(),
            shards: HashMap::new(),
            by_primary: HashMap::new(),
            moves: 0,
            installed: false,
        }
    }

    /// Whether any map was installed.
    pub fn is_known(&self) -> bool {
        self.installed
    }

    /// The node serving `slot`, and its index.
    pub fn owner(&self, slot: u16) -> Option<(usize, &T)> {
        let index = self.slots[usize::from(slot)]? as usize;
        Some((index, &self.nodes[index]))
    }

    /// A node by index.
    pub fn node(&self, index: usize) -> Option<&T> {
        self.nodes.get(index)
    }

    /// The node whose primary is at `address`, made (a node of no slot yet) if unknown.
    pub fn at(&mut self, address: &str, make: impl FnOnce(&str) -> Result<T, Error>) -> Result<(usize, T), Error> {
        if let Some(&index) = self.by_primary.get(address) {
            return Ok((index, self.nodes[index].clone()));
        }
        let node = make(address)?;
        self.nodes.push(node.clone());
        let index = self.nodes.len() - 1;
        self.by_primary.insert(address.to_owned(), index);
        Ok((index, node))
    }

    /// The nodes serving slots now, each once, in the order of their first slot.
    pub fn serving(&self) -> Vec<(usize, T)> {
        let mut seen = vec![false; self.nodes.len()];
        let mut out = Vec::new();
        for index in self.slots.iter().flatten() {
            let index = *index as usize;
            if !seen[index] {
                seen[index] = true;
                out.push((index, self.nodes[index].clone()));
            }
        }
        out
    }

    /// The addresses to read the map from, best first: the primaries serving slots now, then
    /// `seeds`, then any primary known before.
    pub fn candidates(&self, seeds: &[String]) -> Vec<String> {
        let serving: Vec<usize> = self.serving().into_iter().map(|(i, _)| i).collect();
        let mut current: Vec<(&String, usize)> =
            self.by_primary.iter().filter(|(_, i)| serving.contains(i)).map(|(a, i)| (a, *i)).collect();
        current.sort_by_key(|(_, i)| *i);
        let mut former: Vec<(&String, usize)> =
            self.by_primary.iter().filter(|(_, i)| !serving.contains(i)).map(|(a, i)| (a, *i)).collect();
        former.sort_by_key(|(_, i)| *i);
        let mut out: Vec<String> = Vec::new();
        for address in current.into_iter().map(|(a, _)| a).chain(seeds).chain(former.into_iter().map(|(a, _)| a)) {
            if !out.contains(address) {
                out.push(address.clone());
            }
        }
        out
    }

    /// MOVED: `slot` is served by the node at `address` now. Whether the whole map should be
    /// read again: that node served no slot a moment ago, or it is the 32nd move since.
    pub fn moved(
        &mut self,
        slot: u16,
        address: &str,
        make: impl FnOnce(&str) -> Result<T, Error>,
    ) -> Result<bool, Error> {
        let known = self.by_primary.get(address).copied();
        let news = known.is_none_or(|i| !self.slots.contains(&Some(i as u32)));
        let (index, _) = self.at(address, make)?;
        self.slots[usize::from(slot)] = Some(index as u32);
        self.moves += 1;
        Ok(news || self.moves.is_multiple_of(32))
    }

    /// Take a map read from a node: each range's node (made when its primary and replicas are
    /// new), slot by slot. A map without a range changes nothing.
    pub fn install(
        &mut self,
        ranges: &[SlotRange],
        mut make: impl FnMut(&str, &[String]) -> Result<T, Error>,
    ) -> Result<(), Error> {
        for range in ranges {
            let shard = (range.primary.clone(), range.replicas.clone());
            let index = if let Some(&index) = self.shards.get(&shard) {
                index
            } else {
                self.nodes.push(make(&range.primary, &range.replicas)?);
                let index = self.nodes.len() - 1;
                self.shards.insert(shard, index);
                index
            };
            self.by_primary.insert(range.primary.clone(), index);
            for slot in range.first..=range.last {
                self.slots[usize::from(slot)] = Some(index as u32);
            }
        }
        self.installed |= !ranges.is_empty();
        Ok(())
    }

    /// The slots' owners, to tell whether a reading of the map changed anything.
    pub fn owners(&self) -> Vec<Option<u32>> {
        self.slots.clone()
    }
}

/// Why a key of a call must go again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detour {
    /// MOVED to this node, for good.
    Moved {
        /// The key's slot.
        slot: u16,
        /// The node's `host:port`.
        address: String,
    },
    /// ASK this node, once, with ASKING.
    Ask(String),
    /// TRYAGAIN, CLUSTERDOWN, MASTERDOWN.
    Busy,
    /// The node could not be reached (or timed out).
    Down,
}

impl Detour {
    /// The detour an error calls for, if it is one the cluster policy follows.
    pub fn of(e: &Error) -> Option<Self> {
        match e.kind() {
            ErrorKind::Redirect => e.redirect().map(|r| {
                if r.ask {
                    Self::Ask(r.address.clone())
                } else {
                    Self::Moved { slot: r.slot, address: r.address.clone() }
                }
            }),
            ErrorKind::ClusterBusy => Some(Self::Busy),
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Tls | ErrorKind::ServerDown => Some(Self::Down),
            _ => None,
        }
    }
}

/// What a call does after an attempt whose keys met `detours` (`attempt` counts from 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Read the whole map again first (forced: even if another call just did).
    pub refresh: bool,
    /// ... forced.
    pub force: bool,
    /// Wait this long first.
    pub pause: Duration,
    /// Fail with the node-down error if the map still gives the same owners (nobody took over).
    pub fail_unless_moved: bool,
}

/// The policy: what the next attempt needs after `detours` (the moves already applied to the
/// map, `news` telling whether one called for a whole new map).
pub fn plan(attempt: usize, detours: &[Detour], news: bool) -> Plan {
    let mut plan = Plan::default();
    let moved = detours.iter().any(|d| matches!(d, Detour::Moved { .. }));
    let busy = detours.contains(&Detour::Busy);
    let down = detours.contains(&Detour::Down);
    if moved && (news || attempt > 0) {
        plan.refresh = true;
    }
    if moved && attempt > 0 {
        plan.pause = plan.pause.max(Duration::from_millis(20 * attempt as u64));
    }
    if busy {
        plan.pause = plan.pause.max(Duration::from_millis(20 * (attempt as u64 + 1)));
        plan.refresh = true;
        plan.force = true;
    }
    if down {
        plan.refresh = true;
        plan.force = true;
        plan.fail_unless_moved = !busy;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![Value::BulkString(host.into()), Value::Int(port), Value::BulkString(b"id".to_vec())])
    }

    #[test]
    fn slots_are_redis_clusters() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn a_map_is_read_and_bad_ones_refused() {
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(8191), node("10.0.0.1", 7000), node("", 7003)]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node("10.0.0.2", 7001)]),
        ]);
        let ranges = parse_slots(&reply, "10.0.0.9:7005").unwrap();
        assert_eq!(ranges[0].replicas, vec!["10.0.0.9:7003".to_owned()]);
        assert_eq!(ranges[1].primary, "10.0.0.2:7001");
        for bad in [
            Value::Okay,
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(20000), node("a", 1)])]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(5)])]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(5), node("a", 0)])]),
        ] {
            assert_eq!(parse_slots(&bad, "x:1").unwrap_err().kind(), ErrorKind::Protocol);
        }
    }

    #[test]
    fn moves_and_maps() {
        let mut map: SlotMap<String> = SlotMap::new();
        assert!(!map.is_known());
        // A seed made to be asked for the map: still no map (concurrent calls must wait).
        map.at("s:1", |a| Ok(a.to_owned())).unwrap();
        assert!(!map.is_known() && map.owner(5).is_none());
        let make = |a: &str, _: &[String]| Ok(a.to_owned());
        let ranges = vec![
            SlotRange { first: 0, last: 9, primary: "a:1".into(), replicas: vec![] },
            SlotRange { first: 10, last: 16383, primary: "b:1".into(), replicas: vec![] },
        ];
        map.install(&ranges, make).unwrap();
        assert_eq!(map.owner(5).map(|(_, n)| n.clone()), Some("a:1".to_owned()));
        // A move to a node that serves slots is no news; to a new node it is.
        assert!(!map.moved(5, "b:1", |a| Ok(a.to_owned())).unwrap());
        assert!(map.moved(6, "c:1", |a| Ok(a.to_owned())).unwrap());
        assert_eq!(map.owner(6).map(|(_, n)| n.clone()), Some("c:1".to_owned()));
        assert_eq!(map.candidates(&["s:1".to_owned(), "a:1".to_owned()]), ["a:1", "b:1", "c:1", "s:1"]);
    }

    #[test]
    fn the_policy() {
        let moved = Detour::Moved { slot: 1, address: "a:1".into() };
        assert_eq!(plan(0, std::slice::from_ref(&moved), false), Plan::default());
        assert!(plan(0, std::slice::from_ref(&moved), true).refresh);
        let again = plan(1, &[moved], false);
        assert!(again.refresh && again.pause == Duration::from_millis(20));
        let busy = plan(0, &[Detour::Busy], false);
        assert!(busy.force && busy.pause == Duration::from_millis(20) && !busy.fail_unless_moved);
        assert!(plan(0, &[Detour::Down], false).fail_unless_moved);
    }
}
