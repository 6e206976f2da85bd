//! `quotad serve`'s settings checked into its configuration, and back (`check-config`).

use super::settings::{Effective, ServeSettings, SharedSettings};
use super::values::{Budget, LogFormat, Text};
use super::{ConfigError, default_listen, positive};
use crate::engine::ACCOUNT_QUIET_MIN_MS;
use crate::server::{self, ServeConfig};
use crate::tls::ClientTls;

impl ServeSettings {
    /// The sidecar's configuration: these settings over the defaults, checked (in the
    /// order the settings are listed, so the first bad one is the one reported).
    pub fn to_config(&self) -> Result<ServeConfig, ConfigError> {
        let s = self;
        let listen = match s.listen {
            Some(a) => a,
            None => default_listen(server::DEFAULT_LISTEN, "127.0.0.1:50051")?,
        };
        let data_dir = s
            .data_dir
            .clone()
            .unwrap_or_else(|| server::DEFAULT_DATA_DIR.into());
        let mut cfg = ServeConfig::new(listen, data_dir);
        cfg.ledger_url = s.ledger.clone();
        s.apply_fail_open(&mut cfg);
        if let Some(v) = s.sync_interval_ms {
            cfg.sync_interval_ms = positive("sync_interval_ms", v)?;
        }
        s.apply_holds(&mut cfg)?;
        apply_lease_settings(s, &mut cfg.engine)?;
        if let Some(Text(v)) = s.journal_sync {
            cfg.journal_sync = v;
        }
        s.apply_streams(&mut cfg)?;
        s.apply_envoy(&mut cfg)?;
        s.apply_alerts(&mut cfg)?;
        let shared = s.shared();
        shared.apply(&mut cfg.limits)?;
        cfg.catalog_path = shared.catalog.clone();
        cfg.metrics_listen = shared.metrics_listen;
        cfg.auth = shared.auth();
        cfg.tls = shared.tls()?;
        cfg.webhooks = shared.webhooks()?;
        s.apply_ledger_client(&mut cfg)?;
        Ok(cfg)
    }

    /// Fail-open budgets: `*` for every account, else per account.
    fn apply_fail_open(&self, cfg: &mut ServeConfig) {
        for Text(b) in self.fail_open_budget.iter().flatten() {
            if b.account == "*" {
                cfg.engine.fail_open_default = b.amount;
            } else {
                cfg.engine
                    .fail_open_budgets
                    .insert(b.account.clone(), b.amount);
            }
        }
    }

    fn apply_holds(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        if let Some(v) = self.hold_ttl_default_ms {
            let max = cfg.engine.hold_ttl_max_ms;
            if v <= 0 || v > max {
                return Err(ConfigError::Invalid {
                    key: "hold_ttl_default_ms",
                    value: v.to_string(),
                    allowed: format!("must be between 1 and {max}"),
                });
            }
            cfg.engine.hold_ttl_default_ms = v;
        }
        if let Some(v) = self.holds_max {
            cfg.engine.holds_max = positive("holds_max", v)?;
        }
        if let Some(v) = self.accounts_max {
            cfg.engine.accounts_max = positive("accounts_max", v)?;
        }
        if let Some(v) = self.account_idle_ms {
            if v < ACCOUNT_QUIET_MIN_MS {
                return Err(ConfigError::Invalid {
                    key: "account_idle_ms",
                    value: v.to_string(),
                    allowed: format!("must be at least {ACCOUNT_QUIET_MIN_MS}"),
                });
            }
            cfg.engine.account_idle_ms = v;
        }
        Ok(())
    }

    /// Limits of usage streams, sessions and watchers.
    fn apply_streams(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        let e = &mut cfg.engine;
        if let Some(v) = self.streams_max {
            e.work.streams_max = positive("streams_max", v)?;
        }
        if let Some(v) = self.stream_reports_per_sec {
            e.work.stream_reports_per_sec = positive("stream_reports_per_sec", v)?;
        }
        if let Some(v) = self.stream_buffer {
            e.work.stream_buffer = positive("stream_buffer", v)?;
        }
        if let Some(v) = self.stream_rounds_max {
            e.work.stream_rounds_max = positive("stream_rounds_max", v)?;
        }
        if let Some(v) = self.sessions_max {
            e.sessions.sessions_max = positive("sessions_max", v)?;
        }
        if let Some(v) = self.watchers_max {
            e.watch.watchers_max = positive("watchers_max", v)?;
        }
        Ok(())
    }

    fn apply_envoy(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        if let Some(v) = self.envoy_check_message_bytes_max {
            cfg.envoy.check_message_bytes_max = positive("envoy_check_message_bytes_max", v)?;
        }
        if let Some(v) = self.envoy_access_log_message_bytes_max {
            cfg.envoy.access_log_message_bytes_max =
                positive("envoy_access_log_message_bytes_max", v)?;
        }
        if let Some(v) = self.envoy_settle_concurrency_max {
            cfg.envoy.settle_concurrency_max = positive("envoy_settle_concurrency_max", v)?;
        }
        Ok(())
    }

    fn apply_alerts(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        let alerts = &mut cfg.engine.alerts;
        if let Some(v) = &self.alert_low_quota {
            alerts.low_quota_fractions = v.iter().map(|Text(f)| *f).collect();
        }
        if let Some(v) = &self.alert_expiring_ms {
            alerts.expiring_leads_ms = v.clone();
        }
        alerts.balance_floor = self.alert_balance_floor.as_ref().map(|Text(m)| *m);
        alerts.validate().map_err(|e| ConfigError::Invalid {
            key: "alert_low_quota / alert_expiring_ms",
            value: format!(
                "{:?} / {:?}",
                alerts.low_quota_fractions, alerts.expiring_leads_ms
            ),
            allowed: e.to_string(),
        })
    }

    /// How the sidecar reaches a remote ledger: TLS (a client certificate goes with its
    /// key) and its token, from the file or else `QUOTAD_LEDGER_TOKEN`.
    fn apply_ledger_client(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        cfg.ledger_tls = ClientTls {
            ca_file: self.ledger_tls_ca_file.clone(),
            cert_file: self.ledger_tls_cert_file.clone(),
            key_file: self.ledger_tls_key_file.clone(),
            domain: None,
        };
        if self.ledger_tls_cert_file.is_some() != self.ledger_tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "ledger_tls_cert_file / ledger_tls_key_file",
                value: "only one set".into(),
                allowed: "a client certificate and its key go together".into(),
            });
        }
        cfg.ledger_token = match &self.ledger_token_file {
            Some(path) => {
                Some(
                    crate::auth::read_token_file(path).map_err(|e| ConfigError::Invalid {
                        key: "ledger_token_file",
                        value: path.display().to_string(),
                        allowed: format!("a readable file holding a token: {e}"),
                    })?,
                )
            }
            None => std::env::var("QUOTAD_LEDGER_TOKEN")
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        };
        Ok(())
    }

    /// Every setting as `cfg` has it: what `check-config` prints.
    pub fn effective(cfg: &ServeConfig, log: LogFormat) -> ServeSettings {
        let e = &cfg.engine;
        let shared = Effective {
            catalog_path: &cfg.catalog_path,
            metrics_listen: cfg.metrics_listen,
            limits: &cfg.limits,
            auth: &cfg.auth,
            tls: cfg.tls.as_ref(),
            webhooks: &cfg.webhooks,
        };
        ServeSettings {
            listen: Some(cfg.listen),
            data_dir: Some(cfg.data_dir.clone()),
            ledger: cfg.ledger_url.clone(),
            fail_open_budget: Some(budgets(cfg)),
            sync_interval_ms: Some(cfg.sync_interval_ms),
            hold_ttl_default_ms: Some(e.hold_ttl_default_ms),
            lease_want_min: Some(Text(e.leasing.lease_want_min)),
            lease_active_ms: Some(e.leasing.lease_active_ms),
            lease_renew_before_ms: Some(e.leasing.lease_renew_before_ms),
            lease_request_timeout_ms: Some(e.leasing.lease_request_timeout_ms),
            lease_recall_wait_ms: Some(e.leasing.lease_recall_wait_ms),
            holds_max: Some(e.holds_max),
            accounts_max: Some(e.accounts_max),
            account_idle_ms: Some(e.account_idle_ms),
            journal_sync: Some(Text(cfg.journal_sync)),
            streams_max: Some(e.work.streams_max),
            stream_reports_per_sec: Some(e.work.stream_reports_per_sec),
            stream_buffer: Some(e.work.stream_buffer),
            stream_rounds_max: Some(e.work.stream_rounds_max),
            sessions_max: Some(e.sessions.sessions_max),
            watchers_max: Some(e.watch.watchers_max),
            envoy_check_message_bytes_max: Some(cfg.envoy.check_message_bytes_max),
            envoy_access_log_message_bytes_max: Some(cfg.envoy.access_log_message_bytes_max),
            envoy_settle_concurrency_max: Some(cfg.envoy.settle_concurrency_max),
            alert_low_quota: Some(
                e.alerts
                    .low_quota_fractions
                    .iter()
                    .map(|f| Text(*f))
                    .collect(),
            ),
            alert_expiring_ms: Some(e.alerts.expiring_leads_ms.clone()),
            alert_balance_floor: e.alerts.balance_floor.map(Text),
            // The configuration holds the token, not its file, and never prints it.
            ledger_token_file: None,
            ledger_tls_ca_file: cfg.ledger_tls.ca_file.clone(),
            ledger_tls_cert_file: cfg.ledger_tls.cert_file.clone(),
            ledger_tls_key_file: cfg.ledger_tls.key_file.clone(),
            ..ServeSettings::with_shared(SharedSettings::effective(shared, log))
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.clone().map(|t| t.0).unwrap_or_default()
    }
}

/// The fail-open budgets as settings: `*` first, then per account in account order.
fn budgets(cfg: &ServeConfig) -> Vec<Text<Budget>> {
    let mut budgets: Vec<Text<Budget>> = cfg
        .engine
        .fail_open_budgets
        .iter()
        .map(|(account, amount)| {
            Text(Budget {
                account: account.clone(),
                amount: *amount,
            })
        })
        .collect();
    budgets.sort_by(|a, b| a.0.account.cmp(&b.0.account));
    if !cfg.engine.fail_open_default.is_zero() {
        budgets.insert(
            0,
            Text(Budget {
                account: "*".into(),
                amount: cfg.engine.fail_open_default,
            }),
        );
    }
    budgets
}

/// The sidecar's lease settings (used with a remote ledger), checked.
fn apply_lease_settings(
    s: &ServeSettings,
    e: &mut crate::engine::EngineConfig,
) -> Result<(), ConfigError> {
    if let Some(Text(v)) = s.lease_want_min {
        if v.is_negative() {
            return Err(ConfigError::Invalid {
                key: "lease_want_min",
                value: v.to_string(),
                allowed: "must not be negative".into(),
            });
        }
        e.leasing.lease_want_min = v;
    }
    if let Some(v) = s.lease_active_ms {
        e.leasing.lease_active_ms = positive("lease_active_ms", v)?;
    }
    if let Some(v) = s.lease_renew_before_ms {
        e.leasing.lease_renew_before_ms = positive("lease_renew_before_ms", v)?;
    }
    if let Some(v) = s.lease_request_timeout_ms {
        e.leasing.lease_request_timeout_ms = positive("lease_request_timeout_ms", v)?;
    }
    if let Some(v) = s.lease_recall_wait_ms {
        e.leasing.lease_recall_wait_ms = v;
    }
    Ok(())
}
