//! The other server kind's services, so that a call to the wrong server says where to go:
//! a sidecar of a remote ledger serves Admin's GetCatalog (its catalog is the ledger's)
//! and answers every other Admin call UNIMPLEMENTED naming the ledger; the ledger serves
//! Quota's GetBalance (its view of the account, to the operator, the owner and sub-users
//! with `balance`) and answers every other Quota call UNIMPLEMENTED naming the sidecars.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::error::ServedElsewhere;
use crate::auth::{Caller, Permission};
use crate::billing::Catalog;
use crate::ledger::Ledger;
use crate::pb;

/// Admin on a sidecar of a remote ledger.
pub struct SidecarAdmin {
    catalog: Arc<Catalog>,
    ledger_url: String,
}

impl SidecarAdmin {
    pub fn new(catalog: Arc<Catalog>, ledger_url: &str) -> SidecarAdmin {
        SidecarAdmin {
            catalog,
            ledger_url: ledger_url.to_owned(),
        }
    }

    fn elsewhere<T>(&self, rpc: &'static str) -> Result<Response<T>, Status> {
        Err(ServedElsewhere {
            rpc,
            served_by: format!(
                "this sidecar's ledger serves it (`quotad ledger` at {0}; `quotad ctl --addr \
                 {0}`)",
                self.ledger_url
            ),
        }
        .into())
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for SidecarAdmin {
    async fn get_catalog(&self, _: Request<pb::GetCatalogRequest>) -> Answer<pb::Catalog> {
        Ok(Response::new(convert::catalog_out(&self.catalog)))
    }

    async fn create_account(&self, _: Request<pb::CreateAccountRequest>) -> Answer<pb::Balance> {
        self.elsewhere("Admin/CreateAccount")
    }

    async fn top_up(&self, _: Request<pb::TopUpRequest>) -> Answer<pb::Balance> {
        self.elsewhere("Admin/TopUp")
    }

    async fn purchase(&self, _: Request<pb::PurchaseRequest>) -> Answer<pb::PurchaseResponse> {
        self.elsewhere("Admin/Purchase")
    }

    async fn grant_credit(&self, _: Request<pb::GrantCreditRequest>) -> Answer<pb::Grant> {
        self.elsewhere("Admin/GrantCredit")
    }

    async fn get_statement(&self, _: Request<pb::GetStatementRequest>) -> Answer<pb::Statement> {
        self.elsewhere("Admin/GetStatement")
    }

    async fn create_token(
        &self,
        _: Request<pb::CreateTokenRequest>,
    ) -> Answer<pb::CreateTokenResponse> {
        self.elsewhere("Admin/CreateToken")
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Answer<pb::RevokeTokenResponse> {
        self.elsewhere("Admin/RevokeToken")
    }

    async fn grant_access(&self, _: Request<pb::GrantAccessRequest>) -> Answer<pb::AccessResponse> {
        self.elsewhere("Admin/GrantAccess")
    }

    async fn revoke_access(
        &self,
        _: Request<pb::RevokeAccessRequest>,
    ) -> Answer<pb::AccessResponse> {
        self.elsewhere("Admin/RevokeAccess")
    }

    async fn list_accounts(
        &self,
        _: Request<pb::ListAccountsRequest>,
    ) -> Answer<pb::ListAccountsResponse> {
        self.elsewhere("Admin/ListAccounts")
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Answer<pb::ListTokensResponse> {
        self.elsewhere("Admin/ListTokens")
    }

    async fn list_access(
        &self,
        _: Request<pb::ListAccessRequest>,
    ) -> Answer<pb::ListAccessResponse> {
        self.elsewhere("Admin/ListAccess")
    }

    async fn create_webhook(
        &self,
        _: Request<pb::CreateWebhookRequest>,
    ) -> Answer<pb::CreateWebhookResponse> {
        self.elsewhere("Admin/CreateWebhook")
    }

    async fn list_webhooks(
        &self,
        _: Request<pb::ListWebhooksRequest>,
    ) -> Answer<pb::ListWebhooksResponse> {
        self.elsewhere("Admin/ListWebhooks")
    }

    async fn delete_webhook(
        &self,
        _: Request<pb::DeleteWebhookRequest>,
    ) -> Answer<pb::DeleteWebhookResponse> {
        self.elsewhere("Admin/DeleteWebhook")
    }

    async fn test_webhook(
        &self,
        _: Request<pb::TestWebhookRequest>,
    ) -> Answer<pb::TestWebhookResponse> {
        self.elsewhere("Admin/TestWebhook")
    }
}

/// Quota on the ledger.
pub struct LedgerQuota {
    ledger: Arc<Ledger>,
    currency: String,
}

impl LedgerQuota {
    pub fn new(ledger: Arc<Ledger>) -> LedgerQuota {
        let currency = ledger.catalog().currency.clone();
        LedgerQuota { ledger, currency }
    }
}

fn sidecars<T>(rpc: &'static str) -> Result<T, Status> {
    Err(ServedElsewhere {
        rpc,
        served_by: "the sidecars serve it (`quotad serve --ledger` with this ledger), not \
                    the ledger"
            .into(),
    }
    .into())
}

type Nothing<T> = tokio_stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl pb::quota_server::Quota for LedgerQuota {
    type StreamUsageStream = Nothing<pb::UsageDecision>;
    type WatchStream = Nothing<pb::AccountEvent>;

    /// The ledger's view of the account: leases set aside for sidecars count as held; the
    /// sidecars' open holds, sessions and streams are theirs to show.
    async fn get_balance(&self, request: Request<pb::GetBalanceRequest>) -> Answer<pb::Balance> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        caller.allow(account_id, Permission::Balance)?;
        let v = self.ledger.balance_view(account_id).await?;
        Ok(Response::new(convert::balance_out(&self.currency, &v)))
    }

    async fn reserve(&self, _: Request<pb::ReserveRequest>) -> Answer<pb::ReserveResponse> {
        sidecars("Quota/Reserve")
    }

    async fn commit(&self, _: Request<pb::CommitRequest>) -> Answer<pb::CommitResponse> {
        sidecars("Quota/Commit")
    }

    async fn release(&self, _: Request<pb::ReleaseRequest>) -> Answer<pb::ReleaseResponse> {
        sidecars("Quota/Release")
    }

    async fn admit(&self, _: Request<pb::AdmitRequest>) -> Answer<pb::AdmitResponse> {
        sidecars("Quota/Admit")
    }

    async fn stream_usage(
        &self,
        _: Request<Streaming<pb::UsageReport>>,
    ) -> Answer<Self::StreamUsageStream> {
        sidecars("Quota/StreamUsage")
    }

    async fn start_session(
        &self,
        _: Request<pb::StartSessionRequest>,
    ) -> Answer<pb::StartSessionResponse> {
        sidecars("Quota/StartSession")
    }

    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Answer<pb::HeartbeatResponse> {
        sidecars("Quota/Heartbeat")
    }

    async fn stop_session(
        &self,
        _: Request<pb::StopSessionRequest>,
    ) -> Answer<pb::StopSessionResponse> {
        sidecars("Quota/StopSession")
    }

    async fn report_storage(
        &self,
        _: Request<pb::ReportStorageRequest>,
    ) -> Answer<pb::ReportStorageResponse> {
        sidecars("Quota/ReportStorage")
    }

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Answer<Self::WatchStream> {
        sidecars("Quota/Watch")
    }
}
