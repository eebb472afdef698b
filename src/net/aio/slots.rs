//! A few multiplexed connections per server, shared by every call in flight.

use std::sync::Arc;

use parking_lot::Mutex;

use super::mux::{Mux, Wire};
use crate::error::Error;
use crate::net::Address;

/// A connection is shared with more callers before another one is opened until this many
/// requests are in flight on it.
const SHARE_UP_TO: usize = 32;

struct Slot<W: Wire> {
    conn: Mutex<Option<Arc<Mux<W>>>>,
    /// Held while the slot connects: one connect at a time, the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// The multiplexed connections to one server: a few slots, each empty or holding a connection.
/// A call takes the least busy connection; another slot is connected only when every open one
/// is busy, so a quiet site keeps one connection per server.
pub struct Slots<W: Wire> {
    slots: Vec<Slot<W>>,
    /// The process the slots were made in (see [`Slots::let_go`]).
    pid: u32,
}

impl<W: Wire> Slots<W> {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1))
                .map(|_| Slot { conn: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) })
                .collect(),
            pid: std::process::id(),
        }
    }

    /// Let go of a connection. In a forked child a parent's connection is leaked, never
    /// dropped: dropping it wakes its tasks on the parent's runtime, whose threads are not in
    /// the child but whose locks may have been held at the fork (the child hung there), and
    /// takes its socket out of the reactor the child shares with the parent.
    fn let_go(&self, conn: Option<Arc<Mux<W>>>) {
        if self.pid != std::process::id() {
            std::mem::forget(conn);
        }
    }

    /// The least busy working connection, and the first empty slot (when there is one).
    fn pick(&self) -> (Option<Arc<Mux<W>>>, Option<usize>) {
        let mut best: Option<(usize, Arc<Mux<W>>)> = None;
        let mut empty = None;
        for (i, slot) in self.slots.iter().enumerate() {
            match slot.conn.lock().as_ref() {
                Some(c) if c.is_alive() => {
                    let load = c.in_flight();
                    if best.as_ref().is_none_or(|(l, _)| load < *l) {
                        best = Some((load, c.clone()));
                    }
                }
                _ => {
                    empty.get_or_insert(i);
                }
            }
        }
        match (best, empty) {
            (Some((load, _)), Some(i)) if load >= SHARE_UP_TO => (None, Some(i)),
            (best, empty) => (best.map(|(_, c)| c), empty),
        }
    }

    /// A working connection with room for a request, if one is open (no waiting).
    pub fn ready(&self) -> Option<Arc<Mux<W>>> {
        self.pick().0.filter(|c| c.has_room())
    }

    /// A working connection, made with `connect` when the slot chosen has none.
    pub async fn get<F, Fut>(&self, connect: F) -> Result<Arc<Mux<W>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Mux<W>, Error>>,
    {
        let index = match self.pick() {
            (Some(c), _) => return Ok(c),
            (None, Some(i)) => i,
            (None, None) => 0,
        };
        let slot = &self.slots[index];
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.conn.lock().as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let made = Arc::new(connect().await?);
        let old = slot.conn.lock().replace(made.clone());
        self.let_go(old);
        Ok(made)
    }

    /// Forget `conn` (it failed): its slot connects anew on next use.
    pub fn forget(&self, conn: &Arc<Mux<W>>) {
        for slot in &self.slots {
            let mut held = slot.conn.lock();
            if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                self.let_go(held.take());
            }
        }
    }

    /// Forget the connections to `peer` (it failed); calls in flight on them finish there.
    pub fn forget_peer(&self, peer: &Address) {
        for slot in &self.slots {
            let mut held = slot.conn.lock();
            if held.as_ref().is_some_and(|c| c.peer.as_ref() == Some(peer)) {
                self.let_go(held.take());
            }
        }
    }

    /// Forget every connection (their server is not the one to talk to any more); calls in
    /// flight on them finish there.
    pub fn clear(&self) {
        for slot in &self.slots {
            let old = slot.conn.lock().take();
            self.let_go(old);
        }
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.lock().as_ref().is_some_and(|c| c.is_alive())).count()
    }
}

impl<W: Wire> Drop for Slots<W> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let held = slot.conn.lock().take();
            self.let_go(held);
        }
    }
}
