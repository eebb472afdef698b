//! The one error type of the pure cores, shaped like redis-rs's: a kind plus a message.
//! `bindings::errors` turns it into a Python exception, in one place; nothing downstream looks
//! at the message to decide anything.

use std::fmt;

/// What went wrong, coarse enough for callers to decide on a policy (retry, miss, raise).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A key a backend must refuse (too long, control characters, ...).
    InvalidKey,
    /// A setting that cannot work (no server, an unparsable address, a bad number).
    Config,
    /// A key that is not in the store (Django's `incr` on a missing key).
    NotFound,
    /// A stored value that is not an integer, where one is needed (`incr`).
    NotNumeric,
    /// A value larger than a bound (a server's item limit, the reply size limit).
    TooLarge,
    /// A socket or file operation failed.
    Io,
    /// A deadline passed.
    Timeout,
    /// A TLS handshake or record failed (an untrusted certificate, a name mismatch, an alert).
    Tls,
    /// A peer answered something the protocol does not allow.
    Protocol,
    /// A peer answered with an error of its own.
    Server,
    /// A server is marked down after a failure: the call was not attempted.
    ServerDown,
    /// A Redis Cluster node does not serve the key's slot: MOVED (the slot has a new owner,
    /// [`Error::redirect`] says which) or ASK (it is being migrated there: ask once, with ASKING).
    Redirect,
    /// A Redis Cluster cannot serve the call now (TRYAGAIN during a migration, CLUSTERDOWN,
    /// MASTERDOWN): nothing was applied; the same call may work a moment later.
    ClusterBusy,
    /// The server refuses what a setting needs (client-side caching on a server without
    /// tracking): the settings cannot work with this server.
    Unsupported,
    /// A signal handler raised while the call waited (Ctrl-C): the caller's own exception is
    /// raised in its place by the bindings.
    Interrupted,
}

/// Where a Redis Cluster node sent a call (MOVED or ASK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// ASK (once, for a slot being migrated) rather than MOVED (for good).
    pub ask: bool,
    /// The key's hash slot.
    pub slot: u16,
    /// The node to ask, `host:port`.
    pub address: String,
}

/// An error of the pure cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    redirect: Option<Box<Redirect>>,
}

impl Error {
    /// An error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), redirect: None }
    }

    /// A Redis Cluster redirection (kind `Redirect`).
    pub fn redirected(message: impl Into<String>, redirect: Redirect) -> Self {
        Self { kind: ErrorKind::Redirect, message: message.into(), redirect: Some(Box::new(redirect)) }
    }

    /// Where a `Redirect` error sends the call.
    pub fn redirect(&self) -> Option<&Redirect> {
        self.redirect.as_deref()
    }

    /// The kind of the error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the failure leaves a connection unusable and says something about the server
    /// (so it counts against the server's health): I/O, deadlines, protocol violations.
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Tls | ErrorKind::Protocol | ErrorKind::TooLarge
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        };
        Self::new(kind, e.to_string())
    }
}
