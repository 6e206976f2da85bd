//! Optional TLS (rustls, through tonic) for both servers and for the clients quotad runs
//! (a sidecar's channel to its ledger, `quotad ctl`). Off unless configured: quotad is
//! usually reached over loopback or a private network, and the one-command start must not
//! need certificates. With a client CA configured, the server requires a certificate
//! signed by it (mTLS) and refuses connections without one.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Incomplete(String),
}

/// A server's certificate and key, and the CA its clients' certificates must chain to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Some: mutual TLS, a client without a certificate signed by this CA is refused.
    pub client_ca_file: Option<PathBuf>,
}

/// How a client checks its server, and its own certificate for mTLS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTls {
    /// The CA the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the URL's host).
    pub domain: Option<String>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

impl ServerTls {
    /// The server side, from settings that may name only some files: none is off,
    /// a certificate without its key (or the reverse) is an error.
    pub fn from_files(
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        client_ca: Option<&PathBuf>,
    ) -> Result<Option<ServerTls>, String> {
        match (cert, key) {
            (None, None) if client_ca.is_none() => Ok(None),
            (Some(c), Some(k)) => Ok(Some(ServerTls {
                cert_file: c.clone(),
                key_file: k.clone(),
                client_ca_file: client_ca.cloned(),
            })),
            _ => Err(
                "tls_cert_file and tls_key_file go together (and tls_client_ca_file \
                      needs both)"
                    .into(),
            ),
        }
    }

    pub fn config(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(
            read("TLS certificate", &self.cert_file)?,
            read("TLS key", &self.key_file)?,
        );
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            cfg = cfg
                .client_ca_root(Certificate::from_pem(read("TLS client CA", ca)?))
                .client_auth_optional(false);
        }
        Ok(cfg)
    }
}

impl ClientTls {
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    pub fn config(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_file {
            cfg = cfg.ca_certificate(Certificate::from_pem(read("TLS CA", ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                cfg = cfg.identity(Identity::from_pem(
                    read("TLS client certificate", c)?,
                    read("TLS client key", k)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(TlsError::Incomplete(
                    "a TLS client certificate and its key go together".into(),
                ));
            }
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        Ok(cfg)
    }
}
