//! The TLS acceptor for `--amqps-listen` (rustls; TLS 1.2 and 1.3), from
//! `--tls-cert`, `--tls-key` and, for client certificates, `--tls-ca` /
//! `--tls-verify-peer`.

use std::sync::Arc;

use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use warren_node::config::Config;
use warren_node::pem::{certificates, private_key, PemError};

/// Why the TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--amqps-listen needs --tls-cert and --tls-key")]
    MissingCertOrKey,
    #[error("--tls-verify-peer needs --tls-ca")]
    VerifyWithoutCa,
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{what}: {source}")]
    Rustls { what: String, source: rustls::Error },
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The acceptor for `--amqps-listen`.
pub fn acceptor(config: &Config) -> Result<TlsAcceptor, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Err(TlsError::MissingCertOrKey);
    };
    let chain = certificates(cert)?;
    let key = private_key(key)?;
    let rustls = |what: &str| {
        let what = what.to_owned();
        move |source| TlsError::Rustls { what, source }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls("TLS protocol versions"))?;
    let builder = match &config.tls_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(rustls(&format!("bad CA certificate in {}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.tls_verify_peer { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build()?)
        }
        None if config.tls_verify_peer => return Err(TlsError::VerifyWithoutCa),
        None => builder.with_no_client_auth(),
    };
    let server = builder.with_single_cert(chain, key).map_err(rustls("certificate and key do not match"))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
