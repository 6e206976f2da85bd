//! Shared harness for the black-box tests: a real quotad on 127.0.0.1:0 with a manual clock,
//! and clients over real gRPC.

// Test harness: a failure here is a failed test, so it may unwrap.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]
#![allow(dead_code)]

use std::sync::Arc;

use quotad::auth::{Bearer, BearerChannel};
use quotad::clock::ManualClock;
use quotad::pb;
use quotad::pb::admin_client::AdminClient;
use quotad::pb::quota_client::QuotaClient;
use quotad::server::{self, Running, ServeConfig};
use tonic::transport::Channel;

pub mod procs;

/// Clients send the operator token of the server they were made for (see `connect`).
pub type Ch = BearerChannel;

/// 2026-11-01T00:00:00Z: tests start here unless they say otherwise.
pub const T0_MS: i64 = 1_793_491_200_000;
pub const DAY_MS: i64 = 86_400_000;
pub const A10: &str = "gpu.shared.a10";

/// Short names of the wire enum values tests pass most.
pub const GPU_SHARED: pb::Resource = pb::Resource::GpuShared;
pub const COUPON: pb::grant::Kind = pb::grant::Kind::Coupon;
/// A grant's `resource`: unset, it pays for any resource.
pub const ANY: pb::Resource = pb::Resource::Unspecified;
pub const OPERATOR: pb::principal::Kind = pb::principal::Kind::Operator;
pub const OWNER: pb::principal::Kind = pb::principal::Kind::Owner;
pub const SUB_USER: pb::principal::Kind = pb::principal::Kind::SubUser;
pub const SIDECAR: pb::principal::Kind = pb::principal::Kind::Sidecar;
pub const PROXY: pb::principal::Kind = pb::principal::Kind::Proxy;

/// A real quotad on 127.0.0.1:0 with a manual clock, and a `Client` of it sending the
/// operator token (`h.reserve(...)`, `h.quota`, `h.admin` are the client's).
pub struct Harness {
    pub running: Option<Running>,
    pub clock: Arc<ManualClock>,
    pub client: Client,
    pub dir: tempfile::TempDir,
    /// The operator token the sidecar wrote in its data directory on first start.
    pub token: String,
}

impl std::ops::Deref for Harness {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

pub fn config(dir: &std::path::Path) -> ServeConfig {
    ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.to_path_buf())
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0_MS);
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let running = server::start(cfg, clock.clone()).await.unwrap();
        let token = operator_token(dir.path());
        let client = Client::connect(running.addr, &token).await;
        Harness {
            running: Some(running),
            clock,
            client,
            dir,
            token,
        }
    }

    pub fn engine(&self) -> &Arc<quotad::engine::Engine> {
        self.running.as_ref().unwrap().engine()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.as_ref().unwrap().addr
    }

    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }

    /// Graceful restart on the same data directory and clock.
    pub async fn restart(&mut self) {
        self.shutdown().await;
        let running = server::start(config(self.dir.path()), self.clock.clone())
            .await
            .unwrap();
        self.client = Client::connect(running.addr, &self.token).await;
        self.running = Some(running);
    }
}

/// An amount as a test gives it: a decimal string (CNY), a whole message, or none.
pub trait IntoMoney {
    fn into_money(self) -> Option<pb::Money>;
}

impl IntoMoney for &str {
    fn into_money(self) -> Option<pb::Money> {
        Some(money(self))
    }
}

impl IntoMoney for &String {
    fn into_money(self) -> Option<pb::Money> {
        Some(money(self))
    }
}

impl IntoMoney for pb::Money {
    fn into_money(self) -> Option<pb::Money> {
        Some(self)
    }
}

impl IntoMoney for Option<pb::Money> {
    fn into_money(self) -> Option<pb::Money> {
        self
    }
}

/// Clients of one quotad sending one token: one method per RPC of the Quota and Admin
/// services, taking the request's fields in the request's order (enums as anything that
/// converts to their wire `i32`, so bad values can be sent too), answering as the server
/// did. Streams: `stream_usage` (a `Job`) and `watch`.
#[derive(Clone)]
pub struct Client {
    pub quota: QuotaClient<Ch>,
    pub admin: AdminClient<Ch>,
}

type Answer<T> = Result<T, tonic::Status>;

impl Client {
    /// Clients of the quotad at `addr` that send `token` (empty: no token).
    pub async fn connect(addr: std::net::SocketAddr, token: &str) -> Client {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client::over(with_token(ch, token))
    }

    /// Clients over a channel of the test's own.
    pub fn over(ch: Ch) -> Client {
        Client {
            quota: QuotaClient::new(ch.clone()),
            admin: AdminClient::new(ch),
        }
    }

    pub async fn create_account(
        &mut self,
        account_id: &str,
        balance: impl IntoMoney,
    ) -> Answer<pb::Balance> {
        let req = pb::CreateAccountRequest {
            account_id: account_id.into(),
            balance: balance.into_money(),
        };
        self.admin.create_account(req).await.map(|r| r.into_inner())
    }

    pub async fn top_up(
        &mut self,
        account_id: &str,
        amount: impl IntoMoney,
        topup_id: &str,
    ) -> Answer<pb::Balance> {
        let req = pb::TopUpRequest {
            account_id: account_id.into(),
            amount: amount.into_money(),
            topup_id: topup_id.into(),
        };
        self.admin.top_up(req).await.map(|r| r.into_inner())
    }

    pub async fn purchase(
        &mut self,
        account_id: &str,
        sku: &str,
        purchase_id: &str,
        effective_at_ms: i64,
    ) -> Answer<pb::PurchaseResponse> {
        let req = pb::PurchaseRequest {
            account_id: account_id.into(),
            sku: sku.into(),
            purchase_id: purchase_id.into(),
            effective_at_ms,
        };
        self.admin.purchase(req).await.map(|r| r.into_inner())
    }

    pub async fn grant_credit(
        &mut self,
        account_id: &str,
        grant_id: &str,
        kind: impl Into<i32>,
        resource: impl Into<i32>,
        amount: impl IntoMoney,
        expires_at_ms: i64,
    ) -> Answer<pb::Grant> {
        let req = pb::GrantCreditRequest {
            account_id: account_id.into(),
            grant_id: grant_id.into(),
            kind: kind.into(),
            resource: resource.into(),
            amount: amount.into_money(),
            expires_at_ms,
        };
        self.admin.grant_credit(req).await.map(|r| r.into_inner())
    }

    pub async fn get_catalog(&mut self) -> Answer<pb::Catalog> {
        let req = pb::GetCatalogRequest {};
        self.admin.get_catalog(req).await.map(|r| r.into_inner())
    }

    pub async fn get_statement(&mut self, account_id: &str) -> Answer<pb::Statement> {
        let req = pb::GetStatementRequest {
            account_id: account_id.into(),
        };
        self.admin.get_statement(req).await.map(|r| r.into_inner())
    }

    /// CreateToken for the principal (kind, account_id, name).
    pub async fn create_token(
        &mut self,
        kind: impl Into<i32>,
        account_id: &str,
        name: &str,
    ) -> Answer<pb::CreateTokenResponse> {
        let req = pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: kind.into(),
                account_id: account_id.into(),
                name: name.into(),
            }),
        };
        self.admin.create_token(req).await.map(|r| r.into_inner())
    }

    pub async fn revoke_token(&mut self, token_id: &str) -> Answer<pb::RevokeTokenResponse> {
        let req = pb::RevokeTokenRequest {
            token_id: token_id.into(),
        };
        self.admin.revoke_token(req).await.map(|r| r.into_inner())
    }

    pub async fn grant_access(
        &mut self,
        account_id: &str,
        sub_user: &str,
        permissions: &[&str],
    ) -> Answer<pb::AccessResponse> {
        let req = pb::GrantAccessRequest {
            account_id: account_id.into(),
            sub_user: sub_user.into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        };
        self.admin.grant_access(req).await.map(|r| r.into_inner())
    }

    pub async fn revoke_access(
        &mut self,
        account_id: &str,
        sub_user: &str,
        permissions: &[&str],
    ) -> Answer<pb::AccessResponse> {
        let req = pb::RevokeAccessRequest {
            account_id: account_id.into(),
            sub_user: sub_user.into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        };
        self.admin.revoke_access(req).await.map(|r| r.into_inner())
    }

    pub async fn reserve(
        &mut self,
        account_id: &str,
        reservation_id: &str,
        resource: impl Into<i32>,
        sku: &str,
        quantity: i64,
        ttl_ms: i64,
    ) -> Answer<pb::ReserveResponse> {
        let req = reserve_req(account_id, reservation_id, resource, sku, quantity, ttl_ms);
        self.quota.reserve(req).await.map(|r| r.into_inner())
    }

    pub async fn commit(
        &mut self,
        reservation_id: &str,
        quantity: i64,
    ) -> Answer<pb::CommitResponse> {
        let req = pb::CommitRequest {
            reservation_id: reservation_id.into(),
            quantity,
        };
        self.quota.commit(req).await.map(|r| r.into_inner())
    }

    pub async fn release(&mut self, reservation_id: &str) -> Answer<pb::ReleaseResponse> {
        let req = pb::ReleaseRequest {
            reservation_id: reservation_id.into(),
        };
        self.quota.release(req).await.map(|r| r.into_inner())
    }

    pub async fn admit(
        &mut self,
        account_id: &str,
        resource: impl Into<i32>,
        sku: &str,
        quantity: i64,
    ) -> Answer<pb::AdmitResponse> {
        let req = pb::AdmitRequest {
            account_id: account_id.into(),
            resource: resource.into(),
            sku: sku.into(),
            quantity,
        };
        self.quota.admit(req).await.map(|r| r.into_inner())
    }

    pub async fn get_balance(&mut self, account_id: &str) -> Answer<pb::Balance> {
        let req = pb::GetBalanceRequest {
            account_id: account_id.into(),
        };
        self.quota.get_balance(req).await.map(|r| r.into_inner())
    }

    /// Opens a StreamUsage call for one job (its reports: `Job::report`, `Job::send`).
    pub async fn stream_usage(&mut self, account_id: &str, work_id: &str) -> Answer<Job> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let rx = self
            .quota
            .stream_usage(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Job {
            account: account_id.into(),
            work_id: work_id.into(),
            tx: Some(tx),
            rx,
        })
    }

    pub async fn start_session(
        &mut self,
        account_id: &str,
        session_id: &str,
        sku: &str,
        auto_shutdown: Option<bool>,
        idle_timeout_ms: i64,
    ) -> Answer<pb::StartSessionResponse> {
        let req = pb::StartSessionRequest {
            account_id: account_id.into(),
            session_id: session_id.into(),
            sku: sku.into(),
            auto_shutdown,
            idle_timeout_ms,
        };
        self.quota.start_session(req).await.map(|r| r.into_inner())
    }

    pub async fn heartbeat(
        &mut self,
        session_id: &str,
        busy: bool,
    ) -> Answer<pb::HeartbeatResponse> {
        let req = pb::HeartbeatRequest {
            session_id: session_id.into(),
            busy,
        };
        self.quota.heartbeat(req).await.map(|r| r.into_inner())
    }

    pub async fn stop_session(&mut self, session_id: &str) -> Answer<pb::StopSessionResponse> {
        let req = pb::StopSessionRequest {
            session_id: session_id.into(),
        };
        self.quota.stop_session(req).await.map(|r| r.into_inner())
    }

    pub async fn watch(&mut self, account_id: &str) -> Answer<tonic::Streaming<pb::AccountEvent>> {
        let req = pb::WatchRequest {
            account_id: account_id.into(),
        };
        self.quota.watch(req).await.map(|r| r.into_inner())
    }

    pub async fn report_storage(
        &mut self,
        account_id: &str,
        bytes_stored: i64,
        at_ms: i64,
    ) -> Answer<pb::ReportStorageResponse> {
        let req = pb::ReportStorageRequest {
            account_id: account_id.into(),
            bytes_stored,
            at_ms,
        };
        self.quota.report_storage(req).await.map(|r| r.into_inner())
    }
}

/// A Reserve request, for the tests that send it other than through `Client::reserve` (raw
/// bytes, metadata of their own).
pub fn reserve_req(
    account_id: &str,
    reservation_id: &str,
    resource: impl Into<i32>,
    sku: &str,
    quantity: i64,
    ttl_ms: i64,
) -> pb::ReserveRequest {
    pb::ReserveRequest {
        account_id: account_id.into(),
        reservation_id: reservation_id.into(),
        resource: resource.into(),
        sku: sku.into(),
        quantity,
        ttl_ms,
    }
}

/// A channel that sends `token` (empty: none).
pub fn with_token(ch: Channel, token: &str) -> Ch {
    let t = (!token.is_empty()).then_some(token);
    tonic::service::interceptor::InterceptedService::new(ch, Bearer::new(t).unwrap())
}

/// The operator token `quotad serve` wrote in `data_dir` on first start.
pub fn operator_token(data_dir: &std::path::Path) -> String {
    let path = data_dir.join(quotad::auth::OPERATOR_TOKEN_FILE);
    quotad::auth::read_token_file(&path)
        .unwrap_or_else(|e| panic!("operator token {}: {e}", path.display()))
}

pub fn money(amount: &str) -> pb::Money {
    pb::Money {
        currency: "CNY".into(),
        amount: amount.into(),
    }
}

pub fn amount(m: &Option<pb::Money>) -> String {
    m.as_ref().map(|m| m.amount.clone()).unwrap_or_default()
}

/// Deductions of a statement entry as ("source", "amount") pairs.
pub fn deductions(e: &pb::StatementEntry) -> Vec<(String, String)> {
    e.deductions
        .iter()
        .map(|d| (d.source.clone(), amount(&d.amount)))
        .collect()
}

/// Asserts `r` failed with `code` and a non-empty message containing every needle.
pub fn assert_status<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) {
    let s = match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK {v:?}"),
        Err(s) => s,
    };
    assert_eq!(s.code(), code, "{what}: {s:?}");
    assert!(!s.message().is_empty(), "{what}: empty message");
    for n in needles {
        assert!(
            s.message().contains(n),
            "{what}: message {:?} does not name {n:?}",
            s.message()
        );
    }
}

/// A job metered over one StreamUsage call: one decision per report.
pub struct Job {
    pub account: String,
    pub work_id: String,
    pub tx: Option<tokio::sync::mpsc::Sender<pb::UsageReport>>,
    pub rx: tonic::Streaming<pb::UsageDecision>,
}

impl Job {
    pub fn report_msg(&self, seq: u64, ms: i64) -> pb::UsageReport {
        usage_report(&self.account, &self.work_id, seq, ms)
    }

    /// Sends a report and waits for its decision (or the stream's error).
    pub async fn report(&mut self, seq: u64, ms: i64) -> Result<pb::UsageDecision, tonic::Status> {
        let msg = self.report_msg(seq, ms);
        self.send(msg).await
    }

    pub async fn send(&mut self, msg: pb::UsageReport) -> Result<pb::UsageDecision, tonic::Status> {
        self.tx
            .as_ref()
            .expect("stream still open")
            .send(msg)
            .await
            .expect("request stream open");
        match self.rx.message().await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(tonic::Status::aborted("stream ended")),
            Err(s) => Err(s),
        }
    }

    /// Half-closes and waits for the server to end the stream (the job is then settled).
    pub async fn close(mut self) {
        self.tx.take();
        while let Ok(Some(_)) = self.rx.message().await {}
    }
}

/// A usage report of `ms` milliseconds of A10 time (GPU_SHARED), report `seq` of a job.
pub fn usage_report(account_id: &str, work_id: &str, seq: u64, ms: i64) -> pb::UsageReport {
    pb::UsageReport {
        account_id: account_id.into(),
        work_id: work_id.into(),
        resource: GPU_SHARED.into(),
        sku: A10.into(),
        quantity: ms,
        seq,
    }
}

/// Polls `check` (e.g. a balance) until it holds; panics after a generous bound. For
/// effects that follow a client's disappearance, which no response announces.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1_000 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}: still not true after 10 s");
}
