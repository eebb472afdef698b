//! TLS for the network clients, with rustls (no OpenSSL): the settings redis-py users write
//! (`ssl_cert_reqs`, `ssl_ca_certs`, `ssl_ca_path`, `ssl_ca_data`, `ssl_certfile`, `ssl_keyfile`,
//! `ssl_check_hostname`, `ssl_min_version`) made into one shared client configuration.
//!
//! The handshake and every record go through [`super::Stream`], under the call's deadline like
//! any other byte.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, ErrorKind};

/// How much of the server's certificate is checked (redis-py's `ssl_cert_reqs` and
/// `ssl_check_hostname`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Nothing (`ssl_cert_reqs="none"`): the link is encrypted, the server unauthenticated.
    Nothing,
    /// The chain up to a trusted CA, not the name (`ssl_check_hostname=False`).
    Chain,
    /// The chain and that the certificate names the host connected to.
    ChainAndName,
}

/// What a site configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// How much to verify.
    pub verify: Verify,
    /// A PEM file of trusted CA certificates (`ssl_ca_certs`).
    pub ca_certs: Option<PathBuf>,
    /// A directory of PEM CA certificates (`ssl_ca_path`).
    pub ca_path: Option<PathBuf>,
    /// PEM CA certificates given inline (`ssl_ca_data`).
    pub ca_data: Option<String>,
    /// The client's certificate chain, for mutual TLS (`ssl_certfile`).
    pub certfile: Option<PathBuf>,
    /// The client's private key (`ssl_keyfile`; absent: read from `certfile`).
    pub keyfile: Option<PathBuf>,
    /// TLS 1.3 only (`ssl_min_version=TLSVersion.TLSv1_3`); otherwise 1.2 and 1.3.
    pub tls13_only: bool,
}

/// A ready client configuration, shared by every connection of the servers that use it.
#[derive(Debug, Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
}

fn config_error(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Config, format!("TLS {what}: {detail}"))
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| config_error(what, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(what, format!("{}: no PEM certificate in the file", path.display())));
    }
    Ok(certs)
}

fn roots(settings: &TlsSettings) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    let mut add = |certs: Vec<CertificateDer<'static>>, what: &str| -> Result<(), Error> {
        for cert in certs {
            store.add(cert).map_err(|e| config_error(what, e))?;
        }
        Ok(())
    };
    let mut given = false;
    if let Some(path) = &settings.ca_certs {
        add(read_certs(path, "ssl_ca_certs")?, "ssl_ca_certs")?;
        given = true;
    }
    if let Some(dir) = &settings.ca_path {
        let entries =
            std::fs::read_dir(dir).map_err(|e| config_error("ssl_ca_path", format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // Like OpenSSL's CApath: every file that holds PEM certificates; others are skipped.
            if path.is_file()
                && let Ok(certs) = CertificateDer::pem_file_iter(&path).and_then(Iterator::collect::<Result<Vec<_>, _>>)
            {
                add(certs, "ssl_ca_path")?;
            }
        }
        given = true;
    }
    if let Some(data) = &settings.ca_data {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(data.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| config_error("ssl_ca_data", e))?;
        add(certs, "ssl_ca_data")?;
        given = true;
    }
    if !given {
        // No CA named: the system's, as Python's ssl module loads its default paths.
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = store.add(cert);
        }
    }
    if store.is_empty() && given {
        return Err(config_error("verification", "the CA files hold no usable certificate"));
    }
    // An empty system store trusts no server: every handshake fails as an unknown issuer, as
    // with Python's ssl module.
    Ok(store)
}

/// Checks the chain but not the name: rustls checks the chain first, so a name mismatch is
/// only reported for a chain that is trusted.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate (`ssl_cert_reqs="none"`), or none at all (no CA was named and the
/// system has none: every handshake fails as an unknown issuer, as with Python's ssl module).
/// Either way the server's handshake signatures are checked against the key it sent.
#[derive(Debug)]
struct Anything {
    algorithms: WebPkiSupportedAlgorithms,
    trust: bool,
}

impl ServerCertVerifier for Anything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.trust {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl Tls {
    /// Read the files `settings` names and make the configuration. A file that is missing or
    /// holds no usable certificate or key is a `Config` error naming the setting.
    pub fn new(settings: &TlsSettings) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match settings.verify {
            Verify::Nothing => {
                Arc::new(Anything { algorithms: provider.signature_verification_algorithms, trust: true })
            }
            verify => {
                let store = roots(settings)?;
                if store.is_empty() {
                    Arc::new(Anything { algorithms: provider.signature_verification_algorithms, trust: false })
                } else {
                    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()
                        .map_err(|e| config_error("verification", e))?;
                    if verify == Verify::Chain { Arc::new(ChainOnly(webpki)) } else { webpki }
                }
            }
        };
        let versions: &[&rustls::SupportedProtocolVersion] =
            if settings.tls13_only { &[&rustls::version::TLS13] } else { rustls::ALL_VERSIONS };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| config_error("versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&settings.certfile, &settings.keyfile) {
            (None, None) => builder.with_no_client_auth(),
            (None, Some(_)) => return Err(config_error("ssl_keyfile", "needs ssl_certfile as well")),
            (Some(certfile), keyfile) => {
                let chain = read_certs(certfile, "ssl_certfile")?;
                let (key_path, what) =
                    keyfile.as_ref().map_or((certfile, "ssl_certfile (no ssl_keyfile)"), |k| (k, "ssl_keyfile"));
                let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                    config_error(
                        what,
                        format!("{}: no usable private key (an unencrypted PEM key): {e}", key_path.display()),
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| config_error("ssl_certfile/ssl_keyfile", e))?
            }
        };
        Ok(Self { config: Arc::new(config) })
    }

    /// A client session for `host`, the name the certificate must carry (a DNS name or an IP
    /// address).
    pub fn session(&self, host: &str, label: &str) -> Result<rustls::ClientConnection, Error> {
        rustls::ClientConnection::new(self.config.clone(), self.server_name(host, label)?)
            .map_err(|e| Error::new(ErrorKind::Tls, format!("{label}: TLS: {e}")))
    }

    /// The name the server's certificate must carry for `host` (a DNS name or an IP address).
    pub fn server_name(&self, host: &str, label: &str) -> Result<ServerName<'static>, Error> {
        ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
            .map_err(|e| Error::new(ErrorKind::Config, format!("{label}: TLS server name {host:?}: {e}")))
    }

    /// The client configuration (for the async streams).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// A rustls error as ours, with what a site can do about the common ones.
pub fn tls_error(label: &str, e: &rustls::Error) -> Error {
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by a trusted CA: set ssl_ca_certs to the CA that signed it)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            " (the certificate does not name this host: connect by a name it carries, or set ssl_check_hostname=False)"
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            " (the server's certificate has expired)"
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            " (the server wants a client certificate: set ssl_certfile and ssl_keyfile)"
        }
        _ => "",
    };
    Error::new(ErrorKind::Tls, format!("{label}: TLS handshake failed: {e}{hint}"))
}
