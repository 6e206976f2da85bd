//! `quotad ledger`'s settings checked into its configuration, and back (`check-config`).

use super::settings::{Effective, LedgerSettings, SharedSettings};
use super::values::LogFormat;
use super::{ConfigError, default_listen, positive};
use crate::server::{self, LedgerServeConfig};

impl LedgerSettings {
    /// The ledger's configuration: these settings over the defaults, checked.
    pub fn to_config(&self) -> Result<LedgerServeConfig, ConfigError> {
        let s = self;
        let listen = match s.listen {
            Some(a) => a,
            None => default_listen(server::DEFAULT_LEDGER_LISTEN, "127.0.0.1:50052")?,
        };
        let database_url = s.database_url.clone().ok_or(ConfigError::Invalid {
            key: "database_url",
            value: "(unset)".into(),
            allowed: "required: --database-url, DATABASE_URL or database_url in [ledger]".into(),
        })?;
        let mut cfg = LedgerServeConfig::new(listen, database_url);
        if let Some(v) = s.lease_ttl_ms {
            cfg.lease.ttl_ms = positive("lease_ttl_ms", v)?;
        }
        if let Some(v) = s.lease_hold_grace_ms {
            cfg.lease.hold_grace_ms = positive("lease_hold_grace_ms", v)?;
        }
        if let Some(v) = s.pg_pool_max {
            cfg.pg_pool_max = positive("pg_pool_max", v)?;
        }
        if let Some(v) = s.metrics_sidecars_max {
            cfg.metrics_sidecars_max = positive("metrics_sidecars_max", v)?;
        }
        let shared = s.shared();
        shared.apply(&mut cfg.limits)?;
        cfg.catalog_path = shared.catalog.clone();
        cfg.metrics_listen = shared.metrics_listen;
        cfg.auth = shared.auth();
        cfg.tls = shared.tls()?;
        cfg.webhooks = shared.webhooks()?;
        cfg.operator_token_file = Some(
            s.operator_token_file
                .clone()
                .unwrap_or_else(|| crate::auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE.into()),
        );
        Ok(cfg)
    }

    pub fn effective(cfg: &LedgerServeConfig, log: LogFormat) -> LedgerSettings {
        let shared = Effective {
            catalog_path: &cfg.catalog_path,
            metrics_listen: cfg.metrics_listen,
            limits: &cfg.limits,
            auth: &cfg.auth,
            tls: cfg.tls.as_ref(),
            webhooks: &cfg.webhooks,
        };
        LedgerSettings {
            listen: Some(cfg.listen),
            database_url: Some(cfg.database_url.clone()),
            lease_ttl_ms: Some(cfg.lease.ttl_ms),
            lease_hold_grace_ms: Some(cfg.lease.hold_grace_ms),
            pg_pool_max: Some(cfg.pg_pool_max),
            metrics_sidecars_max: Some(cfg.metrics_sidecars_max),
            operator_token_file: cfg.operator_token_file.clone(),
            ..LedgerSettings::with_shared(SharedSettings::effective(shared, log))
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.clone().map(|t| t.0).unwrap_or_default()
    }
}
