//! `quotad check-config FILE`: every error the file has, not only the first. The file is
//! read key by key (a key that does not parse is reported and left out), then checked as
//! `serve` and `ledger` would; a key whose value a check refuses is reported, left out,
//! and the check run again, until it passes or an error names no key of the file.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ConfigError, FileConfig, LedgerSettings, ServeSettings, overlay};
use crate::server;

/// The tables a file may have.
const SECTIONS: [&str; 2] = ["serve", "ledger"];

/// What `quotad check-config FILE` found: the effective configuration as TOML, or every
/// error (one per line).
pub fn check(
    path: &Path,
    serve_env: &ServeSettings,
    ledger_env: &LedgerSettings,
) -> Result<String, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        vec![ConfigError::Read {
            path: path.to_owned(),
            source,
        }]
    })?;
    // Past a syntax error nothing can be read reliably: that one is all there is.
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| vec![parse_error(path, e.to_string())])?;
    let mut errors = Vec::new();
    for name in doc.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
        let msg = format!("unknown table [{name}]: expected [serve] or [ledger]");
        errors.push(parse_error(path, msg));
    }
    let mut out = FileConfig::default();
    // [serve] is checked even when absent: the environment and defaults make a sidecar.
    let serve = section::<ServeSettings>(path, &doc, "serve", &mut errors).unwrap_or_default();
    out.serve = checked(serve, serve_env, &mut errors, |s| {
        let cfg = s.to_config().map_err(Fault::of)?;
        load_catalog(cfg.catalog_path.as_ref())?;
        Ok(ServeSettings::effective(&cfg, s.log_format()))
    });
    if let Some(ledger) = section::<LedgerSettings>(path, &doc, "ledger", &mut errors) {
        out.ledger = checked(ledger, ledger_env, &mut errors, |s| {
            let cfg = s.to_config().map_err(Fault::of)?;
            load_catalog(cfg.catalog_path.as_ref())?;
            Ok(LedgerSettings::effective(&cfg, s.log_format()))
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    toml::to_string(&out).map_err(|e| vec![ConfigError::Merge(e.to_string())])
}

fn parse_error(path: &Path, message: String) -> ConfigError {
    ConfigError::Parse {
        path: path.to_owned(),
        message,
    }
}

/// The keys of table `name` that parse as settings `T`; each one that does not is an
/// error. None if the file has no such table.
fn section<T: DeserializeOwned>(
    path: &Path,
    doc: &toml::Table,
    name: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<toml::Table> {
    let value = doc.get(name)?;
    let Some(table) = value.as_table() else {
        errors.push(parse_error(
            path,
            format!("{name} must be a table ([{name}])"),
        ));
        return None;
    };
    let mut good = toml::Table::new();
    for (key, v) in table {
        let one = toml::Table::from_iter([(key.clone(), v.clone())]);
        match toml::Value::Table(one).try_into::<T>() {
            Ok(_) => {
                good.insert(key.clone(), v.clone());
            }
            Err(e) => {
                let msg = format!("[{name}] {key}: {}", e.message().trim());
                errors.push(parse_error(path, msg));
            }
        }
    }
    Some(good)
}

/// An error of a check, and the file keys it is about (left out before checking again).
struct Fault {
    error: ConfigError,
    keys: Vec<String>,
}

impl Fault {
    fn of(error: ConfigError) -> Fault {
        let keys = match &error {
            ConfigError::Invalid { key, .. } => key.split(" / ").map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Fault { error, keys }
    }
}

fn load_catalog(path: Option<&std::path::PathBuf>) -> Result<(), Fault> {
    server::load_catalog(path).map(drop).map_err(|e| Fault {
        error: e.into(),
        keys: vec!["catalog".into()],
    })
}

/// Runs `check` on the file's keys `file` under the environment `env`, reporting each
/// error and leaving out the keys it names, until it passes (its answer) or an error
/// names no key left in the file (None).
fn checked<T, E>(
    mut file: toml::Table,
    env: &T,
    errors: &mut Vec<ConfigError>,
    check: impl Fn(&T) -> Result<E, Fault>,
) -> Option<E>
where
    T: Serialize + DeserializeOwned,
{
    loop {
        let settings = toml::Value::Table(file.clone())
            .try_into::<T>()
            .map_err(|e| ConfigError::Merge(e.to_string()))
            .and_then(|f| overlay(&f, env));
        let fault = match settings {
            Err(e) => Fault::of(e),
            Ok(s) => match check(&s) {
                Ok(answer) => return Some(answer),
                Err(f) => f,
            },
        };
        let removed = fault
            .keys
            .iter()
            .filter(|k| file.remove(k.as_str()).is_some())
            .count();
        errors.push(fault.error);
        if removed == 0 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Env {
        #[command(flatten)]
        s: ServeSettings,
    }

    fn check_text(text: &str) -> Result<String, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, text).unwrap();
        let serve = Env::try_parse_from(["quotad"]).unwrap().s;
        let ledger = LedgerSettings::default();
        check(&path, &serve, &ledger).map_err(|es| es.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let errors = check_text(
            "[serve]\nhold_max = 10\nstream_buffer = 0\njournal_sync = \"sometimes\"\n\
             sessions_max = 0\n[ledger]\nlease_ttl_ms = 10\n[srve]\n",
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "unknown table [srve]",
            "hold_max: unknown field",
            "sometimes",
            "stream_buffer = 0",
            "sessions_max = 0",
            "database_url",
        ] {
            assert!(all.contains(needle), "{needle:?} not in:\n{all}");
        }
        assert_eq!(errors.len(), 6, "{all}");
    }

    #[test]
    fn a_valid_file_prints_its_effective_configuration() {
        let out = check_text("[serve]\nholds_max = 10\n").unwrap();
        assert!(out.contains("holds_max = 10"), "{out}");
    }
}
