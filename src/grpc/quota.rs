//! The Quota service: validate, convert, call the engine. Nothing else.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, money_out};
use super::error::Invalid;
use crate::engine::{self, Engine};
use crate::pb;

pub struct QuotaService {
    engine: Arc<Engine>,
    currency: String,
}

impl QuotaService {
    pub fn new(engine: Arc<Engine>) -> QuotaService {
        let currency = engine.catalog().currency.clone();
        QuotaService { engine, currency }
    }
}

/// The Balance message for an account view.
pub fn balance_out(currency: &str, v: &engine::BalanceView) -> pb::Balance {
    use crate::billing::AccountStatus as S;
    let status = match v.status {
        S::Active => pb::balance::AccountStatus::Active,
        S::Overdue => pb::balance::AccountStatus::Overdue,
        S::NoEntitlement => pb::balance::AccountStatus::NoEntitlement,
    };
    pb::Balance {
        account_id: v.account_id.clone(),
        status: status as i32,
        balance: money_out(currency, v.balance),
        available: money_out(currency, v.available),
        held: money_out(currency, v.held),
        grants: v
            .grants
            .iter()
            .map(|g| convert::grant_out(currency, g, v.now_ms))
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::quota_server::Quota for QuotaService {
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let r = request.into_inner();
        if r.ttl_ms < 0 {
            return Err(Invalid(format!("ttl_ms {} must not be negative", r.ttl_ms)).into());
        }
        let req = engine::ReserveRequest {
            account_id: convert::id("account_id", &r.account_id)?.to_owned(),
            reservation_id: convert::id("reservation_id", &r.reservation_id)?.to_owned(),
            resource: convert::metered_resource(r.resource)?,
            sku: convert::sku(&r.sku)?.to_owned(),
            quantity: convert::quantity(r.quantity, false)?,
            ttl_ms: r.ttl_ms,
        };
        let o = self.engine.reserve(req).await?;
        Ok(Response::new(pb::ReserveResponse {
            admitted: o.admitted,
            reason: convert::deny_reason(o.reason),
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
        let r = request.into_inner();
        let id = convert::id("reservation_id", &r.reservation_id)?;
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
        let r = request.into_inner();
        let id = convert::id("reservation_id", &r.reservation_id)?;
        let released = self.engine.release(id).await?;
        Ok(Response::new(pb::ReleaseResponse {
            released: money_out(&self.currency, released),
        }))
    }

    async fn admit(
        &self,
        request: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::AdmitResponse>, Status> {
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let resource = convert::metered_resource(r.resource)?;
        let sku = convert::sku(&r.sku)?;
        let quantity = convert::quantity(r.quantity, false)?;
        let o = self
            .engine
            .admit(account_id, resource, sku, quantity)
            .await?;
        Ok(Response::new(pb::AdmitResponse {
            admitted: o.admitted,
            reason: convert::deny_reason(o.reason),
            available: money_out(&self.currency, o.available),
        }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let v = self.engine.balance(account_id).await?;
        Ok(Response::new(balance_out(&self.currency, &v)))
    }
}
