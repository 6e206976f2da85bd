//! The commands a worker or tool runtime would make, for trying them by hand: holds
//! (reserve, commit, release), admission, Exclusive sessions, and watching an account's
//! events.

use std::future::Future;
use std::io::Write;

use tokio_stream::{Stream, StreamExt};
use tonic::Code;

use super::parse::{
    RESOURCE, parse_count, parse_event_count, parse_idle_timeout, parse_positive_count,
};
use super::{Command, CtlError, Ctx, Render, Reply};
use crate::auth::BearerChannel;
use crate::pb;
use crate::pb::admin_client::AdminClient;

#[derive(clap::Args, Debug)]
pub struct Reserve {
    /// The account id
    pub account: String,
    /// Id of the reservation, chosen by the caller; reserving the same id again holds
    /// nothing new
    pub reservation_id: String,
    /// The catalog sku of the work (see `quotad ctl catalog`)
    pub sku: String,
    /// Milliseconds of GPU time, bytes of traffic or a count of requests
    #[arg(value_parser = parse_positive_count, allow_negative_numbers = true)]
    pub quantity: i64,
    /// Resource of the work (default: the sku's, from the catalog)
    #[arg(long, value_parser = RESOURCE)]
    pub resource: Option<pb::Resource>,
    /// Hold lifetime in milliseconds (default: the server's)
    #[arg(long, value_name = "MS", value_parser = parse_count)]
    pub ttl_ms: Option<i64>,
}

impl Command for Reserve {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let resource = resolve_resource(&mut ctx.admin, self.resource, &self.sku).await?;
        let req = pb::ReserveRequest {
            account_id: self.account,
            reservation_id: self.reservation_id,
            resource: resource.into(),
            sku: self.sku,
            quantity: self.quantity,
            ttl_ms: self.ttl_ms.unwrap_or(0),
        };
        Ok(Reply::Reserved(ctx.quota.reserve(req).await?.into_inner()))
    }
}

#[derive(clap::Args, Debug)]
pub struct Commit {
    /// The reservation to settle
    pub reservation_id: String,
    /// The quantity actually used, in the sku's unit (may be more than reserved)
    #[arg(value_parser = parse_count, allow_negative_numbers = true)]
    pub quantity: i64,
}

impl Command for Commit {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::CommitRequest {
            reservation_id: self.reservation_id,
            quantity: self.quantity,
        };
        Ok(Reply::Committed(ctx.quota.commit(req).await?.into_inner()))
    }
}

#[derive(clap::Args, Debug)]
pub struct Release {
    /// The reservation to release
    pub reservation_id: String,
}

impl Command for Release {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::ReleaseRequest {
            reservation_id: self.reservation_id,
        };
        Ok(Reply::Released(ctx.quota.release(req).await?.into_inner()))
    }
}

#[derive(clap::Args, Debug)]
pub struct Admit {
    /// The account id
    pub account: String,
    /// The catalog sku of the work (see `quotad ctl catalog`)
    pub sku: String,
    /// Milliseconds of GPU time, bytes of traffic or a count of requests
    #[arg(value_parser = parse_positive_count, allow_negative_numbers = true)]
    pub quantity: i64,
    /// Resource of the work (default: the sku's, from the catalog)
    #[arg(long, value_parser = RESOURCE)]
    pub resource: Option<pb::Resource>,
}

impl Command for Admit {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let resource = resolve_resource(&mut ctx.admin, self.resource, &self.sku).await?;
        let req = pb::AdmitRequest {
            account_id: self.account,
            resource: resource.into(),
            sku: self.sku,
            quantity: self.quantity,
        };
        Ok(Reply::Admitted(ctx.quota.admit(req).await?.into_inner()))
    }
}

#[derive(clap::Args, Debug)]
pub struct Watch {
    /// The account id
    pub account: String,
    /// Exit after this many events (default: until Ctrl-C; the server ending the stream
    /// first is an error)
    #[arg(long, value_name = "N", value_parser = parse_event_count)]
    #[arg(allow_negative_numbers = true)]
    pub count: Option<u64>,
}

impl Command for Watch {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        // Ctrl-C ends the watch (and the call) cleanly. Without a handler (it could not
        // be installed) the watch runs until the stream ends or the process is killed.
        let stop = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(stop);
        let req = pb::WatchRequest {
            account_id: self.account,
        };
        let events = tokio::select! {
            r = ctx.quota.watch(req) => r?.into_inner(),
            () = &mut stop => return Ok(Reply::WatchEnded { events: 0 }),
        };
        let events = watch_events(ctx.out, ctx.render, events, self.count, stop).await?;
        Ok(Reply::WatchEnded { events })
    }
}

/// Renders each event of `events` as it comes, until `count` events were rendered or
/// `stop` completes; returns how many were rendered. A stream that the server ends first
/// is an error (`WatchEnded`: the watch did not end as asked), one that breaks an error
/// with its status.
async fn watch_events<S>(
    out: &mut dyn Write,
    render: &dyn Render,
    mut events: S,
    count: Option<u64>,
    stop: impl Future<Output = ()>,
) -> Result<u64, CtlError>
where
    S: Stream<Item = Result<pb::AccountEvent, tonic::Status>> + Unpin,
{
    tokio::pin!(stop);
    let mut printed = 0;
    while count.is_none_or(|n| printed < n) {
        let next = tokio::select! {
            next = events.next() => next,
            () = &mut stop => break,
        };
        match next {
            None => return Err(CtlError::WatchEnded { events: printed }),
            Some(Err(status)) => return Err(status.into()),
            Some(Ok(e)) => {
                render.event(out, &e)?;
                printed += 1;
            }
        }
    }
    Ok(printed)
}

#[derive(clap::Args, Debug)]
pub struct StartSession {
    /// The account id
    pub account: String,
    /// A GPU_EXCLUSIVE machine-spec sku
    pub sku: String,
    /// Session id; re-running with the same id starts nothing new (default: a fresh one)
    #[arg(long, value_name = "SESSION_ID")]
    pub id: Option<String>,
    /// Keep billing while the instance is idle instead of stopping it
    #[arg(long)]
    pub no_auto_shutdown: bool,
    /// Milliseconds without a busy heartbeat before auto-shutdown (default: the
    /// server's, 20 minutes)
    #[arg(long, value_name = "DURATION_MS", value_parser = parse_idle_timeout)]
    #[arg(conflicts_with = "no_auto_shutdown", allow_negative_numbers = true)]
    pub idle_timeout: Option<i64>,
}

impl Command for StartSession {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let session_id = ctx.id_or_fresh(self.id, "session", "session")?;
        let req = pb::StartSessionRequest {
            account_id: self.account,
            session_id,
            sku: self.sku,
            auto_shutdown: Some(!self.no_auto_shutdown),
            idle_timeout_ms: self.idle_timeout.unwrap_or(0),
        };
        let r = ctx.quota.start_session(req).await?.into_inner();
        Ok(Reply::SessionStarted(r))
    }
}

#[derive(clap::Args, Debug)]
pub struct Heartbeat {
    /// The session (start-session --id)
    pub session_id: String,
    /// Report the instance idle; idle time counts towards auto-shutdown (default: busy)
    #[arg(long)]
    pub idle: bool,
}

impl Command for Heartbeat {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::HeartbeatRequest {
            session_id: self.session_id,
            busy: !self.idle,
        };
        Ok(Reply::Heartbeat(
            ctx.quota.heartbeat(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct StopSession {
    /// The session (start-session --id)
    pub session_id: String,
}

impl Command for StopSession {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::StopSessionRequest {
            session_id: self.session_id,
        };
        let r = ctx.quota.stop_session(req).await?.into_inner();
        Ok(Reply::SessionStopped(r))
    }
}

/// The resource given on the command line, else the one the catalog lists for `sku`.
async fn resolve_resource(
    admin: &mut AdminClient<BearerChannel>,
    given: Option<pb::Resource>,
    sku: &str,
) -> Result<pb::Resource, CtlError> {
    if let Some(r) = given {
        return Ok(r);
    }
    let catalog = match admin.get_catalog(pb::GetCatalogRequest {}).await {
        Ok(c) => c.into_inner(),
        // A sidecar running against a separate ledger serves no Admin service.
        Err(s) if s.code() == Code::Unimplemented => {
            return Err(CtlError::NoCatalog(sku.to_owned()));
        }
        Err(s) => return Err(s.into()),
    };
    catalog
        .skus
        .iter()
        .find(|s| s.id == sku)
        .map(|s| s.resource())
        .ok_or_else(|| CtlError::UnknownSku(sku.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::Text;
    use crate::ctl::text::tests::event;

    #[tokio::test]
    async fn watch_prints_events_until_count_or_stop_and_fails_when_the_stream_ends() {
        use pb::account_event::Kind;
        let evs = || {
            vec![
                Ok(event(Kind::Overdue)),
                Ok(event(Kind::Recovered)),
                Ok(event(Kind::LowQuota)),
            ]
        };
        let lines = |out: Vec<u8>| String::from_utf8(out).unwrap().lines().count();

        let mut out = Vec::new();
        let stream = tokio_stream::iter(evs());
        let n = watch_events(&mut out, &Text, stream, Some(2), std::future::pending())
            .await
            .unwrap();
        assert_eq!((n, lines(out)), (2, 2));

        let mut out = Vec::new();
        let stream = tokio_stream::iter(evs());
        let e = watch_events(&mut out, &Text, stream, None, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(e, CtlError::WatchEnded { events: 3 }), "{e}");
        assert!(
            e.to_string()
                .starts_with("the server ended the watch after 3 event(s)")
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("2026-11-22 10:00:00  OVERDUE\n"), "{text}");

        // Ctrl-C while waiting for an event ends the watch without an error.
        let mut out = Vec::new();
        let stream = tokio_stream::pending::<Result<pb::AccountEvent, tonic::Status>>();
        let n = watch_events(&mut out, &Text, stream, None, async {})
            .await
            .unwrap();
        assert_eq!((n, out.len()), (0, 0));

        // A broken stream is an error with its status, after the events before it.
        let mut out = Vec::new();
        let mut items = evs();
        items.insert(
            1,
            Err(tonic::Status::unavailable("quotad is shutting down")),
        );
        let stream = tokio_stream::iter(items);
        let e = watch_events(&mut out, &Text, stream, Some(5), std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "UNAVAILABLE: quotad is shutting down");
        assert_eq!(lines(out), 1);
    }
}
