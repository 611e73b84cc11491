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

/// The user name a verified client certificate (DER) logs in as with SASL
/// EXTERNAL, as RabbitMQ's `ssl_cert_login_from` takes it from the
/// subject: `common_name`, its (first) CN; `distinguished_name`, the whole
/// subject in RFC 4514 form (last RDN first, `,` between them, `+` within
/// one, short names for the usual attribute types, dotted OIDs for the
/// rest). None if the certificate does not parse or has no such name.
pub fn login_name(der: &[u8], from: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    if from == "common_name" {
        return subject.iter_common_name().next()?.as_str().ok().map(str::to_owned);
    }
    let mut rdns = Vec::new();
    for rdn in subject.iter() {
        let mut parts = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let name = match oid.as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.6" => "C",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.9" => "STREET",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "0.9.2342.19200300.100.1.25" => "DC",
                "0.9.2342.19200300.100.1.1" => "UID",
                other => other,
            };
            parts.push(format!("{name}={}", rfc4514_escape(attr.as_str().ok()?)));
        }
        rdns.push(parts.join("+"));
    }
    (!rdns.is_empty()).then(|| rdns.iter().rev().cloned().collect::<Vec<_>>().join(","))
}

/// An attribute value escaped as RFC 4514 asks.
fn rfc4514_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_as_rfc_4514_asks() {
        assert_eq!(rfc4514_escape("alice"), "alice");
        assert_eq!(rfc4514_escape("Testing cert #1"), "Testing cert #1");
        assert_eq!(rfc4514_escape("#1"), "\\#1");
        assert_eq!(rfc4514_escape(" a, b+c "), "\\ a\\, b\\+c\\ ");
        assert_eq!(rfc4514_escape("x\"<>;\\"), "x\\\"\\<\\>\\;\\\\");
        assert_eq!(rfc4514_escape("é"), "é");
    }

    #[test]
    fn a_certificate_that_does_not_parse_names_no_user() {
        assert_eq!(login_name(b"not DER", "common_name"), None);
        assert_eq!(login_name(&[], "distinguished_name"), None);
    }
}
