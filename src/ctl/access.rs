//! The commands about who may call: tokens, a sub-user's permissions, and the Envoy
//! bootstrap with the proxy token made for it.

use super::parse::TokenKind;
use super::{Command, CtlError, Ctx, Reply};
use crate::envoy::bootstrap::{EnvoyConfigArgs, QuotadTls, render};
use crate::pb;

#[derive(clap::Args, Debug)]
pub struct CreateToken {
    /// Whom the token is for
    #[arg(value_enum)]
    pub kind: TokenKind,
    /// The owner's account, or the name of a sub-user, sidecar or operator
    pub subject: String,
    /// Print only the token (for `... > sidecar-a.token`); its id is not shown
    #[arg(long, short)]
    pub quiet: bool,
}

impl Command for CreateToken {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        use pb::principal::Kind as K;
        let subject = self.subject;
        let (kind, account_id, name) = match self.kind {
            TokenKind::Owner => (K::Owner, subject, String::new()),
            TokenKind::SubUser => (K::SubUser, String::new(), subject),
            TokenKind::Sidecar => (K::Sidecar, String::new(), subject),
            TokenKind::Proxy => (K::Proxy, String::new(), subject),
            TokenKind::Operator => (K::Operator, String::new(), subject),
        };
        let req = pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: kind.into(),
                account_id,
                name,
            }),
        };
        let created = ctx.admin.create_token(req).await?.into_inner();
        Ok(match self.quiet {
            true => Reply::Line(created.token),
            false => Reply::TokenCreated(created),
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct RevokeToken {
    /// The token's id (tok_…, as create-token printed it)
    pub token_id: String,
}

impl Command for RevokeToken {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::RevokeTokenRequest {
            token_id: self.token_id,
        };
        Ok(Reply::TokenRevoked(
            ctx.admin.revoke_token(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct GrantAccess {
    /// The account id
    pub account: String,
    /// The sub-user (as in create-token sub-user NAME)
    pub sub_user: String,
    /// Permissions to add: reserve, admit, sessions, balance, watch
    #[arg(required = true)]
    pub permissions: Vec<String>,
}

impl Command for GrantAccess {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::GrantAccessRequest {
            account_id: self.account,
            sub_user: self.sub_user,
            permissions: self.permissions,
        };
        Ok(Reply::Access(
            ctx.admin.grant_access(req).await?.into_inner(),
        ))
    }
}

#[derive(clap::Args, Debug)]
pub struct RevokeAccess {
    /// The account id
    pub account: String,
    /// The sub-user
    pub sub_user: String,
    /// Permissions to take away: reserve, admit, sessions, balance, watch (none: all)
    pub permissions: Vec<String>,
}

impl Command for RevokeAccess {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::RevokeAccessRequest {
            account_id: self.account,
            sub_user: self.sub_user,
            permissions: self.permissions,
        };
        Ok(Reply::Access(
            ctx.admin.revoke_access(req).await?.into_inner(),
        ))
    }
}

/// Makes the proxy token (at --admin-addr, else --addr) and the bootstrap that uses it.
impl Command for EnvoyConfigArgs {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let mut admin = match &self.admin_addr {
            Some(a) => ctx.admin_at(a).await?,
            None => ctx.admin.clone(),
        };
        let tls = QuotadTls {
            ca_file: ctx.tls.ca_file.clone(),
            cert_file: ctx.tls.cert_file.clone(),
            key_file: ctx.tls.key_file.clone(),
        };
        // Checked before a token is made for nothing.
        self.bootstrap(&ctx.addr, tls.clone(), String::new())?;
        let req = pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: pb::principal::Kind::Proxy.into(),
                account_id: String::new(),
                name: self.name.clone(),
            }),
        };
        let r = admin.create_token(req).await?.into_inner();
        Ok(Reply::EnvoyBootstrap {
            yaml: render(&self.bootstrap(&ctx.addr, tls, r.token)?),
            token_id: r.token_id,
        })
    }
}
