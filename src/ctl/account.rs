//! The commands about an account's money: create it, top it up, sell it plans, grant it
//! credit, and look at its balance, statement, accruals and the catalog.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::parse::{
    CreditKind, GRANT_RESOURCE, parse_month, parse_non_negative, parse_positive, parse_time,
    parse_zone,
};
use super::statement::{StatementBy, keep_month};
use super::{Command, CtlError, Ctx, Reply, StatementReply};
use crate::billing::Money;
use crate::billing::free_tier::{Calendar, DEFAULT_TIME_ZONE, Month};
use crate::pb;

#[derive(clap::Args, Debug)]
pub struct CreateAccount {
    /// The new account's id
    pub account: String,
    /// Opening balance in --currency
    #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
    #[arg(value_parser = parse_non_negative, default_value = "0")]
    pub balance: Money,
}

impl Command for CreateAccount {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::CreateAccountRequest {
            account_id: self.account,
            balance: Some(ctx.money(self.balance)),
        };
        Ok(Reply::Balance(
            ctx.admin.create_account(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct TopUp {
    /// The account id
    pub account: String,
    /// Amount in --currency, such as 12.50
    #[arg(value_parser = parse_positive, allow_negative_numbers = true)]
    pub amount: Money,
    /// Top-up id; re-running with the same id adds nothing (default: a fresh one)
    #[arg(long, value_name = "TOPUP_ID")]
    pub id: Option<String>,
}

impl Command for TopUp {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let topup_id = ctx.id_or_fresh(self.id, "topup", "top-up")?;
        let req = pb::TopUpRequest {
            account_id: self.account,
            amount: Some(ctx.money(self.amount)),
            topup_id,
        };
        Ok(Reply::Balance(ctx.admin.top_up(req).await?.into_inner()))
    }
}

#[derive(clap::Args, Debug)]
pub struct Purchase {
    /// The account id
    pub account: String,
    /// A plan or package sku of the catalog (see `quotad ctl catalog`)
    pub sku: String,
    /// Purchase id; re-running with the same id buys nothing (default: a fresh one)
    #[arg(long, value_name = "PURCHASE_ID")]
    pub id: Option<String>,
    /// When it was bought, for plans bought elsewhere (RFC 3339; default now)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub effective_at: Option<DateTime<Utc>>,
}

impl Command for Purchase {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let purchase_id = ctx.id_or_fresh(self.id, "purchase", "purchase")?;
        let req = pb::PurchaseRequest {
            account_id: self.account,
            sku: self.sku,
            purchase_id,
            effective_at_ms: self.effective_at.map_or(0, |t| t.timestamp_millis()),
        };
        Ok(Reply::Purchased(
            ctx.admin.purchase(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct GrantCredit {
    /// The account id
    pub account: String,
    /// Id of the new grant; granting the same id again adds nothing
    pub grant_id: String,
    /// Amount in --currency, such as 12.50
    #[arg(value_parser = parse_positive, allow_negative_numbers = true)]
    pub amount: Money,
    /// When the credit expires (RFC 3339)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub expires_at: DateTime<Utc>,
    /// What the credit is recorded as
    #[arg(long, value_enum, default_value_t = CreditKind::Coupon)]
    pub kind: CreditKind,
    /// The resource the credit pays for, or "any"
    #[arg(long, default_value = "any", value_parser = GRANT_RESOURCE)]
    pub resource: pb::Resource,
}

impl Command for GrantCredit {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let kind = match self.kind {
            CreditKind::Coupon => pb::grant::Kind::Coupon,
            CreditKind::Trial => pb::grant::Kind::Trial,
        };
        let req = pb::GrantCreditRequest {
            account_id: self.account,
            grant_id: self.grant_id,
            kind: kind.into(),
            resource: self.resource.into(),
            amount: Some(ctx.money(self.amount)),
            expires_at_ms: self.expires_at.timestamp_millis(),
        };
        Ok(Reply::Grant(
            ctx.admin.grant_credit(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct Balance {
    /// The account id
    pub account: String,
}

impl Command for Balance {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::GetBalanceRequest {
            account_id: self.account,
        };
        Ok(Reply::Balance(
            ctx.quota.get_balance(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct Statement {
    /// The account id
    pub account: String,
    /// Only the charges of this calendar month (YYYY-MM, in --time-zone; default: every
    /// charge the statement holds)
    #[arg(long, value_name = "YYYY-MM", value_parser = parse_month)]
    pub month: Option<Month>,
    /// One line per charge, or sums per day (and resource) or per resource
    #[arg(long, value_enum, default_value_t = StatementBy::Entry)]
    pub by: StatementBy,
    /// The platform's time zone for days and months: the catalog's [calendar] zone
    #[arg(long, value_name = "ZONE", default_value = DEFAULT_TIME_ZONE, value_parser = parse_zone)]
    pub time_zone: Tz,
}

impl Command for Statement {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::GetStatementRequest {
            account_id: self.account,
        };
        let mut statement = ctx.admin.get_statement(req).await?.into_inner();
        let calendar = Calendar {
            zone: self.time_zone,
            ..Calendar::default()
        };
        if let Some(m) = self.month {
            keep_month(&mut statement, m, &calendar);
        }
        Ok(Reply::Statement(StatementReply {
            statement,
            by: self.by,
            calendar,
            currency: ctx.currency.clone(),
        }))
    }
}

#[derive(clap::Args, Debug)]
pub struct Accruals {
    /// The account id
    pub account: String,
}

impl Command for Accruals {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::GetBalanceRequest {
            account_id: self.account,
        };
        Ok(Reply::Accruals(
            ctx.quota.get_balance(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct ReportStorage {
    /// The account id
    pub account: String,
    /// Bytes stored from then on (a level, not a delta)
    #[arg(value_parser = clap::value_parser!(u64))]
    pub bytes_stored: u64,
    /// When the level took effect (RFC 3339; default now)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
}

impl Command for ReportStorage {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::ReportStorageRequest {
            account_id: self.account.clone(),
            bytes_stored: i64::try_from(self.bytes_stored).unwrap_or(i64::MAX),
            at_ms: self.at.map_or(0, |t| t.timestamp_millis()),
        };
        ctx.quota.report_storage(req).await?;
        Ok(Reply::StorageReported {
            account: self.account,
            bytes_stored: self.bytes_stored,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct Catalog {}

impl Command for Catalog {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let catalog = ctx.admin.get_catalog(pb::GetCatalogRequest {}).await?;
        Ok(Reply::Catalog(catalog.into_inner()))
    }
}
