//! Shared harness for the black-box tests: a real quotad on 127.0.0.1:0 with a manual clock,
//! and clients over real gRPC.

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

pub struct Harness {
    pub running: Option<Running>,
    pub clock: Arc<ManualClock>,
    pub quota: QuotaClient<Ch>,
    pub admin: AdminClient<Ch>,
    pub dir: tempfile::TempDir,
    /// The operator token the sidecar wrote in its data directory on first start.
    pub token: String,
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
        let (quota, admin) = connect(running.addr, &token).await;
        Harness {
            running: Some(running),
            clock,
            quota,
            admin,
            dir,
            token,
        }
    }

    pub fn engine(&self) -> &Arc<quotad::engine::Engine> {
        self.running.as_ref().unwrap().engine()
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
        let (quota, admin) = connect(running.addr, &self.token).await;
        self.quota = quota;
        self.admin = admin;
        self.running = Some(running);
    }

    pub async fn create(&mut self, account: &str, balance: &str) -> pb::Balance {
        create_account(&mut self.admin, account, balance).await
    }

    pub async fn buy(
        &mut self,
        account: &str,
        sku: &str,
        purchase_id: &str,
    ) -> pb::PurchaseResponse {
        self.admin
            .purchase(pb::PurchaseRequest {
                account_id: account.into(),
                sku: sku.into(),
                purchase_id: purchase_id.into(),
                effective_at_ms: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn coupon(
        &mut self,
        account: &str,
        grant_id: &str,
        amount: &str,
        expires_at_ms: i64,
    ) -> pb::Grant {
        self.admin
            .grant_credit(coupon_req(account, grant_id, amount, expires_at_ms))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn reserve(
        &mut self,
        account: &str,
        id: &str,
        ms: i64,
    ) -> Result<pb::ReserveResponse, tonic::Status> {
        self.quota
            .reserve(reserve_req(account, id, ms))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn commit(&mut self, id: &str, ms: i64) -> Result<pb::CommitResponse, tonic::Status> {
        self.quota
            .commit(pb::CommitRequest {
                reservation_id: id.into(),
                quantity: ms,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn release(&mut self, id: &str) -> Result<pb::ReleaseResponse, tonic::Status> {
        self.quota
            .release(pb::ReleaseRequest {
                reservation_id: id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn balance(&mut self, account: &str) -> pb::Balance {
        balance_of(&mut self.quota, account).await
    }

    pub async fn statement(&mut self, account: &str) -> pb::Statement {
        statement_of(&mut self.admin, account).await
    }
}

pub async fn create_account(
    admin: &mut AdminClient<Ch>,
    account: &str,
    balance: &str,
) -> pb::Balance {
    admin
        .create_account(pb::CreateAccountRequest {
            account_id: account.into(),
            balance: Some(money(balance)),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn balance_of(quota: &mut QuotaClient<Ch>, account: &str) -> pb::Balance {
    quota
        .get_balance(pb::GetBalanceRequest {
            account_id: account.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn statement_of(admin: &mut AdminClient<Ch>, account: &str) -> pb::Statement {
    admin
        .get_statement(pb::GetStatementRequest {
            account_id: account.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Clients of the quotad at `addr` that send `token` (empty: no token).
pub async fn connect(
    addr: std::net::SocketAddr,
    token: &str,
) -> (QuotaClient<Ch>, AdminClient<Ch>) {
    let ch = with_token(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
        token,
    );
    (QuotaClient::new(ch.clone()), AdminClient::new(ch))
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

pub fn reserve_req(account: &str, id: &str, ms: i64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        account_id: account.into(),
        reservation_id: id.into(),
        resource: pb::Resource::GpuShared as i32,
        sku: A10.into(),
        quantity: ms,
        ttl_ms: 0,
    }
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

/// A GrantCredit request for a coupon on any resource.
pub fn coupon_req(
    account: &str,
    id: &str,
    amt: &str,
    expires_at_ms: i64,
) -> pb::GrantCreditRequest {
    pb::GrantCreditRequest {
        account_id: account.into(),
        grant_id: id.into(),
        kind: pb::grant::Kind::Coupon as i32,
        resource: pb::Resource::Unspecified as i32,
        amount: Some(money(amt)),
        expires_at_ms,
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
    pub async fn open(quota: &mut QuotaClient<Ch>, account: &str, work_id: &str) -> Job {
        Self::open_result(quota, account, work_id).await.unwrap()
    }

    pub async fn open_result(
        quota: &mut QuotaClient<Ch>,
        account: &str,
        work_id: &str,
    ) -> Result<Job, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let rx = quota
            .stream_usage(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Job {
            account: account.into(),
            work_id: work_id.into(),
            tx: Some(tx),
            rx,
        })
    }

    pub fn report_msg(&self, seq: u64, ms: i64) -> pb::UsageReport {
        pb::UsageReport {
            account_id: self.account.clone(),
            work_id: self.work_id.clone(),
            resource: pb::Resource::GpuShared as i32,
            sku: A10.into(),
            quantity: ms,
            seq,
        }
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
