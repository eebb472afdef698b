//! Streams connected (and TLS handshaken) under a deadline.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::runtime::within;
use crate::error::{Error, ErrorKind};
use crate::net::Address;
use crate::net::tls::{Tls, tls_error};

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

pub fn io_error(label: &str, what: &str, e: &std::io::Error) -> Error {
    // TLS 1.3 servers refuse a client certificate after the handshake: the alert comes with the
    // first read, and is a TLS error like the handshake's own.
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return tls_error(label, tls);
    }
    let kind = if e.kind() == std::io::ErrorKind::TimedOut { ErrorKind::Timeout } else { ErrorKind::Io };
    Error::new(kind, format!("{label}: {what}: {e}"))
}

/// A failed handshake as ours: rustls's own error (with its hints) where there is one.
fn handshake_error(label: &str, e: &std::io::Error) -> Error {
    io_error(label, "TLS handshake", e)
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
