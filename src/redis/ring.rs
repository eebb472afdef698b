//! Client-side sharding: the hash rings of the two predecessors that spread keys over several
//! redis servers, so every key a site wrote is found where that predecessor put it.
//!
//! - django-redis's `ShardClient` (`django_redis.hash_ring.HashRing`): 128 points per server at
//!   `sha256("{name}:{i}")` in hex, compared as text, `name` being the LOCATION entry as written;
//!   a key goes to the last point at or below the hex `sha256` of the key, or of its `{tag}`
//!   (the text between the last `{` and the last `}` after it, on the key's first line).
//! - django-redis-cache's `HashRing`: 16 points per server at the last 8 hex digits of
//!   `md5("{i}:{node}")`, `node` being the text of django-redis-cache's connection identifier;
//!   a key goes to the last point at or below the same hash of the key.
//!
//! In both, a key below the first point goes to the last one.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Which predecessor's ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// django-redis's `ShardClient`.
    DjangoRedis,
    /// django-redis-cache's `ShardedRedisCache`.
    DjangoRedisCache,
}

impl RingKind {
    /// The kind by its name in settings: `django-redis` or `django-redis-cache`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "django-redis" => Some(Self::DjangoRedis),
            "django-redis-cache" => Some(Self::DjangoRedisCache),
            _ => None,
        }
    }
}

/// A ring's points in order: each point's position and the server (its index) that owns it.
#[derive(Debug, Clone)]
pub struct Ring {
    kind: RingKind,
    /// django-redis: hex digests (compared as text); django-redis-cache: 32-bit numbers.
    text: Vec<(String, usize)>,
    numbers: Vec<(u32, usize)>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// django-redis-cache's point: the last 8 hex digits of the MD5 digest, as a number.
fn md5_tail(data: &[u8]) -> u32 {
    let digest = Md5::digest(data);
    u32::from_be_bytes([digest[12], digest[13], digest[14], digest[15]])
}

/// django-redis's tag: within the first line, the text between the last `{` before the line's
/// last `}` and that `}` (Python's `re.match(r".*\{(.*)\}.*", key)`).
fn django_redis_tag(key: &[u8]) -> Option<&[u8]> {
    let line = key.split(|b| *b == b'\n').next().unwrap_or(key);
    let close = line.iter().rposition(|b| *b == b'}')?;
    let open = line[..close].iter().rposition(|b| *b == b'{')?;
    Some(&line[open + 1..close])
}

/// The index of the last point at or below `at`, the last point of all for a key below the
/// first (Python's `bisect(points, at) - 1`).
fn last_at_or_below<T: Ord>(points: &[(T, usize)], at: &T) -> usize {
    let after = points.partition_point(|(p, _)| p <= at);
    let index = if after == 0 { points.len() - 1 } else { after - 1 };
    points[index].1
}

impl Ring {
    /// A ring over `names` (the servers as the predecessor names them), in LOCATION order.
    /// `None` without servers.
    pub fn new(kind: RingKind, names: &[String]) -> Option<Self> {
        if names.is_empty() {
            return None;
        }
        let mut ring = Self { kind, text: Vec::new(), numbers: Vec::new() };
        match kind {
            RingKind::DjangoRedis => {
                // A dict keyed by digest: a later server's equal point replaces an earlier one.
                let mut points = std::collections::BTreeMap::new();
                for (n, name) in names.iter().enumerate() {
                    for i in 0..128 {
                        points.insert(sha256_hex(format!("{name}:{i}").as_bytes()), n);
                    }
                }
                ring.text = points.into_iter().collect();
            }
            RingKind::DjangoRedisCache => {
                let mut points: Vec<(u32, usize)> = names
                    .iter()
                    .enumerate()
                    .flat_map(|(n, node)| (0..16).map(move |i| (md5_tail(format!("{i}:{node}").as_bytes()), n)))
                    .collect();
                // Python's sort is stable: equal points keep the servers' order.
                points.sort_by_key(|(p, _)| *p);
                ring.numbers = points;
            }
        }
        Some(ring)
    }

    /// The server (index in LOCATION) that holds `key` (the made key).
    pub fn index(&self, key: &[u8]) -> usize {
        match self.kind {
            RingKind::DjangoRedis => {
                let hashed = django_redis_tag(key).unwrap_or(key);
                last_at_or_below(&self.text, &sha256_hex(hashed))
            }
            RingKind::DjangoRedisCache => last_at_or_below(&self.numbers, &md5_tail(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_as_python_re_finds_them() {
        assert_eq!(django_redis_tag(b"site:2:{user7}:cart"), Some(&b"user7"[..]));
        assert_eq!(django_redis_tag(b"p:1:{a}{b9}"), Some(&b"b9"[..]));
        assert_eq!(django_redis_tag(b"{a}x}"), Some(&b"a}x"[..]));
        assert_eq!(django_redis_tag(b"x{}y"), Some(&b""[..]));
        assert_eq!(django_redis_tag(b"no tag"), None);
        assert_eq!(django_redis_tag(b"{a\n}"), None);
        assert_eq!(django_redis_tag(b"}{"), None);
    }

    #[test]
    fn every_server_gets_keys_and_lookups_are_stable() {
        for kind in [RingKind::DjangoRedis, RingKind::DjangoRedisCache] {
            let names: Vec<String> = (0..3).map(|i| format!("redis://10.0.0.{i}:6379/1")).collect();
            let ring = Ring::new(kind, &names).unwrap();
            let mut seen = [0; 3];
            for i in 0..3000 {
                let key = format!(":1:key{i}");
                let n = ring.index(key.as_bytes());
                assert_eq!(n, ring.index(key.as_bytes()));
                seen[n] += 1;
            }
            assert!(seen.iter().all(|n| *n > 300), "{kind:?} {seen:?}");
        }
        assert!(Ring::new(RingKind::DjangoRedis, &[]).is_none());
    }
}
