//! TLS setup for both STARTTLS and implicit TLS.
//!
//! Both modes trust the Mozilla roots from `webpki-roots` plus the
//! certificates in `ca_file`, and both check the server name. With
//! `accept_invalid_certs` they skip the certificate chain check but still
//! check the name, as lettre's `dangerous_accept_invalid_certs` does.
//!
//! STARTTLS goes through lettre's [`TlsParameters`]. Implicit TLS cannot,
//! because lettre reads the greeting as soon as it gets a stream, so this
//! module performs the handshake with tokio-rustls and hands lettre the
//! encrypted stream as a [`TlsTokioStream`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lettre::transport::smtp::client::{AsyncTokioStream, Certificate, TlsParameters};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::config::{ConfigError, SmtpConfig, TlsMode};

/// TLS material prepared once when the sender is built.
#[derive(Clone)]
pub(crate) enum TlsSetup {
    /// No encryption.
    None,
    /// STARTTLS with lettre's parameters.
    Starttls(TlsParameters),
    /// Implicit TLS with our own rustls configuration.
    Implicit {
        connector: tokio_rustls::TlsConnector,
        server_name: ServerName<'static>,
    },
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            TlsSetup::None => "None",
            TlsSetup::Starttls(_) => "Starttls",
            TlsSetup::Implicit { .. } => "Implicit",
        };
        f.write_str(name)
    }
}

impl TlsSetup {
    /// Builds the TLS material for `config`, reading `ca_file` if set.
    pub(crate) fn new(config: &SmtpConfig, host: &str) -> Result<Self, ConfigError> {
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|error| {
                ConfigError::new(
                    "ca_file",
                    format!("cannot read {}: {error}; check the path", path.display()),
                )
            })?),
            None => None,
        };

        match config.tls {
            TlsMode::None => Ok(TlsSetup::None),
            TlsMode::Starttls => {
                let mut builder = TlsParameters::builder(host.to_owned())
                    .dangerous_accept_invalid_certs(config.accept_invalid_certs);
                if let Some(pem) = &ca_pem {
                    let certificate = Certificate::from_pem(pem).map_err(|_| invalid_ca_file())?;
                    builder = builder.add_root_certificate(certificate);
                }
                let parameters = builder.build_rustls().map_err(|error| {
                    ConfigError::new("tls", format!("cannot set up STARTTLS: {error}"))
                })?;
                Ok(TlsSetup::Starttls(parameters))
            }
            TlsMode::Tls => {
                let client_config =
                    implicit_client_config(ca_pem.as_deref(), config.accept_invalid_certs)?;
                let server_name = ServerName::try_from(host.to_owned()).map_err(|_| {
                    ConfigError::new("host", "is not a valid DNS name or IP address for TLS")
                })?;
                Ok(TlsSetup::Implicit {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(client_config)),
                    server_name,
                })
            }
        }
    }
}

fn invalid_ca_file() -> ConfigError {
    ConfigError::new(
        "ca_file",
        "does not contain valid PEM certificates; point it to a PEM CA bundle",
    )
}

fn implicit_client_config(
    ca_pem: Option<&[u8]>,
    accept_invalid_certs: bool,
) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid_ca_file())?;
        if certificates.is_empty() {
            return Err(invalid_ca_file());
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|_| invalid_ca_file())?;
        }
    }

    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| ConfigError::new("tls", format!("cannot set up TLS: {error}")))?;
    let client_config = if accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameOnlyVerifier { provider }))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(client_config)
}

/// Certificate verifier for `accept_invalid_certs`: checks the server name and
/// the handshake signatures but not the certificate chain.
#[derive(Debug)]
struct NameOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NameOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&certificate, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Implicit-TLS stream handed to lettre, which accepts any
/// [`AsyncTokioStream`].
pub(crate) struct TlsTokioStream(pub(crate) tokio_rustls::client::TlsStream<TcpStream>);

impl fmt::Debug for TlsTokioStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsTokioStream")
            .field(&self.0.get_ref().0)
            .finish()
    }
}

impl AsyncRead for TlsTokioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsTokioStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsTokioStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}
