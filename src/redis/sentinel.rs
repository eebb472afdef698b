//! Redis Sentinel: where a service's master (and its replicas) are now.
//!
//! The sentinels are asked with `SENTINEL MASTER <service>` (a master some sentinel reports as
//! down, subjectively or objectively, is not taken: the next sentinel is asked) and
//! `SENTINEL REPLICAS <service>`; the answer is kept until something says it changed:
//! - a watch on one sentinel (a task on the I/O runtime, subscribed to `+switch-master` and the
//!   replica events) hears of a failover the moment the sentinels announce it;
//! - a pool whose connection to the master failed, or that was told READONLY, or whose new
//!   connection answered `ROLE` with anything but `master`, suspects that address, so the next
//!   connection asks the sentinels again;
//! - a replica pool whose connection to one replica failed passes that replica over for the
//!   pool's retry window (the sentinels may still list it): the others take its reads.
//!
//! A change of master bumps the epoch; the pools drop every connection made before it, so no
//! call goes on talking to a demoted master.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::{Conn, Login, handshake};
use super::wire::{RedisWire, classify};
use crate::error::{Error, ErrorKind};
use crate::net::aio::{self, Wire};
use crate::net::{Address, Tls};

/// The events the watch listens for: a failover, and the changes to the replica set.
const EVENTS: [&str; 8] =
    ["+switch-master", "+promoted-slave", "+slave", "+sdown", "-sdown", "+odown", "+convert-to-slave", "+reset-master"];

/// How long the watch waits before it tries the next sentinel after losing one.
const REWATCH_AFTER: Duration = Duration::from_millis(250);

/// Where the sentinels are and how to talk to them.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// The sentinels, tried in order (the last one that answered first).
    pub sentinels: Vec<Address>,
    /// The master's name in the sentinels' configuration.
    pub service: String,
    /// The sentinels' own ACL user and password (not the data nodes').
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
    /// TLS to the sentinels (the data nodes have their own).
    pub tls: Option<Tls>,
    /// To connect to one sentinel.
    pub connect_timeout: Duration,
}

/// What the sentinels said last.
#[derive(Default)]
struct Known {
    /// The master the sentinels named last.
    master: Option<Address>,
    /// It failed, or was reported down, since: the next connection asks the sentinels again
    /// (their answer moves the epoch only if it names another address).
    doubted: bool,
    replicas: Option<Vec<Address>>,
    next_replica: usize,
    /// Replicas a connection to failed, each passed over until its instant.
    shunned: Vec<(Address, Instant)>,
    /// The sentinel that answered last (asked first next time).
    first: usize,
}

impl Known {
    /// The master named last, unless it is doubted since (then it must be asked for again).
    fn trusted_master(&self) -> Option<Address> {
        if self.doubted { None } else { self.master.clone() }
    }

    /// The next replica in turn that is not passed over; `None` when there is none (or the
    /// replicas were not asked yet).
    fn next_replica(&mut self) -> Option<Address> {
        let now = Instant::now();
        self.shunned.retain(|(_, until)| *until > now);
        let usable: Vec<&Address> = self.usable(now)?.collect();
        if usable.is_empty() {
            return None;
        }
        let pick = usable[self.next_replica % usable.len()].clone();
        self.next_replica = self.next_replica.wrapping_add(1);
        Some(pick)
    }

    /// The listed replicas not passed over at `now` (`None`: not asked yet).
    fn usable(&self, now: Instant) -> Option<impl Iterator<Item = &Address>> {
        let passed_over = move |r: &Address| self.shunned.iter().any(|(s, until)| s == r && *until > now);
        Some(self.replicas.as_ref()?.iter().filter(move |r| !passed_over(r)))
    }
}

/// The role a pool's connections must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The service's master: every write, and the reads unless replicas take them.
    Master,
    /// Any replica that is up (the master when there is none).
    Replica,
}

/// One service's sentinels, shared by its master and replica pools.
pub struct Sentinel {
    config: SentinelConfig,
    known: Mutex<Known>,
    epoch: AtomicU64,
    watching: AtomicBool,
    /// Masters learnt from the sentinels since the client was made (for the tests and stats).
    switches: AtomicU64,
}

impl Sentinel {
    /// A client of `config`'s sentinels (none asked yet).
    pub fn new(config: SentinelConfig) -> Result<Arc<Self>, Error> {
        if config.sentinels.is_empty() {
            return Err(Error::new(ErrorKind::Config, "redis sentinel: no sentinels configured"));
        }
        if config.service.is_empty() {
            return Err(Error::new(ErrorKind::Config, "redis sentinel: no service name"));
        }
        Ok(Arc::new(Self {
            config,
            known: Mutex::new(Known::default()),
            epoch: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            switches: AtomicU64::new(0),
        }))
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.config.service
    }

    /// Bumped whenever the master changes: connections made before are not used again.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// How many times the master changed since the client was made.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    /// The master the sentinels named last (doubted or not), without asking.
    pub fn known_master(&self) -> Option<Address> {
        self.known.lock().master.clone()
    }

    /// The master's address, and the epoch it belongs to: as known, or asked of the sentinels
    /// now (before `deadline`).
    pub fn master(self: &Arc<Self>, deadline: Instant) -> Result<(Address, u64), Error> {
        self.watch();
        if let Some(found) = self.cached(Role::Master) {
            return Ok(found);
        }
        let addr = self.ask_master(deadline)?;
        Ok(self.learn(addr))
    }

    /// The address a new connection of `role` takes, and the epoch it belongs to, if the
    /// sentinels' answer stands (no asking, no waiting): for the I/O threads, which must not
    /// block.
    pub fn cached(&self, role: Role) -> Option<(Address, u64)> {
        let mut known = self.known.lock();
        let epoch = self.epoch();
        let addr = match role {
            Role::Master => known.trusted_master(),
            Role::Replica => {
                known.replicas.as_ref()?;
                let master = known.trusted_master();
                known.next_replica().or(master)
            }
        };
        addr.map(|a| (a, epoch))
    }

    /// A replica's address (each call the next one), or the master's when none is up; and the
    /// epoch it belongs to. When no sentinel gives the replica list, this connection goes to
    /// the master and the next one asks again (an answer that was never given is not kept).
    pub fn replica(self: &Arc<Self>, deadline: Instant) -> Result<(Address, u64), Error> {
        self.watch();
        if let Some(found) = self.cached(Role::Replica) {
            return Ok(found);
        }
        let asked = self.ask_replicas(deadline);
        let mut known = self.known.lock();
        let pick = match asked {
            Ok(replicas) => {
                known.replicas = Some(replicas);
                known.next_replica()
            }
            Err(_) => None,
        };
        let epoch = self.epoch();
        drop(known);
        match pick {
            Some(addr) => Ok((addr, epoch)),
            None => self.master(deadline),
        }
    }

    /// `addr` failed, or is not what it was taken for: the next connection asks again. (A
    /// former master's failure, or a late report about it, leaves the current one alone.)
    pub fn suspect(&self, addr: &Address) {
        let mut known = self.known.lock();
        if known.master.as_ref() == Some(addr) {
            known.doubted = true;
        }
        if let Some(replicas) = known.replicas.as_mut() {
            replicas.retain(|r| r != addr);
        }
    }

    /// A connection to the replica at `addr` failed: new connections pass it over until
    /// `until`, even when the sentinels still list it.
    pub fn shun(&self, addr: &Address, until: Instant) {
        let mut known = self.known.lock();
        known.shunned.retain(|(a, _)| a != addr);
        known.shunned.push((addr.clone(), until));
    }

    /// Whether a replica that is not passed over is known (its reads need not go elsewhere).
    pub fn has_usable_replica(&self) -> bool {
        self.known.lock().usable(Instant::now()).is_some_and(|mut usable| usable.next().is_some())
    }

    /// The sentinels named `addr` the master: a change from another one bumps the epoch (under
    /// the lock, so an address and its epoch are always read together); the first master
    /// learnt, or the same one named again after a doubt, keeps it (the connections made so
    /// far stay: a replica's, say, made before the watch's first answer). The epoch `addr`
    /// belongs to.
    fn learn(&self, addr: Address) -> (Address, u64) {
        let mut known = self.known.lock();
        known.doubted = false;
        if known.master.as_ref() != Some(&addr) {
            self.switches.fetch_add(1, Ordering::Relaxed);
            if known.master.is_some() {
                known.replicas = None;
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        known.master = Some(addr.clone());
        (addr, self.epoch())
    }

    /// Replicas may have come or gone: ask again at the next replica connection.
    pub fn forget_replicas(&self) {
        self.known.lock().replicas = None;
    }

    /// Ask each sentinel in turn (the last to answer first) with `ask`, before `deadline`.
    fn ask_each<T>(
        &self,
        deadline: Instant,
        what: &str,
        ask: impl Fn(&mut Conn) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let n = self.config.sentinels.len();
        let first = self.known.lock().first;
        let mut last_error = None;
        for i in 0..n {
            let index = (first + i) % n;
            let addr = &self.config.sentinels[index];
            if Instant::now() >= deadline {
                break;
            }
            let login = Login {
                username: self.config.username.as_deref(),
                password: self.config.password.as_deref(),
                db: 0,
                client_name: None,
                master_only: false,
                readonly: false,
            };
            let until = deadline.min(Instant::now() + self.config.connect_timeout);
            let answer = Conn::connect(addr, self.config.tls.as_ref(), &login, until).and_then(|mut conn| {
                conn.begin(deadline);
                ask(&mut conn)
            });
            match answer {
                Ok(Some(found)) => {
                    self.known.lock().first = index;
                    return Ok(found);
                }
                Ok(None) => last_error = Some(format!("sentinel {addr} knows no {what} that is up")),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        Err(Error::new(
            ErrorKind::ServerDown,
            format!(
                "redis sentinel: no sentinel gave a {what} for {:?} ({})",
                self.config.service,
                last_error.as_deref().unwrap_or("out of time")
            ),
        ))
    }

    /// The master by the first sentinel that has one up: `GET-MASTER-ADDR-BY-NAME` (which
    /// names a replica the moment it is promoted, before the failover's end is announced) and
    /// `SENTINEL MASTER` (whose flags tell a master that is down), in one round trip.
    fn ask_master(&self, deadline: Instant) -> Result<Address, Error> {
        let service = &self.config.service;
        self.ask_each(deadline, "master", |conn| {
            let label = conn.label().to_owned();
            let mut pipe = redis::pipe();
            pipe.cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(service);
            pipe.cmd("SENTINEL").arg("MASTER").arg(service);
            let replies: Vec<Value> = match pipe.query(conn) {
                Ok(r) => r,
                Err(e) => return Err(conn.take_failure().unwrap_or_else(|| classify(&label, &e))),
            };
            let [named, state] = replies.as_slice() else { return Ok(None) };
            let Some(named) = address(named) else { return Ok(None) };
            let Some(state) = fields(state) else { return Ok(None) };
            let at = (state.get("ip"), state.get("port").and_then(|p| p.parse::<u16>().ok()));
            if at != (Some(&named_host(&named)), named_port(&named)) {
                // A replica was promoted and the failover is still being announced: it is the
                // master (the old one's flags say nothing about it).
                return Ok(Some(named));
            }
            Ok(usable(&state, &["s_down", "o_down"]))
        })
    }

    /// `SENTINEL REPLICAS <service>`: those not down or disconnected.
    fn ask_replicas(&self, deadline: Instant) -> Result<Vec<Address>, Error> {
        let service = &self.config.service;
        self.ask_each(deadline, "replica list", |conn| {
            let reply: Value = query(conn, redis::cmd("SENTINEL").arg("REPLICAS").arg(service))?;
            let Value::Array(items) = reply else { return Ok(None) };
            Ok(Some(
                items
                    .iter()
                    .filter_map(|item| fields(item).and_then(|f| usable(&f, &["s_down", "o_down", "disconnected"])))
                    .collect(),
            ))
        })
    }

    /// Start the watch (once), on the I/O runtime; it ends when the client is dropped.
    fn watch(self: &Arc<Self>) {
        if self.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        match aio::runtime() {
            Ok(handle) => {
                handle.spawn(watch(Arc::downgrade(self)));
            }
            // No watch: failures and READONLY replies still send the pools back to the sentinels.
            Err(_) => self.watching.store(false, Ordering::Release),
        }
    }
}

/// One command's reply, an error reply as ours.
fn query(conn: &mut Conn, cmd: &redis::Cmd) -> Result<Value, Error> {
    let label = conn.label().to_owned();
    match cmd.query::<Value>(conn) {
        Ok(Value::ServerError(e)) => Err(classify(&label, &e.into())),
        Ok(v) => Ok(v),
        Err(e) => Err(conn.take_failure().unwrap_or_else(|| classify(&label, &e))),
    }
}

/// A sentinel's flat field/value array (or a RESP3 map) as a map.
fn fields(reply: &Value) -> Option<HashMap<String, String>> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    match reply {
        Value::Array(items) => {
            let mut out = HashMap::new();
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    out.insert(text(k)?, text(v)?);
                }
            }
            Some(out)
        }
        Value::Map(pairs) => pairs.iter().map(|(k, v)| Some((text(k)?, text(v)?))).collect(),
        _ => None,
    }
}

/// `[ip, port]`, as GET-MASTER-ADDR-BY-NAME answers.
fn address(reply: &Value) -> Option<Address> {
    let Value::Array(parts) = reply else { return None };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    let [ip, port] = parts.as_slice() else { return None };
    Some(Address::Tcp(text(ip)?, text(port)?.parse().ok()?))
}

fn named_host(addr: &Address) -> String {
    match addr {
        Address::Tcp(host, _) => host.clone(),
        Address::Unix(path) => path.display().to_string(),
    }
}

fn named_port(addr: &Address) -> Option<u16> {
    match addr {
        Address::Tcp(_, port) => Some(*port),
        Address::Unix(_) => None,
    }
}

/// The instance's address, unless its flags hold one of `down`.
fn usable(fields: &HashMap<String, String>, down: &[&str]) -> Option<Address> {
    let flags = fields.get("flags").map(String::as_str).unwrap_or_default();
    if flags.split(',').any(|f| down.contains(&f)) {
        return None;
    }
    let ip = fields.get("ip")?;
    let port = fields.get("port")?.parse::<u16>().ok()?;
    Some(Address::Tcp(ip.clone(), port))
}

/// Listen to one sentinel after another, for as long as the client lives.
async fn watch(client: Weak<Sentinel>) {
    let mut index = 0usize;
    loop {
        let Some(sentinel) = client.upgrade() else { return };
        let n = sentinel.config.sentinels.len();
        let addr = sentinel.config.sentinels[index % n].clone();
        drop(sentinel);
        // Whatever ended the subscription (a dead sentinel, a protocol error), try the next.
        let _ = listen(&client, &addr).await;
        index = index.wrapping_add(1);
        tokio::time::sleep(REWATCH_AFTER).await;
    }
}

/// Subscribe to one sentinel's events and act on them until the connection ends (or the
/// client is dropped). Once subscribed, the master is asked again: a failover announced while
/// no sentinel was watched is not missed.
async fn listen(client: &Weak<Sentinel>, addr: &Address) -> Result<(), Error> {
    let (login_cmds, tls, service, connect_timeout) = {
        let s = client.upgrade().ok_or_else(|| Error::new(ErrorKind::Io, "dropped"))?;
        let login = Login {
            username: s.config.username.as_deref(),
            password: s.config.password.as_deref(),
            db: 0,
            client_name: None,
            master_only: false,
            readonly: false,
        };
        (handshake(&login), s.config.tls.clone(), s.config.service.clone(), s.config.connect_timeout)
    };
    let label = format!("redis sentinel {addr}");
    let deadline = Instant::now() + connect_timeout;
    let mut stream = aio::connect(addr, tls.as_ref(), deadline, &label).await?;
    let mut request = Vec::new();
    let mut expect = 0;
    if let Some(pipe) = login_cmds {
        expect += pipe.cmd_iter().count();
        request.extend(pipe.get_packed_pipeline());
    }
    request.extend(redis::cmd("SUBSCRIBE").arg(&EVENTS[..]).get_packed_command());
    expect += EVENTS.len();
    aio::within(deadline, &label, "subscribe", async {
        stream.write_all(&request).await.map_err(|e| aio::io_error(&label, "write", &e))
    })
    .await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut scan = <RedisWire as Wire>::Scan::default();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((frame, end)) = RedisWire::next_frame(&mut scan, &buf)? {
            buf.drain(..end);
            if let Value::ServerError(e) = &frame {
                return Err(classify(&label, &e.clone().into()));
            }
            if expect > 0 {
                expect -= 1;
                if expect == 0 {
                    // Subscribed: from here on no change is missed; catch up with any before.
                    let Some(s) = client.upgrade() else { return Ok(()) };
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(master) = s.ask_master(Instant::now() + s.config.connect_timeout * 2) {
                            let _ = s.learn(master);
                        }
                        s.forget_replicas();
                    })
                    .await;
                }
                continue;
            }
            let Some(s) = client.upgrade() else { return Ok(()) };
            on_event(&s, &service, &frame);
        }
        // Wake now and then to notice the client was dropped.
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut chunk)).await {
            Err(_) => {
                if client.strong_count() == 0 {
                    return Ok(());
                }
            }
            Ok(Ok(0)) => return Err(Error::new(ErrorKind::Io, format!("{label}: closed"))),
            Ok(Ok(n)) => {
                if buf.len() + n > 1024 * 1024 {
                    return Err(Error::new(ErrorKind::TooLarge, format!("{label}: an event past 1 MiB")));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(Err(e)) => return Err(aio::io_error(&label, "read", &e)),
        }
    }
}

/// One published event: `["message", channel, payload]`.
fn on_event(sentinel: &Sentinel, service: &str, frame: &Value) {
    let Value::Array(parts) = frame else { return };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    let [kind, channel, payload] = parts.as_slice() else { return };
    if text(kind) != "message" {
        return;
    }
    let (channel, payload) = (text(channel), text(payload));
    let words: Vec<&str> = payload.split_whitespace().collect();
    if channel == "+switch-master" {
        // <name> <old ip> <old port> <new ip> <new port>
        if let [name, _, _, ip, port] = words.as_slice()
            && *name == service
            && let Ok(port) = port.parse::<u16>()
        {
            let _ = sentinel.learn(Address::Tcp((*ip).to_owned(), port));
        }
        return;
    }
    // <type> <name> <ip> <port> [@ <master name> <ip> <port>]
    if channel == "+promoted-slave" {
        // The failover's chosen replica is a master now: writes go there from this moment,
        // not when the failover's end is announced (after the other replicas are moved).
        if let ["slave", _, ip, port, "@", name, _, _] = words.as_slice()
            && *name == service
            && let Ok(port) = port.parse::<u16>()
        {
            let _ = sentinel.learn(Address::Tcp((*ip).to_owned(), port));
        }
        return;
    }
    let concerns = match words.as_slice() {
        ["master", name, ..] | [.., "@", name, _, _] => *name == service,
        _ => false,
    };
    if concerns {
        // `master <name> <ip> <port>` is down: that address, not whichever master is known now
        // (a late event about the old one must not unseat the new one).
        if matches!(channel.as_str(), "+odown" | "+sdown")
            && let ["master", _, ip, port, ..] = words.as_slice()
            && let Ok(port) = port.parse::<u16>()
        {
            sentinel.suspect(&Address::Tcp((*ip).to_owned(), port));
        }
        sentinel.forget_replicas();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn sentinel() -> Arc<Sentinel> {
        Sentinel::new(SentinelConfig {
            sentinels: vec![Address::Tcp("127.0.0.1".into(), 1)],
            service: "mymaster".into(),
            username: None,
            password: None,
            tls: None,
            connect_timeout: Duration::from_millis(100),
        })
        .unwrap()
    }

    #[test]
    fn a_master_reported_down_is_not_taken() {
        let reply = Value::Array(
            ["name", "mymaster", "ip", "10.0.0.1", "port", "6380", "flags", "master,s_down"].map(bulk).to_vec(),
        );
        let f = fields(&reply).unwrap();
        assert_eq!(usable(&f, &["s_down", "o_down"]), None);
        let reply = Value::Array(["ip", "10.0.0.1", "port", "6380", "flags", "master"].map(bulk).to_vec());
        assert_eq!(usable(&fields(&reply).unwrap(), &["s_down"]), Some(Address::Tcp("10.0.0.1".into(), 6380)));
    }

    #[test]
    fn switch_master_moves_the_epoch_only_for_our_service() {
        let s = sentinel();
        s.learn(Address::Tcp("10.0.0.1".into(), 6379));
        let before = s.epoch();
        let event = |name: &str| {
            Value::Array(vec![
                bulk("message"),
                bulk("+switch-master"),
                bulk(&format!("{name} 10.0.0.1 6379 10.0.0.2 6380")),
            ])
        };
        on_event(&s, "mymaster", &event("other"));
        assert_eq!(s.epoch(), before);
        on_event(&s, "mymaster", &event("mymaster"));
        assert_eq!(s.epoch(), before + 1);
        assert_eq!(s.known_master(), Some(Address::Tcp("10.0.0.2".into(), 6380)));
    }

    #[test]
    fn a_late_down_event_about_the_old_master_keeps_the_new_one() {
        let s = sentinel();
        s.learn(Address::Tcp("10.0.0.2".into(), 6380));
        let down = |ip: &str, port: u16| {
            Value::Array(vec![
                bulk("message"),
                bulk("+odown"),
                bulk(&format!("master mymaster {ip} {port} #quorum 2/2")),
            ])
        };
        on_event(&s, "mymaster", &down("10.0.0.1", 6379));
        assert_eq!(s.cached(Role::Master).map(|(a, _)| a), Some(Address::Tcp("10.0.0.2".into(), 6380)));
        on_event(&s, "mymaster", &down("10.0.0.2", 6380));
        assert_eq!(s.cached(Role::Master), None);
        assert_eq!(s.known_master(), Some(Address::Tcp("10.0.0.2".into(), 6380)));
    }

    #[test]
    fn a_suspected_master_is_asked_again() {
        let s = sentinel();
        let a = Address::Tcp("10.0.0.1".into(), 6379);
        // The first master learnt moves no epoch (no connection belongs to an older one).
        let (_, epoch) = s.learn(a.clone());
        assert_eq!(epoch, 0);
        s.suspect(&Address::Tcp("10.0.0.9".into(), 6379));
        assert_eq!(s.cached(Role::Master), Some((a.clone(), epoch)));
        s.suspect(&a);
        assert_eq!(s.cached(Role::Master), None);
        // Named again: the same master, in the same epoch (its connections stay).
        assert_eq!(s.learn(a.clone()), (a.clone(), epoch));
        assert_eq!(s.cached(Role::Master), Some((a.clone(), epoch)));
        // Another one moves the epoch.
        let b = Address::Tcp("10.0.0.2".into(), 6379);
        s.suspect(&a);
        assert_eq!(s.learn(b.clone()), (b, epoch + 1));
    }

    #[test]
    fn a_failed_replica_is_passed_over_until_its_window_ends() {
        let s = sentinel();
        let (master, r1, r2) = (
            Address::Tcp("10.0.0.1".into(), 6379),
            Address::Tcp("10.0.0.2".into(), 6379),
            Address::Tcp("10.0.0.3".into(), 6379),
        );
        s.learn(master.clone());
        s.known.lock().replicas = Some(vec![r1.clone(), r2.clone()]);
        let picks = |n: usize| (0..n).map(|_| s.cached(Role::Replica).map(|(a, _)| a)).collect::<Vec<_>>();
        assert!(picks(4).contains(&Some(r1.clone())));
        s.shun(&r1, Instant::now() + Duration::from_millis(150));
        assert!(s.has_usable_replica());
        assert_eq!(picks(4), vec![Some(r2.clone()); 4]);
        // Every replica passed over: reads go to the master, and the pool may be marked down.
        s.shun(&r2, Instant::now() + Duration::from_millis(150));
        assert!(!s.has_usable_replica());
        assert_eq!(picks(2), vec![Some(master); 2]);
        std::thread::sleep(Duration::from_millis(200));
        assert!(s.has_usable_replica());
        let back = picks(4);
        assert!(back.contains(&Some(r1)) && back.contains(&Some(r2)));
    }

    #[test]
    fn a_replica_list_no_sentinel_gave_is_not_kept() {
        let s = sentinel();
        let master = Address::Tcp("10.0.0.1".into(), 6379);
        s.learn(master.clone());
        // The only sentinel refuses: this connection goes to the master, the next asks again.
        let (got, _) = s.replica(Instant::now() + Duration::from_millis(500)).unwrap();
        assert_eq!(got, master);
        assert_eq!(s.cached(Role::Replica), None);
    }
}
