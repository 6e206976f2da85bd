//! Billing rules as pure functions: money, catalog and prices, grants, burn-down, account
//! status, purchase rules, alerts, the Exclusive session clock, storage levels, volume
//! plans and the monthly free tier, and what accrues while nothing runs. Architecture invariant: nothing here does I/O, touches tokio
//! or sees a prost type, so every rule is deterministic and property-tested, and the
//! sidecar and the ledger run the very same code.

pub mod accrual;
pub mod alerts;
pub mod burndown;
pub mod catalog;
pub mod free_tier;
pub mod grant;
pub mod money;
pub mod purchase;
pub mod resource;
pub mod session;
pub mod status;
pub mod storage;
pub mod usage;

pub use burndown::{Deduction, Source, burn_down};
pub use catalog::{Catalog, CatalogError, Offer, OfferKind, Price, PriceError};
pub use grant::{Grant, GrantKind, GrantState, GrantUnit};
pub use money::{Money, MoneyError};
pub use purchase::{
    PurchaseContext, PurchaseError, PurchasePlan, plan_purchase, purchase_grant_id,
};
pub use resource::{PriceUnit, Resource, ResourceSet};
pub use status::{AccountStatus, DenyReason};
