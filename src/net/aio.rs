//! The async side of the network clients: one process-wide I/O runtime, streams connected
//! (and TLS handshaken) under a deadline, and a multiplexed connection that carries many
//! requests at once, its replies matched to them in order.
//!
//! The runtime is a small tokio runtime made on first use. A forked child cannot use its
//! parent's (the worker threads do not exist there), so the runtime is made again in a child
//! and the parent's is left alone, never dropped: dropping it would wait for threads that are
//! gone.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use super::tls::{Tls, tls_error};
use super::{Address, SLICE};
use crate::error::{Error, ErrorKind};

/// The runtime of this process, and the process it was made in.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// How many I/O threads the runtime has: `DJANGO_RUSTCACHE_IO_THREADS` (1 to 8), else 1. One
/// thread carries thousands of calls in flight; the work per call is a few microseconds.
fn io_threads() -> usize {
    std::env::var("DJANGO_RUSTCACHE_IO_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, 8))
}

/// The process's I/O runtime, made now if this process has none yet (the first async call, or
/// the first after a fork).
pub fn runtime() -> Result<Handle, Error> {
    let mut slot = RUNTIME.lock();
    let pid = std::process::id();
    if let Some((made_in, rt)) = *slot
        && made_in == pid
    {
        return Ok(rt.handle().clone());
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(io_threads())
        .max_blocking_threads(8)
        .thread_name("django-rustcache-io")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot start the I/O runtime: {e}")))?;
    // Kept for the life of the process (a parent's, in a child, is never dropped: see above).
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt.handle().clone())
}

/// `fut`, or a `Timeout` naming `label` and `what` once `deadline` passes.
pub async fn within<T>(
    deadline: Instant,
    label: &str,
    what: &str,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(ErrorKind::Timeout, format!("{label}: {what}: timed out"))),
    }
}

/// A connected stream, plain or under TLS.
pub enum AsyncStream {
    /// TCP, with TCP_NODELAY.
    Tcp(TcpStream),
    /// A unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    TlsTcp(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS over a unix socket.
    TlsUnix(Box<tokio_rustls::client::TlsStream<UnixStream>>),
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            AsyncStream::Tcp($s) => $e,
            AsyncStream::Unix($s) => $e,
            AsyncStream::TlsTcp($s) => $e,
            AsyncStream::TlsUnix($s) => $e,
        }
    };
}

impl AsyncRead for AsyncStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

fn io_error(label: &str, what: &str, e: &std::io::Error) -> Error {
    let kind = if e.kind() == std::io::ErrorKind::TimedOut { ErrorKind::Timeout } else { ErrorKind::Io };
    Error::new(kind, format!("{label}: {what}: {e}"))
}

/// A failed handshake as ours: rustls's own error (with its hints) where there is one.
fn handshake_error(label: &str, e: &std::io::Error) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls_error(label, tls),
        None => io_error(label, "TLS handshake", e),
    }
}

async fn tls_over<S>(tls: &Tls, host: &str, label: &str, io: S) -> Result<tokio_rustls::client::TlsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = tls.server_name(host, label)?;
    tokio_rustls::TlsConnector::from(tls.config()).connect(name, io).await.map_err(|e| handshake_error(label, &e))
}

/// Connect to `addr`, then (with `tls`) complete a TLS handshake, all before `deadline`.
pub async fn connect(addr: &Address, tls: Option<&Tls>, deadline: Instant, label: &str) -> Result<AsyncStream, Error> {
    within(deadline, label, "connect", async {
        match addr {
            Address::Tcp(host, port) => {
                let tcp =
                    TcpStream::connect((host.as_str(), *port)).await.map_err(|e| io_error(label, "connect", &e))?;
                tcp.set_nodelay(true).map_err(|e| io_error(label, "TCP_NODELAY", &e))?;
                Ok(match tls {
                    None => AsyncStream::Tcp(tcp),
                    Some(tls) => AsyncStream::TlsTcp(Box::new(tls_over(tls, host, label, tcp).await?)),
                })
            }
            Address::Unix(path) => {
                let unix = UnixStream::connect(Path::new(path)).await.map_err(|e| io_error(label, "connect", &e))?;
                Ok(match tls {
                    None => AsyncStream::Unix(unix),
                    // TLS over a unix socket: the certificate can only name the local host.
                    Some(tls) => AsyncStream::TlsUnix(Box::new(tls_over(tls, "localhost", label, unix).await?)),
                })
            }
        }
    })
    .await
}

/// How a protocol's replies are cut from the bytes a connection reads, and which of them end
/// the answer to one request.
pub trait Wire: Send + Sync + 'static {
    /// One reply frame (a redis value, a memcached reply line with its data).
    type Frame: Send + 'static;
    /// What a request waits for (how many replies, or up to which one).
    type Expect: Send + 'static;
    /// What the connection remembers between reads while a frame is incomplete.
    type Scan: Default + Send + 'static;

    /// The first whole frame of `buf` and the bytes it took; `None` until it has all arrived;
    /// an error (a hostile length, an unparsable reply) drops the connection.
    fn next_frame(scan: &mut Self::Scan, buf: &[u8]) -> Result<Option<(Self::Frame, usize)>, Error>;

    /// Whether `frame`, after `seen` frames of the same answer, is its last.
    fn is_last(expect: &Self::Expect, frame: &Self::Frame, seen: usize) -> bool;

    /// How many bytes the frame starting `buf` will take, when its header tells (room is
    /// reserved for it at once, up to a bound).
    fn frame_len(buf: &[u8]) -> Option<usize> {
        let _ = buf;
        None
    }
}

/// A request's answer: its frames, or the error that ended the connection first.
pub type Answer<W> = Result<Vec<<W as Wire>::Frame>, Error>;

struct Request<W: Wire> {
    bytes: Vec<u8>,
    expect: W::Expect,
    reply: oneshot::Sender<Answer<W>>,
    permit: OwnedSemaphorePermit,
}

struct Pending<W: Wire> {
    expect: W::Expect,
    reply: oneshot::Sender<Answer<W>>,
    frames: Vec<W::Frame>,
    _permit: OwnedSemaphorePermit,
}

/// What both halves of a connection share: why it ended, once it has.
struct Shared {
    ended: Mutex<Option<Error>>,
    dead: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn end(&self, e: Error) {
        let mut ended = self.ended.lock();
        if ended.is_none() {
            *ended = Some(e);
        }
        drop(ended);
        self.dead.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }

    fn error(&self, label: &str) -> Error {
        self.ended.lock().clone().unwrap_or_else(|| Error::new(ErrorKind::Io, format!("{label}: connection closed")))
    }
}

/// The most requests written and still waiting for their replies on one connection; a caller
/// past it waits (within its deadline) for one to be answered.
pub const MAX_IN_FLIGHT: usize = 512;

/// Room reserved at most for a frame whose header announces its length; past it the buffer
/// grows as the bytes come.
const MAX_RESERVE: usize = 16 * 1024 * 1024;

/// Small requests are gathered into one write up to this much.
const GATHER: usize = 64 * 1024;

/// A multiplexed connection: requests are written in the order they are sent and their replies
/// matched in that order by a reader of their own. A request whose caller gave up (cancelled,
/// timed out) still has its reply read, and dropped: a reply never goes to another request.
pub struct Mux<W: Wire> {
    tx: mpsc::Sender<Request<W>>,
    room: Arc<Semaphore>,
    shared: Arc<Shared>,
    label: String,
    /// When the connection was made (a request that started before is on a connection that
    /// may have gone stale since).
    pub made: Instant,
}

impl<W: Wire> Mux<W> {
    /// Start the connection's writer and reader on the runtime.
    pub fn start(stream: AsyncStream, label: &str, handle: &Handle) -> Self {
        let (tx, rx) = mpsc::channel::<Request<W>>(MAX_IN_FLIGHT);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending<W>>();
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Shared { ended: Mutex::new(None), dead: AtomicBool::new(false), stop });
        let (read, write) = tokio::io::split(stream);
        handle.spawn(write_loop::<W>(write, rx, pending_tx, shared.clone(), stopped.clone(), label.to_owned()));
        handle.spawn(read_loop::<W>(read, pending_rx, shared.clone(), stopped, label.to_owned()));
        Self {
            tx,
            room: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            shared,
            label: label.to_owned(),
            made: Instant::now(),
        }
    }

    /// Whether the connection still works (it has not failed, nor been closed).
    pub fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::Acquire)
    }

    /// Close the connection: every request still on it gets `e`.
    pub fn kill(&self, e: Error) {
        self.shared.end(e);
    }

    /// Send one request and wait for its answer: `expect` says which replies are its. The
    /// caller bounds the wait (a deadline); if it gives up, the reply is still read and dropped.
    pub async fn call(&self, bytes: Vec<u8>, expect: W::Expect) -> Answer<W> {
        let permit = self.room.clone().acquire_owned().await.map_err(|_| self.shared.error(&self.label))?;
        let (reply, answer) = oneshot::channel();
        if !self.is_alive() {
            return Err(self.shared.error(&self.label));
        }
        self.tx.send(Request { bytes, expect, reply, permit }).await.map_err(|_| self.shared.error(&self.label))?;
        answer.await.unwrap_or_else(|_| Err(self.shared.error(&self.label)))
    }
}

impl<W: Wire> Drop for Mux<W> {
    fn drop(&mut self) {
        // Nobody can send any more: the writer ends once it has written what it holds, and the
        // reader once the last reply is in.
        self.room.close();
    }
}

async fn write_loop<W: Wire>(
    mut write: WriteHalf<AsyncStream>,
    mut rx: mpsc::Receiver<Request<W>>,
    pending: mpsc::UnboundedSender<Pending<W>>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    label: String,
) {
    let mut gathered: Vec<u8> = Vec::with_capacity(GATHER);
    loop {
        let first = tokio::select! {
            request = rx.recv() => match request {
                Some(r) => r,
                None => break,
            },
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        let mut batch = vec![first];
        let mut size = batch[0].bytes.len();
        while size < GATHER
            && let Ok(next) = rx.try_recv()
        {
            size += next.bytes.len();
            batch.push(next);
        }
        // Each request is known to the reader before its bytes can reach the server.
        let mut large = Vec::new();
        for Request { bytes, expect, reply, permit } in batch {
            if pending.send(Pending { expect, reply, frames: Vec::new(), _permit: permit }).is_err() {
                return;
            }
            if bytes.len() >= GATHER {
                large.push(bytes);
            } else {
                gathered.extend_from_slice(&bytes);
            }
            // Order is kept: a large request after small ones waits for them.
            for big in large.drain(..) {
                if !gathered.is_empty() {
                    if let Err(e) = write.write_all(&gathered).await {
                        shared.end(io_error(&label, "send", &e));
                        return;
                    }
                    gathered.clear();
                }
                if let Err(e) = write.write_all(&big).await {
                    shared.end(io_error(&label, "send", &e));
                    return;
                }
            }
        }
        if !gathered.is_empty() {
            if let Err(e) = write.write_all(&gathered).await {
                shared.end(io_error(&label, "send", &e));
                return;
            }
            gathered.clear();
        }
        if gathered.capacity() > 4 * GATHER {
            gathered = Vec::with_capacity(GATHER);
        }
        if let Err(e) = write.flush().await {
            shared.end(io_error(&label, "send", &e));
            return;
        }
    }
    // Closed from our side, or ended: TLS says goodbye; a failure here changes nothing.
    let _ = tokio::time::timeout(SLICE, write.shutdown()).await;
}

async fn read_loop<W: Wire>(
    mut read: ReadHalf<AsyncStream>,
    mut incoming: mpsc::UnboundedReceiver<Pending<W>>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    label: String,
) {
    let mut queue: VecDeque<Pending<W>> = VecDeque::new();
    let mut scan = W::Scan::default();
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0usize;
    let mut writer_done = false;
    let failure = 'run: loop {
        // Every whole frame read so far goes to the request it answers.
        while start < buf.len() {
            let (frame, used) = match W::next_frame(&mut scan, &buf[start..]) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(e) => break 'run e,
            };
            start += used;
            while let Ok(p) = incoming.try_recv() {
                queue.push_back(p);
            }
            let Some(head) = queue.front_mut() else {
                break 'run Error::new(ErrorKind::Protocol, format!("{label}: a reply to no request"));
            };
            let last = W::is_last(&head.expect, &frame, head.frames.len());
            head.frames.push(frame);
            if last && let Some(done) = queue.pop_front() {
                // A caller that gave up is gone: its reply is dropped here.
                let _ = done.reply.send(Ok(done.frames));
            }
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
            if buf.capacity() > 4 * 1024 * 1024 {
                buf = Vec::with_capacity(16 * 1024);
            }
        } else if start > 0 && (start > buf.len() / 2 || buf.capacity() - buf.len() < 4096) {
            buf.drain(..start);
            start = 0;
        }
        if let Some(total) = W::frame_len(&buf[start..]) {
            let want = total.min(MAX_RESERVE).saturating_sub(buf.len() - start);
            buf.reserve(want);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if writer_done && queue.is_empty() {
            while let Ok(p) = incoming.try_recv() {
                queue.push_back(p);
            }
            if queue.is_empty() {
                return;
            }
        }
        tokio::select! {
            biased;
            _ = stopped.wait_for(|stop| *stop) => break 'run shared.error(&label),
            p = incoming.recv(), if !writer_done => match p {
                Some(p) => queue.push_back(p),
                None => writer_done = true,
            },
            n = read.read_buf(&mut buf) => match n {
                Ok(0) => break 'run Error::new(ErrorKind::Io, format!("{label}: the server closed the connection")),
                Ok(_) => {}
                Err(e) => break 'run io_error(&label, "receive", &e),
            },
        }
    };
    shared.end(failure.clone());
    let failure = shared.error(&label);
    incoming.close();
    while let Ok(p) = incoming.try_recv() {
        queue.push_back(p);
    }
    for p in queue {
        let _ = p.reply.send(Err(failure.clone()));
    }
}

impl<W: Wire> Mux<W> {
    /// Requests written (or queued) and not yet answered.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.room.available_permits()
    }
}

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
}

impl<W: Wire> Slots<W> {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n.max(1))
                .map(|_| Slot { conn: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) })
                .collect(),
        }
    }

    /// A working connection, made with `connect` when the slot chosen has none.
    pub async fn get<F, Fut>(&self, connect: F) -> Result<Arc<Mux<W>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Mux<W>, Error>>,
    {
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
        let index = match (best, empty) {
            (Some((load, _)), Some(i)) if load >= SHARE_UP_TO => i,
            (Some((_, c)), _) => return Ok(c),
            (None, Some(i)) => i,
            (None, None) => 0,
        };
        let slot = &self.slots[index];
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.conn.lock().as_ref().filter(|c| c.is_alive()) {
            return Ok(c.clone());
        }
        let made = Arc::new(connect().await?);
        *slot.conn.lock() = Some(made.clone());
        Ok(made)
    }

    /// Forget `conn` (it failed): its slot connects anew on next use.
    pub fn forget(&self, conn: &Arc<Mux<W>>) {
        for slot in &self.slots {
            let mut held = slot.conn.lock();
            if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *held = None;
            }
        }
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.lock().as_ref().is_some_and(|c| c.is_alive())).count()
    }
}
