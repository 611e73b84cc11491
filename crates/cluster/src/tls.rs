//! Mutual TLS between the nodes of a cluster (`--cluster-tls-cert`,
//! `--cluster-tls-key`, `--cluster-tls-ca`): every link to the cluster
//! listener — replication and clients proxied by a follower — is inside
//! TLS, and each side checks the other's certificate: it must chain to the
//! cluster's CA and name (as a SAN DNS name) the node the other side says it
//! is. The leader checks a follower's against the node its hello names; a
//! follower checks the leader's against the node etcd's leader key names.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use warren_node::pem::{certificates, private_key};

use crate::error::{Error, Result};

/// The TLS settings of this node's links to the others.
pub struct NodeTls {
    /// For the cluster listener: a client certificate is required.
    pub server: Arc<ServerConfig>,
    /// For connecting to the leader: its certificate must name it.
    pub client: Arc<ClientConfig>,
}

impl NodeTls {
    /// From the three files; all or none of them must be given.
    pub fn load(cert: Option<&PathBuf>, key: Option<&PathBuf>, ca: Option<&PathBuf>) -> Result<Option<NodeTls>> {
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return Ok(None),
            (Some(c), Some(k), Some(a)) => (c, k, a),
            _ => {
                return Err(Error::Config(
                    "cluster TLS needs all three of --cluster-tls-cert, --cluster-tls-key and --cluster-tls-ca".into(),
                ))
            }
        };
        let config = |e: &dyn std::fmt::Display| Error::Config(format!("cluster TLS: {e}"));
        let chain = certificates(cert).map_err(|e| config(&e))?;
        let key = private_key(key).map_err(|e| config(&e))?;
        let mut roots = RootCertStore::empty();
        for c in certificates(ca).map_err(|e| config(&e))? {
            roots.add(c).map_err(|e| config(&format!("bad CA certificate in {}: {e}", ca.display())))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| config(&e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| config(&format!("{} and {} do not match: {e}", cert.display(), key_path(cert))))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| config(&e))?;
        Ok(Some(NodeTls { server: Arc::new(server), client: Arc::new(client) }))
    }

    /// The name a node's certificate must carry, as rustls takes it.
    pub fn server_name(node: &str) -> Result<ServerName<'static>> {
        ServerName::try_from(node.to_owned())
            .map_err(|_| Error::Config(format!("node name {node:?} is not a DNS name a certificate can carry")))
    }
}

fn key_path(cert: &std::path::Path) -> String {
    format!("the key of {}", cert.display())
}

/// Whether a certificate (already checked to chain to the CA) names `node`
/// among its SAN DNS names.
pub fn names(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(node) else { return false };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}
