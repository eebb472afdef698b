//! Key -> server routing, compatible with libmemcached (and so pylibmc): keys a pylibmc site
//! wrote are found on the same servers.
//!
//! - modula (libmemcached's default): one-at-a-time hash of the key, modulo the server count.
//! - ketama: a continuum of 100 points per server, each the key hash of `"host:port-i"`
//!   (`"host-i"` on port 11211); a key goes to the first point at or after its hash.
//! - ketama weighted: MD5, 160 points per server scaled by its share of the total weight, four
//!   points from each digest of `"host:port-i"`; keys hashed with MD5.

use md5::{Digest, Md5};

/// The hash of keys (and, for unweighted ketama, of continuum points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHash {
    /// Jenkins one-at-a-time, libmemcached's default.
    OneAtATime,
    /// The first four bytes of the MD5 digest, little-endian.
    Md5,
}

/// How keys are spread over servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// `hash % server_count`.
    Modula,
    /// Consistent hashing (libmemcached's ketama).
    Ketama,
    /// Consistent hashing with points in proportion to server weights.
    KetamaWeighted,
}

/// A server as the ring names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host name or address as configured (a socket path for unix sockets).
    pub host: String,
    /// TCP port; 0 for a unix socket.
    pub port: u16,
    /// Relative weight (ketama weighted only).
    pub weight: u32,
}

impl Node {
    fn point_name(&self, i: u32) -> String {
        if self.port == 11211 { format!("{}-{i}", self.host) } else { format!("{}:{}-{i}", self.host, self.port) }
    }
}

/// libmemcached's one-at-a-time hash. It reads the key through a (signed) `char *`, so bytes
/// from 0x80 up are sign-extended before they are added: kept here for compatibility.
pub fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &b in key {
        h = h.wrapping_add(i32::from(b as i8) as u32);
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

fn md5_word(key: &[u8], word: usize) -> u32 {
    let digest = Md5::digest(key);
    let b = &digest[word * 4..word * 4 + 4];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl KeyHash {
    /// The hash of `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            KeyHash::OneAtATime => one_at_a_time(key),
            KeyHash::Md5 => md5_word(key, 0),
        }
    }
}

/// Routes keys to indexes into the node list it was built from.
#[derive(Debug, Clone)]
pub struct Ring {
    hash: KeyHash,
    distribution: Distribution,
    nodes: usize,
    /// (point, node index), sorted by point; empty for modula.
    continuum: Vec<(u32, usize)>,
}

impl Ring {
    /// A ring over `nodes`. Weighted ketama always hashes with MD5, as libmemcached does.
    pub fn new(nodes: &[Node], distribution: Distribution, hash: KeyHash) -> Self {
        let hash = if distribution == Distribution::KetamaWeighted { KeyHash::Md5 } else { hash };
        let mut continuum = Vec::new();
        match distribution {
            Distribution::Modula => {}
            Distribution::Ketama => {
                for (i, node) in nodes.iter().enumerate() {
                    for p in 0..100 {
                        continuum.push((hash.hash(node.point_name(p).as_bytes()), i));
                    }
                }
            }
            Distribution::KetamaWeighted => {
                let total: f64 = nodes.iter().map(|n| f64::from(n.weight.max(1))).sum();
                let count = nodes.len() as f64;
                for (i, node) in nodes.iter().enumerate() {
                    let share = f64::from(node.weight.max(1)) / total;
                    // libmemcached computes this in floats, with the same epsilon.
                    let points = ((share * 160.0 / 4.0 * count + 0.000_000_000_1).floor() as u32) * 4;
                    for p in 0..points / 4 {
                        let name = node.point_name(p);
                        for word in 0..4 {
                            continuum.push((md5_word(name.as_bytes(), word), i));
                        }
                    }
                }
            }
        }
        continuum.sort_unstable();
        Self { hash, distribution, nodes: nodes.len(), continuum }
    }

    /// How many nodes the ring routes to.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Whether the ring has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// The index of the node that holds `key`; `None` when there is no node.
    pub fn route(&self, key: &[u8]) -> Option<usize> {
        if self.nodes <= 1 {
            return if self.nodes == 1 { Some(0) } else { None };
        }
        let h = self.hash.hash(key);
        match self.distribution {
            Distribution::Modula => Some(h as usize % self.nodes),
            Distribution::Ketama | Distribution::KetamaWeighted => {
                let i = self.continuum.partition_point(|&(point, _)| point < h);
                let (_, node) = self.continuum.get(i).or_else(|| self.continuum.first())?;
                Some(*node)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Routes observed from pylibmc 1.6.3 / libmemcached 1.0.16 over three servers on
    // 127.0.0.1:21211-21213 (bench of 300 keys; these ten kept as fixtures).
    const KEYS: [&str; 10] =
        [":1:key0", ":1:key1", ":1:key2", ":1:key3", ":1:key4", ":1:key5", ":1:key6", ":1:key7", "清水:1", ":1:ü-ber"];

    fn nodes() -> Vec<Node> {
        (21211..=21213).map(|port| Node { host: "127.0.0.1".into(), port, weight: 1 }).collect()
    }

    fn routes(ring: &Ring) -> Vec<usize> {
        KEYS.iter().map(|k| ring.route(k.as_bytes()).unwrap()).collect()
    }

    #[test]
    fn one_at_a_time_matches_libmemcached() {
        assert_eq!(one_at_a_time(b":1:key0"), 2_172_610_875);
        assert_eq!(one_at_a_time(b":1:key1"), 263_751_087);
        assert_eq!(one_at_a_time("清水:1".as_bytes()), 1_404_913_646);
    }

    #[test]
    fn modula_matches_pylibmc() {
        let ring = Ring::new(&nodes(), Distribution::Modula, KeyHash::OneAtATime);
        assert_eq!(routes(&ring), [0, 0, 0, 0, 1, 0, 1, 2, 2, 0]);
    }

    #[test]
    fn ketama_matches_pylibmc() {
        let ring = Ring::new(&nodes(), Distribution::Ketama, KeyHash::OneAtATime);
        assert_eq!(routes(&ring), [1, 2, 0, 1, 1, 1, 0, 2, 1, 1]);
    }

    #[test]
    fn ketama_md5_matches_pylibmc() {
        let ring = Ring::new(&nodes(), Distribution::Ketama, KeyHash::Md5);
        assert_eq!(routes(&ring), [1, 1, 0, 0, 2, 2, 0, 0, 1, 2]);
    }

    #[test]
    fn ketama_weighted_matches_pylibmc() {
        let ring = Ring::new(&nodes(), Distribution::KetamaWeighted, KeyHash::OneAtATime);
        assert_eq!(routes(&ring), [0, 1, 0, 0, 2, 2, 2, 1, 1, 2]);
    }

    #[test]
    fn default_port_names_points_without_it() {
        let n = Node { host: "cache1".into(), port: 11211, weight: 1 };
        assert_eq!(n.point_name(3), "cache1-3");
        let n = Node { host: "cache1".into(), port: 11212, weight: 1 };
        assert_eq!(n.point_name(0), "cache1:11212-0");
    }

    #[test]
    fn consistent_hashing_moves_few_keys_when_a_server_goes() {
        let all = nodes();
        let before = Ring::new(&all, Distribution::Ketama, KeyHash::OneAtATime);
        let after = Ring::new(&all[..2], Distribution::Ketama, KeyHash::OneAtATime);
        let mut moved = 0;
        for i in 0..3000 {
            let key = format!("k{i}");
            let (a, b) = (before.route(key.as_bytes()).unwrap(), after.route(key.as_bytes()).unwrap());
            if a != 2 {
                moved += usize::from(a != b);
            }
        }
        assert_eq!(moved, 0, "keys of surviving servers stay put");
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(Ring::new(&[], Distribution::Ketama, KeyHash::Md5).route(b"k"), None);
        assert_eq!(Ring::new(&nodes()[..1], Distribution::Modula, KeyHash::Md5).route(b"k"), Some(0));
    }
}
