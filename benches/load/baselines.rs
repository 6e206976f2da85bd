//! The external baselines of DESIGN.md section 5, run with the same closed-loop driver and
//! the same account mix as quotad: a Redis Lua check-and-debit called with EVALSHA, and a
//! PostgreSQL single-UPDATE debit. Each is skipped, with its reason, when its server does
//! not answer; no number is ever made up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::Picker;
use crate::drive::{Done, Meta, Op, closed_loop};
use crate::stats::ScenarioResult;

/// Check-and-debit in integer micro-units: debit ARGV[1] from KEYS[1] if the balance
/// covers it. 1 = debited, 0 = denied.
const DEBIT_LUA: &str = r#"
local b = tonumber(redis.call('GET', KEYS[1]) or '0')
local c = tonumber(ARGV[1])
if b >= c then
  redis.call('DECRBY', KEYS[1], c)
  return 1
end
return 0
"#;

/// 1,000,000,000 CNY in micro-units (exact in Lua's doubles: below 2^53).
const REDIS_BALANCE_MICROS: i64 = 1_000_000_000 * 1_000_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Outcome {
    pub results: Vec<ScenarioResult>,
    /// Server facts worth printing next to the numbers (version, durability settings).
    pub info: Vec<(String, String)>,
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {CONNECT_TIMEOUT:?}")),
    }
}

struct RedisDebit {
    con: redis::aio::MultiplexedConnection,
    sha: Arc<str>,
    keys: Arc<Vec<String>>,
    pick: Picker,
    cost_micros: i64,
}

impl Op for RedisDebit {
    fn metrics(&self) -> &'static [&'static str] {
        &["evalsha"]
    }

    async fn run(&mut self, _i: u64) -> Result<Done, String> {
        let key = &self.keys[self.pick.next_index()];
        let ok: i64 = redis::cmd("EVALSHA")
            .arg(&*self.sha)
            .arg(1)
            .arg(key)
            .arg(self.cost_micros)
            .query_async(&mut self.con)
            .await
            .map_err(|e| format!("EVALSHA: {e}"))?;
        Ok(Done::one(ok == 1))
    }
}

/// Redis EVALSHA check-and-debit at each client count (one connection per client).
pub async fn redis(
    url: &str,
    client_counts: &[usize],
    pick: &Picker,
    cost_micros: i64,
    warmup: Duration,
    duration: Duration,
) -> Result<Outcome, String> {
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    let mut con = timed(
        &format!("connect {url}"),
        client.get_multiplexed_async_connection(),
    )
    .await?;
    let version: String = timed(
        "INFO server",
        redis::cmd("INFO").arg("server").query_async(&mut con),
    )
    .await?;
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let appendonly: Vec<String> = timed(
        "CONFIG GET appendonly",
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut con),
    )
    .await
    .unwrap_or_default();
    let sha: String = timed(
        "SCRIPT LOAD",
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(DEBIT_LUA)
            .query_async(&mut con),
    )
    .await?;
    let nonce = std::process::id();
    let keys: Arc<Vec<String>> = Arc::new(
        (0..pick.count())
            .map(|i| format!("quotad-load:{nonce}:acct:{i}"))
            .collect(),
    );
    for chunk in keys.chunks(500) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("SET").arg(k).arg(REDIS_BALANCE_MICROS).ignore();
        }
        timed("SET balances", p.query_async::<()>(&mut con)).await?;
    }
    let sha: Arc<str> = sha.into();
    let mut results = Vec::new();
    for &n in client_counts {
        let mut ops = Vec::with_capacity(n);
        for c in 0..n {
            let con = timed(
                &format!("connect {url}"),
                client.get_multiplexed_async_connection(),
            )
            .await?;
            ops.push(RedisDebit {
                con,
                sha: sha.clone(),
                keys: keys.clone(),
                pick: pick.fork(c as u64 + 1),
                cost_micros,
            });
        }
        let meta = Meta {
            target: "redis",
            scenario: "evalsha",
            unit: "call",
        };
        results.push(closed_loop(meta, ops, warmup, duration).await);
    }
    for chunk in keys.chunks(500) {
        let mut c = redis::cmd("DEL");
        for k in chunk {
            c.arg(k);
        }
        let _ = timed("DEL", c.query_async::<i64>(&mut con)).await;
    }
    Ok(Outcome {
        results,
        info: vec![
            ("redis_version".into(), version),
            (
                "redis_appendonly".into(),
                appendonly.get(1).cloned().unwrap_or_default(),
            ),
        ],
    })
}

struct PgDebit {
    conn: PgConnection,
    sql: Arc<str>,
    pick: Picker,
    cost: &'static str,
}

impl Op for PgDebit {
    fn metrics(&self) -> &'static [&'static str] {
        &["update"]
    }

    async fn run(&mut self, _i: u64) -> Result<Done, String> {
        let id = self.pick.next_index() as i32;
        let sql = self.sql.clone();
        let r = sqlx::query(&sql)
            .bind(self.cost)
            .bind(id)
            .execute(&mut self.conn)
            .await
            .map_err(|e| format!("UPDATE: {e}"))?;
        Ok(Done::one(r.rows_affected() == 1))
    }
}

/// PostgreSQL: one `UPDATE ... WHERE balance >= cost` per request on a table of accounts
/// with a numeric balance, at each client count (one connection per client). The table
/// is an ordinary (logged) one, so each autocommitted UPDATE is as durable as the server
/// is configured to make it; it is dropped at the end.
pub async fn postgres(
    url: &str,
    client_counts: &[usize],
    pick: &Picker,
    cost: &'static str,
    warmup: Duration,
    duration: Duration,
) -> Result<Outcome, String> {
    let mut admin = timed(&format!("connect {url}"), PgConnection::connect(url)).await?;
    let mut info = Vec::new();
    for setting in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
    ] {
        let v: (String,) = timed(
            &format!("SHOW {setting}"),
            sqlx::query_as(&format!("SHOW {setting}")).fetch_one(&mut admin),
        )
        .await?;
        info.push((format!("postgres_{setting}"), v.0));
    }
    let table = format!("quotad_load_accts_{}", std::process::id());
    let setup = [
        format!("DROP TABLE IF EXISTS {table}"),
        format!("CREATE TABLE {table} (id integer PRIMARY KEY, balance numeric NOT NULL)"),
        format!(
            "INSERT INTO {table} SELECT g, 1000000000 FROM generate_series(0, {}) AS g",
            pick.count() - 1
        ),
        format!("ANALYZE {table}"),
    ];
    for sql in &setup {
        timed(sql, sqlx::query(sql).execute(&mut admin)).await?;
    }
    let sql: Arc<str> = format!(
        "UPDATE {table} SET balance = balance - $1::numeric WHERE id = $2 AND balance >= $1::numeric"
    )
    .into();
    let mut results = Vec::new();
    let mut failure = None;
    for &n in client_counts {
        let mut ops = Vec::with_capacity(n);
        for c in 0..n {
            match timed(&format!("connect {url}"), PgConnection::connect(url)).await {
                Ok(conn) => ops.push(PgDebit {
                    conn,
                    sql: sql.clone(),
                    pick: pick.fork(c as u64 + 1),
                    cost,
                }),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_some() {
            break;
        }
        let meta = Meta {
            target: "postgres",
            scenario: "update",
            unit: "call",
        };
        results.push(closed_loop(meta, ops, warmup, duration).await);
    }
    let drop_sql = format!("DROP TABLE IF EXISTS {table}");
    let _ = timed(&drop_sql, sqlx::query(&drop_sql).execute(&mut admin)).await;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Outcome { results, info })
}
