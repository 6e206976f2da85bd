//! The listing commands (operator only): accounts, tokens (ids and principals, never a
//! token), and sub-users' access. Each answers a `Listing`: named columns and rows, the
//! same for every output format, and whether the server left rows out.

use super::format::{Table, fmt_time_utc};
use super::{Command, CtlError, Ctx, Reply};
use crate::pb;

/// Rows under named columns (stable names: `account`, `token_id`, `kind`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    /// The server had more rows than it answered.
    pub more: bool,
    /// The command pages with `--after` the first column's last value.
    pub pages: bool,
}

impl Listing {
    /// The text output: a table, "(none)" when empty, and a line saying rows were left out.
    pub fn text(&self) -> String {
        if self.rows.is_empty() {
            return "(none)\n".to_owned();
        }
        let mut t = Table::new(&self.columns);
        for row in &self.rows {
            t.row(row.clone());
        }
        let mut s = t.render();
        match (self.more, self.pages) {
            (true, true) => {
                let last = self.rows.last().and_then(|r| r.first());
                s.push_str(&format!(
                    "(more: ask again with --after {})\n",
                    last.map_or("", String::as_str)
                ));
            }
            (true, false) => s.push_str("(more rows than shown)\n"),
            (false, _) => {}
        }
        s
    }
}

#[derive(clap::Args, Debug)]
pub struct ListAccounts {
    /// Only accounts whose id sorts after this one (default: from the first)
    #[arg(long)]
    pub after: Option<String>,
    /// Most rows to show [default: the server's most, 1000]
    #[arg(long)]
    pub limit: Option<u32>,
}

impl Command for ListAccounts {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::ListAccountsRequest {
            after: self.after.unwrap_or_default(),
            limit: self.limit.unwrap_or(0),
        };
        let r = ctx.admin.list_accounts(req).await?.into_inner();
        Ok(Reply::Listing(Listing {
            columns: vec!["account"],
            rows: r.account_ids.into_iter().map(|a| vec![a]).collect(),
            more: r.more,
            pages: true,
        }))
    }
}

#[derive(clap::Args, Debug)]
pub struct ListTokens {
    /// Only tokens whose id sorts after this one (default: from the first)
    #[arg(long)]
    pub after: Option<String>,
    /// Most rows to show [default: the server's most, 1000]
    #[arg(long)]
    pub limit: Option<u32>,
}

impl Command for ListTokens {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::ListTokensRequest {
            after: self.after.unwrap_or_default(),
            limit: self.limit.unwrap_or(0),
        };
        let r = ctx.admin.list_tokens(req).await?.into_inner();
        Ok(Reply::Listing(Listing {
            columns: vec!["token_id", "kind", "account", "name", "created", "revoked"],
            rows: r.tokens.iter().map(token_row).collect(),
            more: r.more,
            pages: true,
        }))
    }
}

fn token_row(t: &pb::TokenInfo) -> Vec<String> {
    let p = t.principal.clone().unwrap_or_default();
    let kind = pb::principal::Kind::try_from(p.kind)
        .map(|k| match k {
            pb::principal::Kind::Operator => "operator",
            pb::principal::Kind::Owner => "owner",
            pb::principal::Kind::SubUser => "sub-user",
            pb::principal::Kind::Sidecar => "sidecar",
            pb::principal::Kind::Proxy => "proxy",
            pb::principal::Kind::Unspecified => "?",
        })
        .unwrap_or("?");
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    vec![
        t.token_id.clone(),
        kind.to_owned(),
        dash(p.account_id),
        dash(p.name),
        fmt_time_utc(t.created_at_ms),
        match t.revoked_at_ms {
            0 => "-".to_owned(),
            ms => fmt_time_utc(ms),
        },
    ]
}

#[derive(clap::Args, Debug)]
pub struct ListAccess {
    /// Only this account's sub-users [default: every account]
    pub account: Option<String>,
    /// Most rows to show [default: the server's most, 1000]
    #[arg(long)]
    pub limit: Option<u32>,
}

impl Command for ListAccess {
    async fn call(self, ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        let req = pb::ListAccessRequest {
            account_id: self.account.unwrap_or_default(),
            limit: self.limit.unwrap_or(0),
        };
        let r = ctx.admin.list_access(req).await?.into_inner();
        Ok(Reply::Listing(Listing {
            columns: vec!["account", "sub_user", "permissions"],
            rows: r
                .access
                .into_iter()
                .map(|a| vec![a.account_id, a.sub_user, a.permissions.join(",")])
                .collect(),
            more: r.more,
            pages: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_prints_a_table_or_none_and_says_when_rows_were_left_out() {
        let l = Listing {
            columns: vec!["account"],
            rows: vec![vec!["acme".into()], vec!["globex".into()]],
            more: true,
            pages: true,
        };
        assert_eq!(
            l.text(),
            "account\nacme\nglobex\n(more: ask again with --after globex)\n"
        );
        let none = Listing {
            rows: Vec::new(),
            more: false,
            ..l
        };
        assert_eq!(none.text(), "(none)\n");
    }
}
