//! One configuration for `quotad serve` and `quotad ledger`, from four sources with a fixed
//! precedence: flags > environment (`QUOTAD_*`) > the TOML file (`--config FILE`) >
//! built-in defaults. Flags and file keys are the same struct, so a setting cannot exist in
//! one and be forgotten in the other; adding one is a field in `settings` (its flag,
//! variable and key at once), a line in its command's `to_config` and one in `effective`
//! (`serve`, `ledger`). A setting both commands have is declared once, in the `shared`
//! block of `settings`, and checked and printed once (`SharedSettings`).
//!
//! Everything is checked before anything starts: unknown keys name the key and the file,
//! bad values name the key, the value and what is allowed, so a typo never falls back to a
//! default silently. `quotad check-config FILE` runs the same checks (and loads the catalog
//! the file names) without starting.
//!
//! Layout: `values` (how a setting is written and parsed), `settings` (the two structs),
//! `serve` and `ledger` (each command's checks and effective configuration); this file
//! holds the file and the precedence (`overlay`); `check` is `check-config` (every error).

mod check;
mod ledger;
mod serve;
mod settings;
mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::server;

pub use check::check;
pub use settings::{LedgerSettings, ServeSettings};
pub use values::{Budget, LogFormat, Setting, Text};

/// Where the metrics endpoint listens when asked for without an address (`metrics_listen`
/// has no default: the endpoint is off unless configured).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{0}")]
    Serve(#[from] server::ServeError),
    #[error("internal: cannot merge settings: {0}")]
    Merge(String),
}

/// The whole file: a `[serve]` table and a `[ledger]` table, both optional.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub serve: Option<ServeSettings>,
    pub ledger: Option<LedgerSettings>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(path, &text)
    }
}

/// `over` where it sets a value, `base` elsewhere: the precedence rule, for any settings
/// struct (unset fields are absent from the serialised table).
pub fn overlay<T: Serialize + DeserializeOwned>(base: &T, over: &T) -> Result<T, ConfigError> {
    let table = |v: &T| toml::Table::try_from(v).map_err(|e| ConfigError::Merge(e.to_string()));
    let mut merged = table(base)?;
    for (k, v) in table(over)? {
        merged.insert(k, v);
    }
    merged
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Merge(e.to_string()))
}

fn positive<T: PartialOrd + Default + fmt::Display>(
    key: &'static str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            key,
            value: v.to_string(),
            allowed: "must be positive".into(),
        })
    }
}

/// The default address `addr`, which is ours: it always parses.
fn default_listen(addr: &'static str, example: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse().map_err(|_| ConfigError::Invalid {
        key: "listen",
        value: addr.into(),
        allowed: format!("an address such as {example}"),
    })
}

/// Flags and environment over the file's table (if any).
fn resolve<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    table: impl FnOnce(FileConfig) -> Option<T>,
    flags_and_env: &T,
) -> Result<T, ConfigError> {
    let from_file = match file {
        Some(path) => table(FileConfig::load(path)?).unwrap_or_default(),
        None => T::default(),
    };
    overlay(&from_file, flags_and_env)
}

/// `quotad serve`'s settings: flags and environment (`args`) over the file.
pub fn resolve_serve(
    file: Option<&Path>,
    args: &ServeSettings,
) -> Result<ServeSettings, ConfigError> {
    resolve(file, |f| f.serve, args)
}

/// `quotad ledger`'s settings: flags and environment (`args`) over the file.
pub fn resolve_ledger(
    file: Option<&Path>,
    args: &LedgerSettings,
) -> Result<LedgerSettings, ConfigError> {
    resolve(file, |f| f.ledger, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalSync;
    use crate::server::ServeConfig;
    use clap::Parser;
    use proptest::prelude::*;

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        s: ServeSettings,
    }

    fn flags(args: &[&str]) -> ServeSettings {
        let mut argv = vec!["quotad"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().s
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(Path::new("test.toml"), text).unwrap()
    }

    fn parse_err(text: &str) -> String {
        FileConfig::parse(Path::new("dir/q.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let f = file(
            "[serve]\nholds_max = 10\nstreams_max = 20\nlisten = \"127.0.0.1:7000\"\n\
             journal_sync = \"normal\"\n",
        )
        .serve
        .unwrap();
        let a = flags(&["--holds-max", "99", "--sessions-max", "5"]);
        let merged = overlay(&f, &a).unwrap();
        let cfg = merged.to_config().unwrap();
        assert_eq!(cfg.engine.holds_max, 99, "flag over file");
        assert_eq!(cfg.engine.work.streams_max, 20, "file over default");
        assert_eq!(cfg.engine.sessions.sessions_max, 5, "flag over default");
        assert_eq!(cfg.journal_sync, JournalSync::Normal);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(
            cfg.engine.watch.watchers_max,
            crate::engine::events::DEFAULT_WATCHERS_MAX,
            "default"
        );
        assert_eq!(cfg.data_dir, PathBuf::from(server::DEFAULT_DATA_DIR));
        assert_eq!(cfg.metrics_listen, None, "metrics are off unless asked for");
    }

    #[test]
    fn nothing_set_is_the_built_in_configuration() {
        let cfg = ServeSettings::default().to_config().unwrap();
        let builtin = ServeConfig::new(
            server::DEFAULT_LISTEN.parse().unwrap(),
            server::DEFAULT_DATA_DIR.into(),
        );
        assert_eq!(format!("{cfg:?}"), format!("{builtin:?}"));
    }

    #[test]
    fn the_effective_configuration_reads_back_as_itself() {
        let s = flags(&[
            "--fail-open-budget",
            "*=5,acme=1.5",
            "--alert-low-quota",
            "0.3,0.05",
            "--alert-balance-floor",
            "2",
            "--metrics-listen",
            "127.0.0.1:9464",
            "--concurrency-max",
            "7",
        ]);
        let cfg = s.to_config().unwrap();
        assert_eq!(cfg.engine.fail_open_default.to_string(), "5");
        assert_eq!(cfg.engine.fail_open_budgets["acme"].to_string(), "1.5");
        assert_eq!(cfg.limits.concurrency_max, 7);
        let eff = ServeSettings::effective(&cfg, LogFormat::Json);
        let text = toml::to_string(&FileConfig {
            serve: Some(eff.clone()),
            ledger: None,
        })
        .unwrap();
        let again = file(&text).serve.unwrap();
        assert_eq!(again, eff, "{text}");
        assert_eq!(
            format!("{:?}", again.to_config().unwrap()),
            format!("{cfg:?}")
        );
        assert_eq!(again.log_format(), LogFormat::Json);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let e = parse_err("[serve]\nhold_max = 1\n");
        assert!(e.contains("dir/q.toml") && e.contains("hold_max"), "{e}");
        let e = parse_err("[sevre]\nholds_max = 1\n");
        assert!(e.contains("dir/q.toml") && e.contains("sevre"), "{e}");
        let e = parse_err("[ledger]\nlease_ttl = 1\n");
        assert!(e.contains("lease_ttl"), "{e}");
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_allowed() {
        let e = parse_err("[serve]\njournal_sync = \"fast\"\n");
        assert!(
            e.contains("journal_sync") && e.contains("fast") && e.contains("full or normal"),
            "{e}"
        );
        let e = parse_err("[serve]\nlog_format = \"xml\"\n");
        assert!(e.contains("xml") && e.contains("text or json"), "{e}");
        let e = parse_err("[serve]\nholds_max = -3\n");
        assert!(e.contains("holds_max") && e.contains("-3"), "{e}");
        let e = parse_err("[serve]\nlisten = \"localhost\"\n");
        assert!(e.contains("listen") && e.contains("localhost"), "{e}");
        let e = parse_err("[serve]\nfail_open_budget = [\"acme\"]\n");
        assert!(e.contains("ACCOUNT=AMOUNT"), "{e}");
        let e = parse_err("[serve]\nalert_balance_floor = \"-1\"\n");
        assert!(
            e.contains("alert_balance_floor") && e.contains("non-negative"),
            "{e}"
        );

        let invalid = |text: &str| {
            file(text)
                .serve
                .unwrap()
                .to_config()
                .unwrap_err()
                .to_string()
        };
        let e = invalid("[serve]\nholds_max = 0\n");
        assert_eq!(e, "holds_max = 0: must be positive");
        let e = invalid("[serve]\naccounts_max = 0\n");
        assert_eq!(e, "accounts_max = 0: must be positive");
        let e = invalid("[serve]\naccount_idle_ms = 1000\n");
        assert_eq!(e, "account_idle_ms = 1000: must be at least 60000");
        let e = invalid("[serve]\nhold_ttl_default_ms = 999999999999\n");
        assert!(e.contains("hold_ttl_default_ms = 999999999999: must be between 1 and"));
        let e = invalid("[serve]\nalert_low_quota = [1.5]\n");
        assert!(e.contains("alert_low_quota") && e.contains("1.5"), "{e}");
        let e = LedgerSettings::default()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url") && e.contains("required"), "{e}");
    }

    #[test]
    fn the_ledger_table_configures_the_ledger() {
        let l = file(
            "[ledger]\ndatabase_url = \"sqlite:x.db\"\nlease_ttl_ms = 5000\n\
             concurrency_max = 3\nrequest_timeout_ms = 100\n",
        )
        .ledger
        .unwrap();
        let cfg = l.to_config().unwrap();
        assert_eq!(cfg.database_url, "sqlite:x.db");
        assert_eq!(cfg.lease.ttl_ms, 5000);
        assert_eq!(cfg.limits.concurrency_max, 3);
        assert_eq!(cfg.limits.request_timeout_ms, 100);
        let eff = LedgerSettings::effective(&cfg, LogFormat::Text);
        assert_eq!(eff.to_config().unwrap().lease.ttl_ms, 5000);
    }

    #[test]
    fn auth_and_tls_keys() {
        let s = file(
            "[serve]\nauth_disabled = true\nauth_cache_ttl_ms = 0\n\
             tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n",
        )
        .serve
        .unwrap();
        let cfg = s.to_config().unwrap();
        assert!(cfg.auth.disabled);
        assert_eq!(cfg.auth.cache_ttl_ms, 0);
        assert_eq!(cfg.tls.as_ref().unwrap().key_file, PathBuf::from("k.pem"));
        let eff = ServeSettings::effective(&cfg, LogFormat::Text);
        assert!(eff.to_config().unwrap().auth.disabled);
        // Auth is on unless turned off.
        assert!(!ServeSettings::default().to_config().unwrap().auth.disabled);
        let e = file("[serve]\ntls_cert_file = \"c.pem\"\n")
            .serve
            .unwrap()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key_file"), "{e}");
        let l = file("[ledger]\ndatabase_url = \"sqlite:x.db\"\n")
            .ledger
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(
            l.operator_token_file.as_deref(),
            Some(Path::new(crate::auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the file holds, parsing it ends in a config or a clean error.
        #[test]
        fn arbitrary_files_never_panic(text in "\\PC{0,200}") {
            if let Ok(f) = FileConfig::parse(Path::new("f.toml"), &text) {
                if let Some(s) = f.serve {
                    let _ = s.to_config();
                }
                if let Some(l) = f.ledger {
                    let _ = l.to_config();
                }
            }
        }

        /// Keys we know with values of any TOML shape: a config or a clean error.
        #[test]
        fn known_keys_with_arbitrary_values_never_panic(
            key in prop::sample::select(vec![
                "listen", "data_dir", "holds_max", "journal_sync", "fail_open_budget",
                "alert_low_quota", "alert_expiring_ms", "alert_balance_floor",
                "hold_ttl_default_ms", "stream_buffer", "metrics_listen", "log_format",
                "concurrency_max", "request_timeout_ms", "sync_interval_ms",
            ]),
            value in prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                "[a-z0-9.:=*-]{0,12}".prop_map(|v| format!("{v:?}")),
                prop::collection::vec("[a-z0-9.=*-]{0,8}", 0..4)
                    .prop_map(|v| format!("{v:?}")),
                Just("true".to_owned()),
                Just("{ a = 1 }".to_owned()),
            ],
        ) {
            let text = format!("[serve]\n{key} = {value}\n");
            match FileConfig::parse(Path::new("f.toml"), &text) {
                Ok(f) => {
                    if let Err(e) = f.serve.unwrap_or_default().to_config() {
                        prop_assert!(e.to_string().contains(key), "{e}");
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("f.toml"), "{e}"),
            }
        }
    }
}
