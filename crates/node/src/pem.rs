//! Certificates and keys from PEM files, for every TLS surface (amqps, the
//! cluster's links between nodes, etcd).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {what} from {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
}

/// Every certificate in a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let read = |source| PemError::Read { what: "certificates", path: path.to_owned(), source };
    let certs = CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<Vec<_>, _>>().map_err(read)?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PemError::Read {
        what: "a private key",
        path: path.to_owned(),
        source,
    })
}
