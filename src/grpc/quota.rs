//! The Quota service: validate, convert, call the engine. Nothing else.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, money_out};
use super::usage_stream;
pub use super::usage_stream::meter;
use crate::auth::{Caller, Permission};
use crate::engine::events::{Event, WatchGuard};
use crate::engine::{Engine, EngineError};
use crate::metrics::{Counter, SharedMetrics};
use crate::pb;

pub struct QuotaService {
    engine: Arc<Engine>,
    currency: String,
    metrics: SharedMetrics,
    /// The admitted-decision counter of each deciding RPC, resolved once: the common
    /// outcome costs one relaxed add, no label lookup.
    admitted: [(&'static str, Counter); 4],
}

impl QuotaService {
    pub fn new(engine: Arc<Engine>) -> QuotaService {
        QuotaService::with_metrics(engine, crate::metrics::Metrics::new())
    }

    /// Counts decisions and Watch lag into `metrics`.
    pub fn with_metrics(engine: Arc<Engine>, metrics: SharedMetrics) -> QuotaService {
        let currency = engine.catalog().currency.clone();
        let admitted = ["Admit", "Reserve", "StartSession", "StreamUsage"]
            .map(|rpc| (rpc, metrics.decision_counter(rpc, true, "")));
        QuotaService {
            engine,
            currency,
            metrics,
            admitted,
        }
    }

    /// Commit and Release act on the reservation's account. A reservation of an account the
    /// caller has nothing to do with is answered as unknown, so its existence does not
    /// leak; a sub-user with some access there but not `reserve` is told what to ask for.
    fn allow_reservation(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        if let Some(account) = self.engine.reservation_account(id) {
            if !caller.sees(&account) {
                return Err(EngineError::UnknownReservation(id.to_owned()).into());
            }
            caller.allow(&account, Permission::Reserve)?;
        }
        Ok(())
    }

    /// Heartbeat and StopSession act on the session's account, with the same rule.
    async fn allow_session(&self, caller: &Caller, id: &str) -> Result<(), Status> {
        if let Some(account) = self.engine.session_account(id).await {
            if !caller.sees(&account) {
                return Err(EngineError::UnknownSession(id.to_owned()).into());
            }
            caller.allow(&account, Permission::Sessions)?;
        }
        Ok(())
    }

    fn decided(&self, rpc: &'static str, admitted: bool, reason: i32) {
        if admitted && let Some((_, c)) = self.admitted.iter().find(|(r, _)| *r == rpc) {
            c.inc();
            return;
        }
        self.metrics
            .decision(rpc, admitted, convert::decision_label(admitted, reason));
    }
}

#[tonic::async_trait]
impl pb::quota_server::Quota for QuotaService {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = convert::reserve_in(request.get_ref())?;
        caller.allow(&req.account_id, Permission::Reserve)?;
        if let Some(other) = self.engine.reservation_account(&req.reservation_id)
            && !caller.sees(&other)
        {
            return Err(EngineError::ReservationMismatch {
                id: req.reservation_id,
                detail: "the id is taken".into(),
            }
            .into());
        }
        let o = self.engine.reserve(req).await?;
        let reason = convert::deny_reason(o.reason);
        self.decided("Reserve", o.admitted, reason);
        Ok(Response::new(pb::ReserveResponse {
            admitted: o.admitted,
            reason,
            held: money_out(&self.currency, o.held),
            available: money_out(&self.currency, o.available),
            expires_at_ms: o.expires_at_ms,
            fail_open: o.fail_open,
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let id = convert::id("reservation_id", &r.reservation_id)?;
        self.allow_reservation(&caller, id)?;
        let quantity = convert::quantity(r.quantity, true)?;
        let o = self.engine.commit(id, quantity).await?;
        Ok(Response::new(pb::CommitResponse {
            charged: money_out(&self.currency, o.charged),
            available: money_out(&self.currency, o.available),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let id = convert::id("reservation_id", &r.reservation_id)?;
        self.allow_reservation(&caller, id)?;
        let released = self.engine.release(id).await?;
        Ok(Response::new(pb::ReleaseResponse {
            released: money_out(&self.currency, released),
        }))
    }

    async fn admit(
        &self,
        request: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::AdmitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        caller.allow(account_id, Permission::Admit)?;
        let resource = convert::metered_resource(r.resource)?;
        let sku = convert::sku(&r.sku)?;
        let quantity = convert::quantity(r.quantity, false)?;
        let o = self
            .engine
            .admit(account_id, resource, sku, quantity)
            .await?;
        let reason = convert::deny_reason(o.reason);
        self.decided("Admit", o.admitted, reason);
        Ok(Response::new(pb::AdmitResponse {
            admitted: o.admitted,
            reason,
            available: money_out(&self.currency, o.available),
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        caller.allow(account_id, Permission::Balance)?;
        let v = self.engine.balance(account_id).await?;
        let c = &self.currency;
        let mut b = convert::balance_out(c, &v);
        let sessions = self.engine.sessions_of(account_id).await;
        b.sessions = sessions
            .into_iter()
            .map(|s| convert::session_out(c, s))
            .collect();
        let works = self.engine.works_of(account_id);
        b.streams = works.into_iter().map(|w| convert::work_out(c, w)).collect();
        let a = self.engine.accruals(account_id).await?;
        b.accruals = Some(convert::accruals_out(c, &a));
        Ok(Response::new(b))
    }

    async fn report_storage(
        &self,
        request: Request<pb::ReportStorageRequest>,
    ) -> Result<Response<pb::ReportStorageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        // A storage level is metered usage like a Commit: the same permission charges it.
        caller.allow(account_id, Permission::Reserve)?;
        let (bytes, at_ms) = convert::storage_level_in(&r)?;
        self.engine.report_storage(account_id, bytes, at_ms).await?;
        Ok(Response::new(pb::ReportStorageResponse {}))
    }

    type StreamUsageStream = ReceiverStream<Result<pb::UsageDecision, Status>>;
    type WatchStream = EventStream;

    async fn stream_usage(
        &self,
        request: Request<Streaming<pb::UsageReport>>,
    ) -> Result<Response<Self::StreamUsageStream>, Status> {
        let caller = Caller::of(&request)?;
        let cfg = self.engine.config();
        if self.engine.streams_open() >= cfg.work.streams_max {
            return Err(EngineError::StreamsFull(cfg.work.streams_max).into());
        }
        let (tx, rx) = mpsc::channel(cfg.work.stream_buffer.max(1));
        let engine = self.engine.clone();
        let currency = self.currency.clone();
        let metrics = Some(self.metrics.clone());
        tokio::spawn(usage_stream::meter_with(
            engine,
            currency,
            request.into_inner(),
            tx,
            metrics,
            Caller::clone(&caller),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn start_session(
        &self,
        request: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = convert::start_session_in(request.get_ref())?;
        caller.allow(&req.account_id, Permission::Sessions)?;
        if let Some(other) = self.engine.session_account(&req.session_id).await
            && !caller.sees(&other)
        {
            return Err(EngineError::SessionMismatch {
                id: req.session_id,
                detail: "the id is taken".into(),
            }
            .into());
        }
        let o = self.engine.start_session(req).await?;
        let reason = convert::deny_reason(o.reason);
        self.decided("StartSession", o.admitted, reason);
        Ok(Response::new(pb::StartSessionResponse {
            admitted: o.admitted,
            reason,
            held: money_out(&self.currency, o.held),
            started_at_ms: o.started_at_ms,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let id = convert::id("session_id", &r.session_id)?;
        self.allow_session(&caller, id).await?;
        let st = self.engine.heartbeat(id, r.busy).await?;
        let (action, reason, cause) = convert::session_outcome(st.state);
        Ok(Response::new(pb::HeartbeatResponse {
            action: action.into(),
            reason: convert::deny_reason(reason),
            stop_cause: cause.into(),
            stopped_at_ms: st.stopped_at_ms,
        }))
    }

    async fn stop_session(
        &self,
        request: Request<pb::StopSessionRequest>,
    ) -> Result<Response<pb::StopSessionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let id = convert::id("session_id", &r.session_id)?;
        self.allow_session(&caller, id).await?;
        let st = self.engine.stop_session(id).await?;
        Ok(Response::new(pb::StopSessionResponse {
            charged: money_out(&self.currency, st.charged),
            stopped_at_ms: st.stopped_at_ms,
            stop_cause: convert::session_outcome(st.state).2.into(),
        }))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        caller.allow(account_id, Permission::Watch)?;
        let (rx, guard) = self.engine.watch(account_id).await?;
        Ok(Response::new(EventStream {
            inner: Box::pin(BroadcastStream::new(rx)),
            account_id: account_id.to_owned(),
            metrics: self.metrics.clone(),
            _guard: guard,
        }))
    }
}

/// A Watch call's events; holds the subscription for as long as the client listens.
pub struct EventStream {
    inner: Pin<Box<BroadcastStream<Event>>>,
    account_id: String,
    metrics: SharedMetrics,
    _guard: WatchGuard,
}

impl Stream for EventStream {
    type Item = Result<pb::AccountEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        Poll::Ready(Some(Ok(match item {
            Ok(e) => convert::event_out(&e),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                self.metrics.watch_lagged(n);
                convert::events_dropped(&self.account_id, n)
            }
        })))
    }
}
