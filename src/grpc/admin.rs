//! The Admin service, for operators: accounts, top-ups, purchases, credits, catalog,
//! statements. Writes go to the ledger. Served by `quotad ledger`, and by `quotad serve`
//! with its embedded ledger, where the sidecar's cached view of the account is refreshed
//! before answering so the next Reserve sees the change.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, money_out};
use super::error::Invalid;
use crate::auth::{self, AuthError, Authenticator, Caller, Kind, Permission, Perms};
use crate::billing::Money;
use crate::billing::burndown::FREE_TIER_LABEL;
use crate::engine::Engine;
use crate::ledger::Ledger;
use crate::pb;

/// Most rows one listing (ListAccounts, ListTokens, ListAccess) answers; a request may
/// ask for fewer, and pages on with `after`.
pub const DEFAULT_LIST_MAX: usize = 1_000;

pub struct AdminService {
    ledger: Arc<Ledger>,
    /// The embedded sidecar, if any.
    engine: Option<Arc<Engine>>,
    currency: String,
    /// This process's token cache, cleared when a token or an access changes here.
    auth: Option<Arc<Authenticator>>,
}

impl AdminService {
    pub fn new(ledger: Arc<Ledger>, engine: Option<Arc<Engine>>) -> AdminService {
        let currency = ledger.catalog().currency.clone();
        AdminService {
            ledger,
            engine,
            currency,
            auth: None,
        }
    }

    /// Clears `auth`'s cache on every token or access change.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> AdminService {
        self.auth = Some(auth);
        self
    }

    fn changed(&self) {
        if let Some(a) = &self.auth {
            a.forget_all();
        }
    }

    /// GrantAccess and RevokeAccess: the operator, or the owner of the account.
    fn allow_access_change(caller: &Caller, account_id: &str, rpc: &str) -> Result<(), Status> {
        match caller {
            c if c.is_operator() => Ok(()),
            Caller::Owner { account_id: own } if own == account_id => Ok(()),
            Caller::Owner { account_id: own } => Err(AuthError::OtherAccount {
                owner: own.clone(),
                account: account_id.to_owned(),
            }
            .into()),
            _ => Err(AuthError::OperatorOnly {
                rpc: format!("{rpc} (or the account owner)"),
            }
            .into()),
        }
    }

    /// The account view: the sidecar's (with its holds) in embedded mode, else the
    /// ledger's (with the leases set aside for sidecars as held).
    async fn balance(&self, account_id: &str) -> Result<Response<pb::Balance>, Status> {
        let v = match &self.engine {
            Some(engine) => {
                engine.refresh_account(account_id).await?;
                engine.balance(account_id).await?
            }
            None => self.ledger.balance_view(account_id).await?,
        };
        Ok(Response::new(convert::balance_out(&self.currency, &v)))
    }

    async fn refresh(&self, account_id: &str) -> Result<(), Status> {
        if let Some(engine) = &self.engine {
            engine.refresh_account(account_id).await?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let balance = match &r.balance {
            None => Money::ZERO,
            Some(m) => convert::money_in("balance", &self.currency, Some(m))?,
        };
        if balance.is_negative() {
            return Err(Invalid(format!("opening balance {balance} must not be negative")).into());
        }
        self.ledger.create_account(account_id, balance).await?;
        self.balance(account_id).await
    }

    async fn top_up(
        &self,
        request: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let topup_id = convert::id("topup_id", &r.topup_id)?;
        let amount = convert::money_in("amount", &self.currency, r.amount.as_ref())?;
        if !amount.is_positive() {
            return Err(Invalid(format!("amount {amount} must be greater than zero")).into());
        }
        self.ledger.top_up(account_id, amount, topup_id).await?;
        self.balance(account_id).await
    }

    async fn purchase(
        &self,
        request: Request<pb::PurchaseRequest>,
    ) -> Result<Response<pb::PurchaseResponse>, Status> {
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let purchase_id = convert::id("purchase_id", &r.purchase_id)?;
        let sku = convert::sku(&r.sku)?;
        if r.effective_at_ms < 0 {
            return Err(Invalid(format!(
                "effective_at_ms {} must not be negative",
                r.effective_at_ms
            ))
            .into());
        }
        let (grants, price) = self
            .ledger
            .purchase(account_id, sku, purchase_id, r.effective_at_ms)
            .await?;
        self.refresh(account_id).await?;
        let now_ms = self.ledger.now_ms();
        Ok(Response::new(pb::PurchaseResponse {
            grants: grants
                .iter()
                .map(|g| convert::grant_out(&self.currency, g, now_ms))
                .collect(),
            price_paid: money_out(&self.currency, price),
        }))
    }

    async fn grant_credit(
        &self,
        request: Request<pb::GrantCreditRequest>,
    ) -> Result<Response<pb::Grant>, Status> {
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let grant_id = convert::id("grant_id", &r.grant_id)?;
        if grant_id == "balance" || grant_id == FREE_TIER_LABEL {
            return Err(Invalid(format!(
                "grant_id {grant_id:?} is reserved: statements name the account balance and \
                 the free tier so"
            ))
            .into());
        }
        let kind = convert::credit_kind_in(r.kind)?;
        let covers = convert::covers_in(r.resource)?;
        let amount = convert::money_in("amount", &self.currency, r.amount.as_ref())?;
        if !amount.is_positive() {
            return Err(Invalid(format!("amount {amount} must be greater than zero")).into());
        }
        if r.expires_at_ms <= 0 {
            return Err(Invalid("expires_at_ms is required".into()).into());
        }
        let g = self
            .ledger
            .grant_credit(account_id, grant_id, kind, covers, amount, r.expires_at_ms)
            .await?;
        self.refresh(account_id).await?;
        Ok(Response::new(convert::grant_out(
            &self.currency,
            &g,
            self.ledger.now_ms(),
        )))
    }

    async fn get_catalog(
        &self,
        _request: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::Catalog>, Status> {
        Ok(Response::new(convert::catalog_out(self.ledger.catalog())))
    }

    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        // The operator, the owner, or a sub-user that may see the balance.
        caller.allow(account_id, Permission::Balance)?;
        // Everything acknowledged on the account so far is in the statement; other
        // accounts' usage is not waited for.
        if let Some(engine) = &self.engine {
            engine.flush_account(account_id).await?;
        }
        let (entries, truncated) = self.ledger.statement(account_id).await?;
        Ok(Response::new(pb::Statement {
            account_id: account_id.to_owned(),
            truncated,
            entries: entries
                .into_iter()
                .map(|e| convert::statement_entry_out(&self.currency, e))
                .collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = request.into_inner();
        let p = r
            .principal
            .ok_or_else(|| Invalid("principal is required".into()))?;
        let (kind, account_id, name) = convert::principal_in(&p)?;
        if kind == Kind::Owner {
            // The account must exist: a token for a typo would act on nothing.
            self.ledger.balance_view(&account_id).await?;
        }
        let (row, token) = auth::create_token(&self.ledger, kind, &account_id, &name).await?;
        tracing::info!(token_id = %row.token_id, kind = kind.name(), %account_id, %name,
            "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token_id: row.token_id,
            token,
            principal: Some(pb::Principal {
                kind: p.kind,
                account_id,
                name,
            }),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let r = request.into_inner();
        let token_id = convert::id("token_id", &r.token_id)?;
        let found = self
            .ledger
            .revoke_token(token_id)
            .await
            .map_err(AuthError::from)?;
        if !found {
            return Err(AuthError::UnknownTokenId(token_id.to_owned()).into());
        }
        self.changed();
        tracing::info!(%token_id, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token_id: token_id.to_owned(),
            revoked: true,
        }))
    }

    async fn grant_access(
        &self,
        request: Request<pb::GrantAccessRequest>,
    ) -> Result<Response<pb::AccessResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let sub_user = convert::id("sub_user", &r.sub_user)?;
        Self::allow_access_change(&caller, account_id, "GrantAccess")?;
        let perms = Perms::parse(&r.permissions)?;
        if perms.0 == 0 {
            return Err(Invalid(
                "permissions: name at least one of reserve, admit, sessions, balance, watch".into(),
            )
            .into());
        }
        self.ledger.balance_view(account_id).await?;
        let known = self
            .ledger
            .has_sub_user(sub_user)
            .await
            .map_err(AuthError::from)?;
        if !known {
            return Err(AuthError::UnknownSubUser(sub_user.to_owned()).into());
        }
        let bits = self
            .ledger
            .grant_access(account_id, sub_user, perms.0)
            .await
            .map_err(AuthError::from)?;
        self.changed();
        Ok(Response::new(convert::access_out(
            account_id, sub_user, bits,
        )))
    }

    async fn revoke_access(
        &self,
        request: Request<pb::RevokeAccessRequest>,
    ) -> Result<Response<pb::AccessResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let account_id = convert::id("account_id", &r.account_id)?;
        let sub_user = convert::id("sub_user", &r.sub_user)?;
        Self::allow_access_change(&caller, account_id, "RevokeAccess")?;
        let perms = if r.permissions.is_empty() {
            Perms::all()
        } else {
            Perms::parse(&r.permissions)?
        };
        let bits = self
            .ledger
            .revoke_access(account_id, sub_user, perms.0)
            .await
            .map_err(AuthError::from)?;
        self.changed();
        Ok(Response::new(convert::access_out(
            account_id, sub_user, bits,
        )))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        super::webhooks::create(&self.ledger, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_webhooks(
        &self,
        _request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        super::webhooks::list(&self.ledger).await.map(Response::new)
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        super::webhooks::delete(&self.ledger, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn test_webhook(
        &self,
        request: Request<pb::TestWebhookRequest>,
    ) -> Result<Response<pb::TestWebhookResponse>, Status> {
        super::webhooks::test(&self.ledger, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let r = request.into_inner();
        let limit = convert::list_limit(r.limit, DEFAULT_LIST_MAX);
        let mut account_ids = self
            .ledger
            .list_accounts(&r.after, limit.saturating_add(1))
            .await
            .map_err(AuthError::from)?;
        let more = account_ids.len() > limit;
        account_ids.truncate(limit);
        Ok(Response::new(pb::ListAccountsResponse {
            account_ids,
            more,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let r = request.into_inner();
        let limit = convert::list_limit(r.limit, DEFAULT_LIST_MAX);
        let rows = self
            .ledger
            .list_tokens(&r.after, limit.saturating_add(1))
            .await
            .map_err(AuthError::from)?;
        Ok(Response::new(pb::ListTokensResponse {
            more: rows.len() > limit,
            tokens: rows
                .iter()
                .take(limit)
                .map(convert::token_info_out)
                .collect(),
        }))
    }

    async fn list_access(
        &self,
        request: Request<pb::ListAccessRequest>,
    ) -> Result<Response<pb::ListAccessResponse>, Status> {
        let r = request.into_inner();
        let limit = convert::list_limit(r.limit, DEFAULT_LIST_MAX);
        let rows = self
            .ledger
            .list_access(&r.account_id, limit.saturating_add(1))
            .await
            .map_err(AuthError::from)?;
        Ok(Response::new(pb::ListAccessResponse {
            more: rows.len() > limit,
            access: rows
                .iter()
                .take(limit)
                .map(|a| convert::access_out(&a.account_id, &a.sub_user, a.permissions))
                .collect(),
        }))
    }
}
