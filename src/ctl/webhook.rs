//! `quotad ctl webhook create|list|delete|test`: webhook endpoints (operator only), and how
//! their answers print.

use std::io::Write;

use super::format::{Table, fmt_time_utc};
use super::{Command, CtlError, Ctx, Reply};
use crate::pb;

#[derive(clap::Args, Debug)]
pub struct WebhookArgs {
    #[command(subcommand)]
    pub command: WebhookCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum WebhookCommand {
    /// Register an endpoint; its signing secret is printed once
    Create {
        /// http://HOST[:PORT]/PATH
        url: String,
        /// Event kinds to send (comma-separated) [default: all]
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Accounts whose events to send (comma-separated) [default: all]
        #[arg(long, value_delimiter = ',')]
        accounts: Vec<String>,
    },
    /// List endpoints with their queue and last success and failure
    List,
    /// Remove an endpoint and the messages waiting for it
    Delete { webhook_id: String },
    /// Send a signed test message to an endpoint now and show its answer
    Test { webhook_id: String },
}

/// What a webhook command answered.
#[derive(Debug, Clone)]
pub enum WebhookReply {
    Created(pb::CreateWebhookResponse),
    Listed(pb::ListWebhooksResponse),
    Deleted { webhook_id: String, deleted: bool },
    Tested(pb::TestWebhookResponse),
}

impl Command for WebhookArgs {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let reply = match self.command {
            WebhookCommand::Create {
                url,
                events,
                accounts,
            } => {
                let req = pb::CreateWebhookRequest {
                    url,
                    event_kinds: events.into_iter().map(|e| e.to_ascii_uppercase()).collect(),
                    account_ids: accounts,
                };
                WebhookReply::Created(ctx.admin.create_webhook(req).await?.into_inner())
            }
            WebhookCommand::List => WebhookReply::Listed(
                ctx.admin
                    .list_webhooks(pb::ListWebhooksRequest {})
                    .await?
                    .into_inner(),
            ),
            WebhookCommand::Delete { webhook_id } => {
                let req = pb::DeleteWebhookRequest {
                    webhook_id: webhook_id.clone(),
                };
                let deleted = ctx.admin.delete_webhook(req).await?.into_inner().deleted;
                WebhookReply::Deleted {
                    webhook_id,
                    deleted,
                }
            }
            WebhookCommand::Test { webhook_id } => WebhookReply::Tested(
                ctx.admin
                    .test_webhook(pb::TestWebhookRequest { webhook_id })
                    .await?
                    .into_inner(),
            ),
        };
        Ok(Reply::Webhook(reply))
    }
}

fn all(v: &[String]) -> String {
    if v.is_empty() {
        "all".to_owned()
    } else {
        v.join(",")
    }
}

/// The text output of a webhook command.
pub fn write_text(out: &mut dyn Write, r: &WebhookReply) -> Result<(), CtlError> {
    let mut t = Table::headless();
    match r {
        WebhookReply::Created(c) => {
            let w = c.webhook.clone().unwrap_or_default();
            t.row(vec!["webhook id".into(), w.webhook_id]);
            t.row(vec!["url".into(), w.url]);
            t.row(vec!["events".into(), all(&w.event_kinds)]);
            t.row(vec!["accounts".into(), all(&w.account_ids)]);
            t.row(vec!["secret".into(), c.secret.clone()]);
            t.row(vec![
                "note".into(),
                "secret shown once; verify signatures with it".into(),
            ]);
        }
        WebhookReply::Listed(l) => {
            let mut t = Table::new(&[
                "WEBHOOK",
                "URL",
                "EVENTS",
                "ACCOUNTS",
                "PENDING",
                "LAST SUCCESS",
                "LAST FAILURE",
                "LAST ERROR",
            ]);
            for w in &l.webhooks {
                t.row(vec![
                    w.webhook_id.clone(),
                    w.url.clone(),
                    all(&w.event_kinds),
                    all(&w.account_ids),
                    w.pending.to_string(),
                    fmt_time_utc(w.last_success_at_ms),
                    fmt_time_utc(w.last_failure_at_ms),
                    if w.last_error.is_empty() {
                        "-".into()
                    } else {
                        w.last_error.clone()
                    },
                ]);
            }
            return Ok(out.write_all(t.render().as_bytes())?);
        }
        WebhookReply::Deleted {
            webhook_id,
            deleted,
        } => {
            let what = if *deleted {
                "deleted"
            } else {
                "no such webhook"
            };
            t.row(vec![what.into(), webhook_id.clone()]);
        }
        WebhookReply::Tested(r) => {
            t.row(vec!["event id".into(), r.event_id.clone()]);
            t.row(vec!["delivered".into(), r.delivered.to_string()]);
            let status = if r.http_status == 0 {
                "-".into()
            } else {
                r.http_status.to_string()
            };
            t.row(vec!["http status".into(), status]);
            if !r.error.is_empty() {
                t.row(vec!["error".into(), r.error.clone()]);
            }
        }
    }
    Ok(out.write_all(t.render().as_bytes())?)
}
