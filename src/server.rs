//! Assembles running processes. `start` is a sidecar (`quotad serve`): data directory,
//! catalog, journal, engine, sync loop and its gRPC server, with the ledger embedded
//! (SQLite in the data directory, Admin served here) or remote (`--ledger URL`).
//! `start_ledger` is the authoritative ledger (`quotad ledger`): Admin and Ledger services
//! over PostgreSQL or SQLite. Both serve health and reflection v1 and v1alpha, and own the
//! order of shutdown: stop accepting, finish in-flight calls, push the journal to the
//! ledger, give leases back, close the journal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::layer::AuthLayer;
use crate::auth::{self, AuthConfig, Authenticator, LedgerSource, TokenSource};
use crate::billing::{Catalog, CatalogError};
use crate::bootstrap;
use crate::clock::SharedClock;
use crate::engine::sync::{DEFAULT_SYNC_BATCH_MAX, DEFAULT_SYNC_INTERVAL_MS};
use crate::engine::{self, Engine, EngineConfig, EngineError};
use crate::envoy::{self, EnvoyLimits, SettleStats};
use crate::grpc::admin::AdminService;
use crate::grpc::elsewhere::{LedgerQuota, SidecarAdmin};
use crate::grpc::ledger::{LedgerService, RemoteLedger};
use crate::grpc::quota::QuotaService;
use crate::guard::GuardLayer;
use crate::journal::{
    DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Journal, JournalError, JournalSync,
};
use crate::ledger::lease::LeaseConfig;
use crate::ledger::postgres::{DEFAULT_PG_POOL_MAX, PgStore};
use crate::ledger::sqlite::SqliteStore;
use crate::ledger::store::{LedgerStore, StoreError};
use crate::ledger::{EMBEDDED_SIDECAR_ID, Ledger, LedgerApi, LedgerError};
use crate::lock::{LockError, ProcessLock};
use crate::metrics::{Metrics, SharedMetrics};
use crate::pb;
use crate::telemetry;
use crate::tls::{ClientTls, ServerTls, TlsError};

/// Where `quotad serve` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Where `quotad ledger` listens by default.
pub const DEFAULT_LEDGER_LISTEN: &str = "127.0.0.1:50052";
/// Where `quotad serve` keeps its state by default (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "quotad-data";
/// Concurrent requests served per client connection; more wait in HTTP/2 flow control.
pub const DEFAULT_CONCURRENCY_PER_CONNECTION: usize = 1_024;
/// Concurrent requests served over all connections; more are refused at once with
/// RESOURCE_EXHAUSTED (see `guard`).
pub const DEFAULT_CONCURRENCY_MAX: usize = 4_096;
/// Longest a request may take to be answered; a client's `grpc-timeout` shortens it.
/// Streams only need their first response within it.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Concurrent HTTP/2 streams a client may open on one connection.
pub const DEFAULT_STREAMS_PER_CONNECTION_MAX: u32 = 1_024;
/// Largest request message accepted by the Quota and Admin services.
pub const DEFAULT_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Largest Sync message (a usage batch) accepted by the Ledger service.
pub const DEFAULT_SYNC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Lease lifetime of the embedded ledger: its one sidecar leases the whole account, so
/// renewal has nothing to balance and only needs to happen now and then.
pub const DEFAULT_EMBEDDED_LEASE_TTL_MS: i64 = 60 * 60 * 1000;
/// Health service name that reports whether the sidecar reaches its ledger.
pub const LEDGER_HEALTH_SERVICE: &str = "quotad.ledger";

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// None: the catalog compiled into the binary.
    pub catalog_path: Option<PathBuf>,
    /// None: the embedded ledger in `data_dir`. Some: a `quotad ledger` at this URL.
    pub ledger_url: Option<String>,
    pub engine: EngineConfig,
    /// Leases of the embedded ledger.
    pub embedded_lease: LeaseConfig,
    pub sync_interval_ms: u64,
    pub sync_batch_max: usize,
    pub journal_queue_max: usize,
    pub journal_batch_max: usize,
    /// fsync per group commit (default), or only what a kill -9 needs.
    pub journal_sync: JournalSync,
    pub limits: Limits,
    /// Serve Prometheus metrics over HTTP here (None: no endpoint).
    pub metrics_listen: Option<SocketAddr>,
    pub auth: AuthConfig,
    /// The token this sidecar presents to a remote ledger (a sidecar or operator token).
    pub ledger_token: Option<String>,
    /// TLS of the channel to a remote ledger.
    pub ledger_tls: ClientTls,
    /// TLS of this server (None: plaintext).
    pub tls: Option<ServerTls>,
    /// Limits of the Envoy services (ext_authz Check, access logs).
    pub envoy: EnvoyLimits,
    /// Webhook delivery (embedded ledger only; `quotad ledger` delivers for its sidecars).
    pub webhooks: crate::webhooks::DeliveryConfig,
}

/// Limits of a gRPC server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency_max: usize,
    pub concurrency_per_connection: usize,
    pub streams_per_connection_max: u32,
    pub message_bytes_max: usize,
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency_max: DEFAULT_CONCURRENCY_MAX,
            concurrency_per_connection: DEFAULT_CONCURRENCY_PER_CONNECTION,
            streams_per_connection_max: DEFAULT_STREAMS_PER_CONNECTION_MAX,
            message_bytes_max: DEFAULT_MESSAGE_BYTES_MAX,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
        }
    }
}

impl ServeConfig {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            listen,
            data_dir,
            catalog_path: None,
            ledger_url: None,
            engine: EngineConfig::default(),
            embedded_lease: LeaseConfig {
                ttl_ms: DEFAULT_EMBEDDED_LEASE_TTL_MS,
                hold_grace_ms: crate::engine::DEFAULT_HOLD_TTL_MAX_MS,
                fleet: false,
            },
            sync_interval_ms: DEFAULT_SYNC_INTERVAL_MS,
            sync_batch_max: DEFAULT_SYNC_BATCH_MAX,
            journal_queue_max: DEFAULT_JOURNAL_QUEUE_MAX,
            journal_batch_max: DEFAULT_JOURNAL_BATCH_MAX,
            journal_sync: JournalSync::default(),
            limits: Limits::default(),
            metrics_listen: None,
            auth: AuthConfig::default(),
            ledger_token: None,
            ledger_tls: ClientTls::default(),
            tls: None,
            envoy: EnvoyLimits::default(),
            webhooks: crate::webhooks::DeliveryConfig::default(),
        }
    }

    /// Where the embedded ledger's first operator token is written.
    pub fn operator_token_file(&self) -> PathBuf {
        self.data_dir.join(auth::OPERATOR_TOKEN_FILE)
    }
}

#[derive(Debug, Clone)]
pub struct LedgerServeConfig {
    pub listen: SocketAddr,
    /// postgres://... or a SQLite file path (sqlite:PATH or a plain path).
    pub database_url: String,
    pub catalog_path: Option<PathBuf>,
    pub lease: LeaseConfig,
    pub pg_pool_max: u32,
    /// Most sidecars shown by name in the metrics (`ledger::sidecars`).
    pub metrics_sidecars_max: usize,
    pub limits: Limits,
    pub metrics_listen: Option<SocketAddr>,
    pub auth: AuthConfig,
    /// Where the first operator token is written if the database has none (None: no
    /// token is made; the command line defaults to `auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE`).
    pub operator_token_file: Option<PathBuf>,
    pub tls: Option<ServerTls>,
    pub webhooks: crate::webhooks::DeliveryConfig,
}

impl LedgerServeConfig {
    pub fn new(listen: SocketAddr, database_url: String) -> LedgerServeConfig {
        LedgerServeConfig {
            listen,
            database_url,
            catalog_path: None,
            lease: LeaseConfig::default(),
            pg_pool_max: DEFAULT_PG_POOL_MAX,
            metrics_sidecars_max: crate::ledger::sidecars::DEFAULT_SIDECAR_SERIES_MAX,
            limits: Limits::default(),
            metrics_listen: None,
            auth: AuthConfig::default(),
            operator_token_file: None,
            tls: None,
            webhooks: crate::webhooks::DeliveryConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog file {path}: {source}")]
    CatalogRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("alert thresholds: {0}")]
    Alerts(#[from] crate::billing::alerts::AlertConfigError),
    #[error("ledger database: {0}")]
    Store(#[from] StoreError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(String),
    #[error("operator token: {0}")]
    Bootstrap(#[from] auth::BootstrapError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error(
        "the ledger at {url} refused this sidecar's token ({message}): give it a sidecar or \
         operator token of that ledger (--ledger-token-file or QUOTAD_LEDGER_TOKEN)"
    )]
    LedgerRefused { url: String, message: String },
}

pub fn load_catalog(path: Option<&PathBuf>) -> Result<Catalog, ServeError> {
    match path {
        None => Ok(Catalog::default_catalog()?),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ServeError::CatalogRead {
                path: p.clone(),
                source,
            })?;
            Ok(Catalog::from_toml(&text)?)
        }
    }
}

/// Opens the ledger store named by `url`: PostgreSQL for postgres:// URLs, else SQLite.
pub async fn open_store(url: &str, pg_pool_max: u32) -> Result<Arc<dyn LedgerStore>, ServeError> {
    if is_postgres(url) {
        Ok(Arc::new(PgStore::connect(url, pg_pool_max).await?))
    } else {
        Ok(Arc::new(SqliteStore::open(sqlite_path(url))?))
    }
}

/// The SQLite file a non-PostgreSQL ledger URL names (`sqlite:PATH` or a plain path).
fn sqlite_path(url: &str) -> &Path {
    Path::new(url.strip_prefix("sqlite:").unwrap_or(url))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    Ok((listener, local))
}

type Server = JoinHandle<Result<(), tonic::transport::Error>>;
type Layers = tower::layer::util::Stack<
    AuthLayer,
    tower::layer::util::Stack<GuardLayer, tower::layer::util::Identity>,
>;
type Router = tonic::transport::server::Router<Layers>;

/// Serves `router` on `listener` until `stop` turns true; in-flight calls finish first.
fn spawn_server(router: Router, listener: TcpListener, mut stop: watch::Receiver<bool>) -> Server {
    // serve_with_incoming ignores the builder's tcp_nodelay: set it per connection, or
    // Nagle and delayed ACKs add ~40 ms to any response that spans two segments.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn
            && let Err(e) = c.set_nodelay(true)
        {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        conn
    });
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    }))
}

/// The server builder: limits, TLS if configured, then the guard (outermost: request
/// ids, shedding, metrics) and authentication, before any service.
fn builder(
    limits: Limits,
    metrics: &SharedMetrics,
    auth: Arc<Authenticator>,
    tls: Option<&ServerTls>,
) -> Result<tonic::transport::Server<Layers>, ServeError> {
    let mut b = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        b = b.tls_config(tls.config()?)?;
    }
    Ok(
        b.concurrency_limit_per_connection(limits.concurrency_per_connection)
            .http2_max_pending_accept_reset_streams(Some(64))
            .max_concurrent_streams(Some(limits.streams_per_connection_max))
            .timeout(Duration::from_millis(limits.request_timeout_ms))
            .layer(GuardLayer::new(limits.concurrency_max, metrics.clone()))
            .layer(AuthLayer::new(auth)),
    )
}

/// Starts the metrics endpoint if one is configured; it stops with `stop`.
async fn start_metrics(
    listen: Option<SocketAddr>,
    metrics: &SharedMetrics,
    stop: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, ServeError> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let (listener, local) = crate::metrics::bind(addr).await?;
    tokio::spawn(crate::metrics::serve(listener, metrics.clone(), stop));
    tracing::info!(addr = %local, "metrics at http://{local}/metrics");
    Ok(Some(local))
}

fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    Ok((v1, v1alpha))
}

async fn join(server: Server) -> Result<(), ServeError> {
    match server.await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ServeError::Task(e.to_string())),
    }
}

/// A sidecar that is serving. Drop without `shutdown` only in tests that simulate a crash.
pub struct Running {
    pub addr: SocketAddr,
    /// Where the metrics endpoint listens, if it is on.
    pub metrics_addr: Option<SocketAddr>,
    metrics: SharedMetrics,
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    server: Server,
    sync: JoinHandle<()>,
    health: HealthReporter,
    settler: Arc<envoy::accesslog::Settler>,
    /// The data directory's lock, let go once the journal is closed.
    lock: ProcessLock,
}

impl Running {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn metrics(&self) -> &SharedMetrics {
        &self.metrics
    }

    /// Stops accepting, lets in-flight calls finish, pushes acknowledged usage to the
    /// ledger, gives leases back and closes the journal.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        tracing::info!("draining");
        not_serving(&self.health).await;
        let _ = self.stop.send(true);
        self.engine.close_streams();
        let served = join(self.server).await;
        if !self.settler.drain().await {
            tracing::warn!("requests finished behind Envoy still settling at shutdown");
        }
        let _ = self.sync.await;
        if let Err(e) = self.engine.flush().await {
            tracing::warn!(error = %e, backlog = self.engine.journal().outbox_len(),
                "usage not yet at the ledger stays in the journal for the next start");
        }
        if let Err(e) = self.engine.release_leases().await {
            tracing::warn!(error = %e, "leases not given back; they lapse at their expiry");
        }
        self.engine.journal().close().await;
        drop(self.lock);
        tracing::info!("stopped");
        served
    }
}

/// Draining: every service, and the server as a whole (""), reports NOT_SERVING so load
/// balancers stop sending before the listener closes.
async fn not_serving(health: &HealthReporter) {
    for service in [
        "",
        <pb::quota_server::QuotaServer<QuotaService> as tonic::server::NamedService>::NAME,
        <pb::admin_server::AdminServer<AdminService> as tonic::server::NamedService>::NAME,
        <pb::ledger_server::LedgerServer<LedgerService> as tonic::server::NamedService>::NAME,
    ] {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}

/// The ledger a sidecar talks to, the embedded one if any, the sidecar's id at it, and
/// where its callers' tokens are checked.
type LedgerParts = (
    Arc<dyn LedgerApi>,
    Option<Arc<Ledger>>,
    String,
    Arc<dyn TokenSource>,
);

/// Opens everything under `cfg.data_dir` and starts serving on `cfg.listen`.
pub async fn start(cfg: ServeConfig, clock: SharedClock) -> Result<Running, ServeError> {
    survive_file_size_limit();
    // What can fail without writing anything comes first: the port, the catalog.
    let (listener, addr) = bind(cfg.listen).await?;
    let metrics = Metrics::new();
    let (stop, stop_rx) = watch::channel(false);
    let metrics_addr = start_metrics(cfg.metrics_listen, &metrics, stop_rx.clone()).await?;
    let catalog = Arc::new(load_catalog(cfg.catalog_path.as_ref())?);
    cfg.engine.alerts.validate()?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServeError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let lock = ProcessLock::data_dir(&cfg.data_dir)?;
    let mut engine_cfg = cfg.engine.clone();
    // Where this sidecar's durable events go for webhook delivery.
    let mut event_queue: Option<Arc<dyn crate::webhooks::forward::EventQueue>> = None;
    let (ledger_api, embedded, sidecar_id, tokens): LedgerParts = match &cfg.ledger_url {
        None => {
            let store: Arc<dyn LedgerStore> =
                Arc::new(SqliteStore::open(&cfg.data_dir.join("ledger.db"))?);
            let ledger = Arc::new(Ledger::new(
                store,
                catalog.clone(),
                clock.clone(),
                cfg.embedded_lease,
            ));
            let hint = bootstrap::serve_ctl_hint(&cfg.data_dir);
            bootstrap::bootstrap_auth(&cfg.auth, &ledger, Some(&cfg.operator_token_file()), &hint)
                .await?;
            engine_cfg.leasing.lease_whole_account = true;
            (
                ledger.clone(),
                Some(ledger.clone()),
                EMBEDDED_SIDECAR_ID.to_owned(),
                Arc::new(LedgerSource(ledger)),
            )
        }
        Some(url) => {
            if cfg.auth.disabled {
                tracing::warn!("authentication is OFF (auth_disabled): local development only");
            } else if cfg.ledger_token.is_none() {
                tracing::warn!(
                    "no ledger token (ledger_token_file or QUOTAD_LEDGER_TOKEN): the ledger \
                     will refuse this sidecar unless it runs with auth_disabled"
                );
            }
            let tls = if cfg.ledger_tls.is_set() || url.starts_with("https://") {
                Some(cfg.ledger_tls.config()?)
            } else {
                None
            };
            let remote = Arc::new(RemoteLedger::connect(
                url,
                &catalog.currency,
                cfg.ledger_token.as_deref(),
                tls,
            )?);
            bootstrap::check_ledger_token(&remote, url, &cfg).await?;
            event_queue = Some(remote.clone());
            (
                remote.clone(),
                None,
                bootstrap::sidecar_id(&cfg.data_dir)?,
                remote,
            )
        }
    };
    let authenticator = Arc::new(Authenticator::new(cfg.auth.clone(), tokens, clock.clone()));
    let (journal, mut recovered) = Journal::open_with(
        &cfg.data_dir.join("journal.log"),
        cfg.journal_queue_max,
        cfg.journal_batch_max,
        cfg.journal_sync,
    )?;
    // Events the journal holds that the webhook outbox has not taken yet.
    let journaled_events = std::mem::take(&mut recovered.events);
    let engine = Engine::start(
        engine_cfg,
        catalog.clone(),
        clock.clone(),
        Arc::new(journal),
        recovered,
        ledger_api,
        sidecar_id.clone(),
    )
    .await?;

    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::quota_server::QuotaServer<QuotaService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    telemetry::sidecar(&metrics, &engine);
    let quota = pb::quota_server::QuotaServer::new(QuotaService::with_metrics(
        engine.clone(),
        metrics.clone(),
    ))
    .max_decoding_message_size(cfg.limits.message_bytes_max);
    let (ext_authz, access_log, settler) =
        envoy_services(&engine, &authenticator, &metrics, cfg.envoy);
    let embedded_ledger = embedded.clone();
    let admin = match embedded {
        Some(ledger) => {
            health
                .set_serving::<pb::admin_server::AdminServer<AdminService>>()
                .await;
            Some(
                pb::admin_server::AdminServer::new(
                    AdminService::new(ledger, Some(engine.clone()))
                        .with_auth(authenticator.clone()),
                )
                .max_decoding_message_size(cfg.limits.message_bytes_max),
            )
        }
        None => None,
    };
    // A remote ledger's sidecar reads the catalog and says where the rest of Admin is.
    let sidecar_admin = cfg.ledger_url.as_deref().map(|url| {
        pb::admin_server::AdminServer::new(SidecarAdmin::new(catalog.clone(), url))
            .max_decoding_message_size(cfg.limits.message_bytes_max)
    });
    // Health follows whether the ledger answers; Quota keeps serving from leases.
    let mut ledger_state = engine.ledger_state();
    let reporter = health.clone();
    tokio::spawn(async move {
        loop {
            let up = *ledger_state.borrow_and_update();
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(LEDGER_HEALTH_SERVICE, status)
                .await;
            if ledger_state.changed().await.is_err() {
                break;
            }
        }
    });

    if let Some(ledger) = &embedded_ledger {
        let hooks =
            crate::webhooks::start::start(ledger, cfg.webhooks, &metrics, clock, stop_rx.clone());
        event_queue = Some(hooks.queue);
    }
    if let Some(q) = event_queue {
        crate::webhooks::start::forward_from(&engine, q, journaled_events);
    }
    let sync = tokio::spawn(engine::sync::run(
        engine.clone(),
        cfg.sync_interval_ms,
        cfg.sync_batch_max,
        stop_rx.clone(),
    ));
    let router = builder(cfg.limits, &metrics, authenticator, cfg.tls.as_ref())?
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(quota)
        .add_service(ext_authz)
        .add_service(access_log)
        .add_optional_service(admin)
        .add_optional_service(sidecar_admin);
    let server = spawn_server(router, listener, stop_rx);
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), %sidecar_id,
        ledger = cfg.ledger_url.as_deref().unwrap_or("embedded"),
        currency = %catalog.currency, skus = catalog.prices.len() + catalog.offers.len(),
        "quotad serving");
    Ok(Running {
        addr,
        metrics_addr,
        metrics,
        engine,
        stop,
        server,
        sync,
        health,
        settler,
        lock,
    })
}

type ExtAuthz = envoy_types::ext_authz::v3::pb::AuthorizationServer<envoy::authz::AuthzService>;

/// Envoy's ext_authz Check and the access log service (`crate::envoy`), for proxy tokens.
fn envoy_services(
    engine: &Arc<Engine>,
    auth: &Arc<Authenticator>,
    metrics: &SharedMetrics,
    limits: EnvoyLimits,
) -> (
    ExtAuthz,
    envoy::accesslog::AccessLogServer,
    Arc<envoy::accesslog::Settler>,
) {
    let authz = envoy::authz::AuthzService::new(engine.clone(), auth.clone(), metrics.clone());
    let ext_authz = ExtAuthz::new(authz).max_decoding_message_size(limits.check_message_bytes_max);
    let stats = SettleStats::new();
    stats.export(metrics);
    let settler = envoy::accesslog::Settler::new(engine.clone(), stats, limits);
    let access_log = envoy::accesslog::AccessLogServer::new(settler.clone());
    (ext_authz, access_log, settler)
}

/// A ledger process that is serving.
pub struct RunningLedger {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub ledger: Arc<Ledger>,
    stop: watch::Sender<bool>,
    server: Server,
    health: HealthReporter,
    /// A SQLite database's lock (PostgreSQL serves several ledger processes).
    _lock: Option<ProcessLock>,
}

impl RunningLedger {
    /// Stops accepting and lets in-flight calls finish; the database holds everything.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        not_serving(&self.health).await;
        let _ = self.stop.send(true);
        join(self.server).await
    }
}

/// Under a file size limit (`ulimit -f`), a write past it must fail with EFBIG, which the
/// journal reports and survives like a full disk, rather than kill the process (the
/// default action of SIGXFSZ). Catching the signal is enough; each one is logged.
fn survive_file_size_limit() {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // SIGXFSZ on x86-64 and aarch64 Linux.
        const SIGXFSZ: i32 = 25;
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| match signal(SignalKind::from_raw(SIGXFSZ)) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        tracing::warn!("a write reached the file size limit (SIGXFSZ)");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot catch SIGXFSZ"),
        });
    }
}

/// Starts the authoritative ledger: Admin and Ledger services over the database.
pub async fn start_ledger(
    cfg: LedgerServeConfig,
    clock: SharedClock,
) -> Result<RunningLedger, ServeError> {
    let (listener, addr) = bind(cfg.listen).await?;
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let metrics_addr = start_metrics(cfg.metrics_listen, &metrics, stop_rx.clone()).await?;
    let catalog = Arc::new(load_catalog(cfg.catalog_path.as_ref())?);
    let lock = match is_postgres(&cfg.database_url) {
        true => None,
        false => Some(ProcessLock::sqlite_file(sqlite_path(&cfg.database_url))?),
    };
    let store = open_store(&cfg.database_url, cfg.pg_pool_max).await?;
    let ledger = Arc::new(
        Ledger::new(store, catalog.clone(), clock.clone(), cfg.lease)
            .with_sidecar_series_max(cfg.metrics_sidecars_max),
    );
    let hint = match &cfg.operator_token_file {
        Some(path) => bootstrap::ledger_ctl_hint(path),
        None => String::new(),
    };
    bootstrap::bootstrap_auth(
        &cfg.auth,
        &ledger,
        cfg.operator_token_file.as_deref(),
        &hint,
    )
    .await?;
    let authenticator = Arc::new(Authenticator::new(
        cfg.auth.clone(),
        Arc::new(LedgerSource(ledger.clone())),
        clock.clone(),
    ));
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    health
        .set_serving::<pb::ledger_server::LedgerServer<LedgerService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let admin = pb::admin_server::AdminServer::new(
        AdminService::new(ledger.clone(), None).with_auth(authenticator.clone()),
    )
    .max_decoding_message_size(cfg.limits.message_bytes_max);
    let sync = pb::ledger_server::LedgerServer::new(LedgerService::new(ledger.clone()))
        .max_decoding_message_size(DEFAULT_SYNC_MESSAGE_BYTES_MAX);
    telemetry::ledger(&metrics, &ledger, stop_rx.clone());
    crate::webhooks::start::start(
        &ledger,
        cfg.webhooks,
        &metrics,
        clock.clone(),
        stop_rx.clone(),
    );
    // GetBalance from the ledger's view; the other Quota calls say they are the sidecars'.
    let quota = pb::quota_server::QuotaServer::new(LedgerQuota::new(ledger.clone()))
        .max_decoding_message_size(cfg.limits.message_bytes_max);
    let router = builder(cfg.limits, &metrics, authenticator, cfg.tls.as_ref())?
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(sync)
        .add_service(quota);
    let server = spawn_server(router, listener, stop_rx);
    tracing::info!(%addr, lease_ttl_ms = cfg.lease.ttl_ms, hold_grace_ms = cfg.lease.hold_grace_ms,
        "quotad ledger serving");
    Ok(RunningLedger {
        addr,
        metrics_addr,
        ledger,
        stop,
        server,
        health,
        _lock: lock,
    })
}
