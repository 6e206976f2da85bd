//! `quotad ctl`: the operator's command line for a running quotad.
//!
//! Operators set up accounts, top them up, sell plans and look into why a job was refused,
//! usually on a host where grpcurl, the proto file and reflection know-how are not at hand.
//! This speaks the public gRPC API with the binary they already have, checks input before
//! anything reaches the server, and prints answers for people (or, with `--output json`,
//! for scripts), so a newcomer can also tour the API one call at a time.
//!
//! A command is two steps with a seam between them: `call` (in `account`, `work` and
//! `access`) checks its arguments, makes the gRPC calls and returns a `Reply`; a `Render`
//! turns the reply into output. So a new command is an argument struct, its `call` and a
//! `Reply`; a new output format is one more `Render`, and no command changes. `--output`
//! picks `text::Text` (for people) or `json::Json` (for scripts).
//!
//! Layout: `parse` (argument values), `connect` (address, token, TLS, the clients),
//! `reply` (replies and the `Render` seam), `text` and `format` (the human output),
//! `json` (the output for scripts), `statement` (filtering and summing statements),
//! `completions` (shell completion scripts), `error`.

mod access;
mod account;
mod completions;
mod connect;
mod error;
mod format;
mod json;
mod list;
mod parse;
mod reply;
mod statement;
mod text;
mod webhook;
mod work;

use std::io::Write;
use std::path::PathBuf;

pub use access::{CreateToken, GrantAccess, RevokeAccess, RevokeToken};
pub use account::{
    Accruals, Balance, Catalog, CreateAccount, GrantCredit, Purchase, ReportStorage, Statement,
    TopUp,
};
pub use completions::Completions;
pub use connect::Ctx;
pub use error::CtlError;
pub use json::Json;
pub use list::{ListAccess, ListAccounts, ListTokens, Listing};
pub use parse::{CreditKind, TokenKind};
pub use reply::{Render, Reply, StatementReply};
pub use statement::StatementBy;
pub use text::Text;
pub use webhook::{WebhookArgs, WebhookCommand, WebhookReply};
pub use work::{Admit, Commit, Heartbeat, Release, Reserve, StartSession, StopSession, Watch};

use crate::envoy::bootstrap::EnvoyConfigArgs;
use crate::pb;

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// gRPC address of quotad
    #[arg(
        long,
        env = "QUOTAD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Currency of the amounts given on the command line
    #[arg(long, default_value = "CNY", global = true)]
    pub currency: String,
    /// Token to send (`authorization: Bearer TOKEN`; default: the one in --token-file);
    /// prefer --token-file or QUOTAD_TOKEN (a flag shows in the process list)
    #[arg(long, env = "QUOTAD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the token [default: the operator token in --data-dir]
    #[arg(long, env = "QUOTAD_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The data directory of the `quotad serve` to drive, whose operator.token is sent
    /// when no token is given [default: quotad-data/operator.token if it exists, else
    /// quotad-ledger/operator.token, where `quotad ledger` writes it]
    #[arg(long, env = "QUOTAD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// CA (PEM) the server's TLS certificate must chain to; implies https (default: none)
    #[arg(long, env = "QUOTAD_CTL_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mTLS (default: none)
    #[arg(long, env = "QUOTAD_CTL_TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM; default: none)
    #[arg(long, env = "QUOTAD_CTL_TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,
    /// Output format: text for people, or json for scripts (one JSON object per line:
    /// the proto message the server answered, with the proto's field names)
    #[arg(
        long,
        value_enum,
        env = "QUOTAD_CTL_OUTPUT",
        default_value_t = OutputFormat::Text,
        global = true
    )]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// How answers are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Key-value lines and aligned tables
    Text,
    /// One JSON object per line
    Json,
}

/// Every command: its arguments (the variant's doc comment is its help line) and its call.
#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Create an account, optionally with an opening balance
    CreateAccount(CreateAccount),
    /// Add money to an account's balance
    TopUp(TopUp),
    /// Record the purchase of a plan or package sku and show the grants it created
    Purchase(Purchase),
    /// Give an account coupon or trial credit
    GrantCredit(GrantCredit),
    /// Show an account's balance, holds and grants, and the Exclusive sessions and usage
    /// streams running on this quotad
    Balance(Balance),
    /// List an account's charges and what paid for them, one line each or summed by day
    /// or resource, all of them or one month's
    Statement(Statement),
    /// Show what costs an account money every hour while nothing runs (stored data beyond
    /// its plan, running Exclusive sessions) and when its plans and balance run out
    Accruals(Accruals),
    /// Record an account's stored bytes (a level, from now or --at)
    ReportStorage(ReportStorage),
    /// List the skus quotad sells and their prices
    Catalog(Catalog),
    /// Hold the cost of work before it starts
    Reserve(Reserve),
    /// Charge the quantity actually used by a reservation and release the rest
    Commit(Commit),
    /// Release a reservation without charging
    Release(Release),
    /// Ask whether work of this size could start now, holding nothing
    Admit(Admit),
    /// Print an account's events as they happen, one line each, until Ctrl-C
    Watch(Watch),
    /// Start billing an Exclusive instance; admitted when one hour of its price can be held
    StartSession(StartSession),
    /// Tell quotad an Exclusive instance is busy (or idle) and show whether it must stop
    Heartbeat(Heartbeat),
    /// Stop an Exclusive session and bill it up to now
    StopSession(StopSession),
    /// Make a token (operator only); it is printed once and stored only as a hash
    CreateToken(CreateToken),
    /// Revoke a token by its id (operator only)
    RevokeToken(RevokeToken),
    /// Print an Envoy bootstrap (YAML) that puts quotad in front of a tool runtime: makes a
    /// proxy token for it (operator only) and points it at the quotad of --addr
    EnvoyConfig(EnvoyConfigArgs),
    /// Let a sub-user do these on an account (operator or the account's owner):
    /// reserve, admit, sessions, balance, watch
    GrantAccess(GrantAccess),
    /// Take permissions away from a sub-user on an account (none named: all)
    RevokeAccess(RevokeAccess),
    /// Print a shell completion script: `source <(quotad ctl completions bash)`
    Completions(Completions),
    /// Webhook endpoints (operator only): create, list, delete, test
    Webhook(WebhookArgs),
    /// List the accounts (operator only)
    ListAccounts(ListAccounts),
    /// List the tokens: ids and who they speak for, revoked ones too; never a token
    /// (operator only)
    ListTokens(ListTokens),
    /// List what sub-users may do, on one account or every account (operator only)
    ListAccess(ListAccess),
}

/// One command's work up to its answer: check, call quotad, return what it answered.
/// Rendering the answer is the caller's (`Render`).
pub trait Command {
    fn call(self, ctx: &mut Ctx<'_>) -> impl std::future::Future<Output = Result<Reply, CtlError>>;
}

impl Command for CtlCommand {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        match self {
            CtlCommand::CreateAccount(c) => c.call(ctx).await,
            CtlCommand::TopUp(c) => c.call(ctx).await,
            CtlCommand::Purchase(c) => c.call(ctx).await,
            CtlCommand::GrantCredit(c) => c.call(ctx).await,
            CtlCommand::Balance(c) => c.call(ctx).await,
            CtlCommand::Statement(c) => c.call(ctx).await,
            CtlCommand::Accruals(c) => c.call(ctx).await,
            CtlCommand::ReportStorage(c) => c.call(ctx).await,
            CtlCommand::Catalog(c) => c.call(ctx).await,
            CtlCommand::Reserve(c) => c.call(ctx).await,
            CtlCommand::Commit(c) => c.call(ctx).await,
            CtlCommand::Release(c) => c.call(ctx).await,
            CtlCommand::Admit(c) => c.call(ctx).await,
            CtlCommand::Watch(c) => c.call(ctx).await,
            CtlCommand::StartSession(c) => c.call(ctx).await,
            CtlCommand::Heartbeat(c) => c.call(ctx).await,
            CtlCommand::StopSession(c) => c.call(ctx).await,
            CtlCommand::CreateToken(c) => c.call(ctx).await,
            CtlCommand::RevokeToken(c) => c.call(ctx).await,
            CtlCommand::EnvoyConfig(c) => c.call(ctx).await,
            CtlCommand::GrantAccess(c) => c.call(ctx).await,
            CtlCommand::RevokeAccess(c) => c.call(ctx).await,
            CtlCommand::Completions(c) => c.call(ctx).await,
            CtlCommand::Webhook(c) => c.call(ctx).await,
            CtlCommand::ListAccounts(c) => c.call(ctx).await,
            CtlCommand::ListTokens(c) => c.call(ctx).await,
            CtlCommand::ListAccess(c) => c.call(ctx).await,
        }
    }
}

/// Runs one `quotad ctl` command against the quotad at `args.addr`, printing to `out`.
/// A reader that went away (`| head`) ends the command quietly: not an error.
pub async fn run(args: CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    match run_command(args, out).await {
        Err(e) if e.is_closed_output() => Ok(()),
        r => r,
    }
}

async fn run_command(args: CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    if let CtlCommand::Completions(c) = &args.command {
        // Needs no server: `quotad ctl …` as this library knows it.
        return c.write(&mut completions::ctl_root(), out);
    }
    let render = FreshIds::new(match args.output {
        OutputFormat::Text => &Text,
        OutputFormat::Json => &Json,
    });
    let mut ctx = Ctx::connect(&args, out, &render).await?;
    match args.command.call(&mut ctx).await {
        Ok(reply) => render.reply(ctx.out, &reply),
        Err(e) => Err(render.with_retry_hint(ctx.explain(e))),
    }
}

/// A `Render` that remembers the fresh id it was told of, so that a failure that may
/// be retried can say which id to retry with (and one that may not says nothing of it).
struct FreshIds<'r> {
    inner: &'r dyn Render,
    id: std::sync::Mutex<Option<String>>,
}

impl<'r> FreshIds<'r> {
    fn new(inner: &'r dyn Render) -> Self {
        FreshIds {
            inner,
            id: std::sync::Mutex::new(None),
        }
    }

    fn with_retry_hint(&self, error: CtlError) -> CtlError {
        let id = self.id.lock().map(|g| g.clone()).unwrap_or(None);
        match id {
            Some(id) if error.is_retryable() => CtlError::Retry {
                error: Box::new(error),
                id,
            },
            _ => error,
        }
    }
}

impl Render for FreshIds<'_> {
    fn fresh_id(&self, out: &mut dyn Write, label: &str, id: &str) -> Result<(), CtlError> {
        if let Ok(mut g) = self.id.lock() {
            *g = Some(id.to_owned());
        }
        self.inner.fresh_id(out, label, id)
    }

    fn event(&self, out: &mut dyn Write, event: &pb::AccountEvent) -> Result<(), CtlError> {
        self.inner.event(out, event)
    }

    fn reply(&self, out: &mut dyn Write, reply: &Reply) -> Result<(), CtlError> {
        self.inner.reply(out, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    enum Cli {
        Ctl(CtlArgs),
    }

    /// Parses `quotad ctl LINE`, LINE split on whitespace.
    pub(super) fn parse(line: &str) -> Result<CtlArgs, clap::Error> {
        let argv = ["quotad", "ctl"].into_iter().chain(line.split_whitespace());
        let Cli::Ctl(a) = Cli::try_parse_from(argv)?;
        Ok(a)
    }

    #[test]
    fn every_argument_has_help_and_every_default_is_shown() {
        let root = completions::ctl_root();
        let ctl = root.find_subcommand("ctl").unwrap();
        let mut missing = Vec::new();
        for cmd in std::iter::once(ctl).chain(ctl.get_subcommands()) {
            for arg in cmd.get_arguments() {
                let what = format!("ctl {} {}", cmd.get_name(), arg.get_id());
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.is_empty() {
                    missing.push(format!("{what}: no help"));
                }
                if arg.is_hide_default_value_set() {
                    missing.push(format!("{what}: hides its default"));
                }
                let said = !arg.get_default_values().is_empty() || help.contains("default");
                let optional = !arg.is_positional() && !arg.is_required_set();
                let flag = matches!(
                    arg.get_action(),
                    clap::ArgAction::SetTrue | clap::ArgAction::Help | clap::ArgAction::HelpLong
                );
                if optional && !flag && !said {
                    missing.push(format!("{what}: default not shown"));
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        let reserve = ctl.find_subcommand("reserve").unwrap();
        let resource = reserve.get_arguments().find(|a| a.get_id() == "resource");
        let values = resource.unwrap().get_possible_values();
        assert_eq!(values.len(), 6, "--resource lists its values");
    }

    #[test]
    fn a_retry_hint_names_the_fresh_id_only_for_retryable_failures() {
        let render = FreshIds::new(&Text);
        let refused = || CtlError::from(tonic::Status::failed_precondition("no such sku"));
        let busy = || CtlError::from(tonic::Status::unavailable("server busy"));
        // No fresh id (the operator gave --id): nothing to add.
        assert_eq!(
            render.with_retry_hint(busy()).to_string(),
            "UNAVAILABLE: server busy"
        );
        let mut out = Vec::new();
        render.fresh_id(&mut out, "top-up", "topup-7").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "top-up id: topup-7\n");
        assert_eq!(
            render.with_retry_hint(busy()).to_string(),
            "UNAVAILABLE: server busy (retry with --id topup-7: it will not be applied twice)"
        );
        assert_eq!(
            render.with_retry_hint(refused()).to_string(),
            "FAILED_PRECONDITION: no such sku"
        );
    }

    #[tokio::test]
    async fn refused_connection_names_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let args = parse(&format!("--addr 127.0.0.1:{port} catalog")).unwrap();
        let e = run(args, &mut Vec::new()).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CtlError::Unreachable { .. }), "{msg}");
        assert!(msg.starts_with(&format!("cannot reach quotad at http://127.0.0.1:{port}: ")));
        assert!(msg.ends_with("(is `quotad serve` running?)"), "{msg}");
    }

    #[tokio::test]
    async fn bad_currency_fails_before_connecting() {
        let args = parse("--addr 127.0.0.1:1 --currency yuan balance a");
        let e = run(args.unwrap(), &mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, CtlError::BadCurrency(_)), "{e}");
    }

    #[test]
    fn args_parse_with_defaults_and_global_options() {
        let a = parse("top-up acme 12.50 --addr q:1").unwrap();
        assert_eq!((a.addr.as_str(), a.currency.as_str()), ("q:1", "CNY"));
        let CtlCommand::TopUp(TopUp { amount, id, .. }) = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!((amount.to_string(), id), ("12.5".into(), None));

        let a = parse("grant-credit a g1 5 --expires-at 2026-12-01T00:00:00Z").unwrap();
        let CtlCommand::GrantCredit(GrantCredit { kind, resource, .. }) = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!(kind, CreditKind::Coupon);
        assert_eq!(resource, pb::Resource::Unspecified);

        let a = parse("reserve a r1 gpu.shared.t4 60000 --resource gpu-shared").unwrap();
        let CtlCommand::Reserve(Reserve {
            resource, ttl_ms, ..
        }) = a.command
        else {
            panic!("{:?}", a.command)
        };
        assert_eq!((resource, ttl_ms), (Some(pb::Resource::GpuShared), None));
    }

    #[test]
    fn bad_values_are_rejected_with_clear_messages() {
        let credit = "grant-credit a g 1 --expires-at 2026-01-01T00:00:00Z";
        let cases = [
            ("top-up acme ten", "amount \"ten\" is not a decimal number"),
            ("top-up acme 0", "amount 0 must be greater than zero"),
            ("create-account a --balance -1", "amount -1 is negative"),
            (
                "commit r1 -5",
                "invalid number \"-5\": expected a whole number of at least 0",
            ),
            ("admit a sku 0", "expected a whole number of at least 1"),
            ("admit a sku 1 --resource any", "unknown resource \"any\""),
            ("grant-credit a g 1 --expires-at soon", "expected RFC 3339"),
            ("grant-credit a g 1", "--expires-at"),
            (&format!("{credit} --kind plan"), "coupon, trial"),
            (&format!("{credit} --resource gpu"), "REQUEST_GET, any"),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn statement_accruals_and_storage_args_parse() {
        let a = parse("statement acme --month 2026-11 --by resource --time-zone UTC").unwrap();
        assert!(format!("{a:?}").contains("Resource"));
        assert!(parse("statement acme --month 2026-13").is_err());
        assert!(matches!(
            parse("accruals acme").unwrap().command,
            CtlCommand::Accruals(Accruals { ref account }) if account == "acme"
        ));
        match parse("report-storage acme 150000000000 --at 2026-11-01T00:00:00Z")
            .unwrap()
            .command
        {
            CtlCommand::ReportStorage(ReportStorage {
                bytes_stored, at, ..
            }) => {
                assert_eq!(bytes_stored, 150_000_000_000);
                assert_eq!(at.map(|t| t.timestamp_millis()), Some(1_793_491_200_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse("report-storage acme -5").is_err());
        assert!(parse("statement acme --time-zone UTC+8").is_err());
    }

    #[test]
    fn session_and_watch_args_parse_with_defaults() {
        let a = parse("watch acme").unwrap();
        let CtlCommand::Watch(Watch { account, count }) = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!((account.as_str(), count), ("acme", None));
        let a = parse("watch acme --count 3").unwrap();
        assert!(matches!(
            a.command,
            CtlCommand::Watch(Watch { count: Some(3), .. })
        ));

        let a = parse("start-session acme gpu.excl.a100").unwrap();
        let CtlCommand::StartSession(StartSession {
            account,
            sku,
            id,
            no_auto_shutdown,
            idle_timeout,
        }) = a.command
        else {
            panic!("{:?}", a.command)
        };
        assert_eq!(
            (
                account.as_str(),
                sku.as_str(),
                id,
                no_auto_shutdown,
                idle_timeout
            ),
            ("acme", "gpu.excl.a100", None, false, None)
        );
        let a = parse("start-session a s --id s1 --idle-timeout 600000").unwrap();
        let CtlCommand::StartSession(StartSession {
            id, idle_timeout, ..
        }) = a.command
        else {
            panic!("{:?}", a.command)
        };
        assert_eq!((id.as_deref(), idle_timeout), (Some("s1"), Some(600_000)));
        let a = parse("start-session a s --no-auto-shutdown").unwrap();
        assert!(matches!(
            a.command,
            CtlCommand::StartSession(StartSession {
                no_auto_shutdown: true,
                idle_timeout: None,
                ..
            })
        ));

        let a = parse("heartbeat s1").unwrap();
        let CtlCommand::Heartbeat(Heartbeat { session_id, idle }) = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!((session_id.as_str(), idle), ("s1", false));
        let a = parse("heartbeat s1 --idle").unwrap();
        assert!(matches!(
            a.command,
            CtlCommand::Heartbeat(Heartbeat { idle: true, .. })
        ));

        let a = parse("stop-session s1").unwrap();
        let CtlCommand::StopSession(StopSession { session_id }) = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!(session_id, "s1");
    }

    #[test]
    fn bad_session_and_watch_values_are_rejected_with_clear_messages() {
        let cases = [
            (
                "watch a --count 0",
                "invalid count \"0\": expected a whole number of at least 1",
            ),
            ("watch a --count -2", "invalid count \"-2\""),
            ("watch a --count many", "invalid count \"many\""),
            ("watch", "<ACCOUNT>"),
            (
                "start-session a s --idle-timeout 20m",
                "invalid idle timeout (ms) \"20m\": expected a whole number of at least 1",
            ),
            (
                "start-session a s --idle-timeout 0",
                "invalid idle timeout (ms) \"0\"",
            ),
            (
                "start-session a s --idle-timeout -5",
                "invalid idle timeout (ms) \"-5\"",
            ),
            (
                "start-session a s --no-auto-shutdown --idle-timeout 1000",
                "'--no-auto-shutdown' cannot be used with '--idle-timeout",
            ),
            ("start-session a", "<SKU>"),
            ("heartbeat s1 --busy", "--busy"),
            ("stop-session", "<SESSION_ID>"),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
