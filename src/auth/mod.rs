//! Who is calling, and what they may do (R9). Every caller presents
//! `authorization: Bearer TOKEN`; a token is 256 random bits, shown once when it is made
//! and stored only as its SHA-256, so a copy of the database lets nobody in and stored
//! tokens are compared as hashes, never as secrets (the in-memory lookup cache is keyed by
//! the token as presented, for at most `auth_cache_ttl_ms`). A token speaks for one
//! principal:
//!
//! - operator: everything (Admin, every account, the Ledger service);
//! - owner of one account: every Quota call on it, and GrantAccess / RevokeAccess there;
//! - sub-user: on each account, exactly the permissions its owner granted;
//! - sidecar: the Ledger service only (a `quotad serve` syncing with `quotad ledger`);
//! - proxy: the Envoy services only (ext_authz Check and the access log stream), so that
//!   nobody but the operator's proxies can ask Check about accounts.
//!
//! `layer` authenticates every RPC before it reaches a service (UNAUTHENTICATED without a
//! valid token) and applies the per-service rules; the Quota adapters then check the
//! account each call acts on with `Caller::allow`. Lookups go through a bounded cache with
//! a TTL: in `quotad serve` with an embedded ledger and in `quotad ledger` they read the
//! store, and changes made there clear the cache at once; a sidecar of a remote ledger
//! asks the ledger (`Ledger.Authenticate`), so a revocation reaches it within
//! `auth_cache_ttl_ms`.

pub mod layer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tonic::codegen::http;

use crate::clock::SharedClock;
use crate::ledger::Ledger;
use crate::ledger::store::{StoreError, TokenRow};

/// Every token starts with this, so a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "qdt_";
/// Where `quotad serve` writes the first operator token, in its data directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";
/// Where `quotad ledger` writes its first operator token unless configured otherwise.
pub const DEFAULT_LEDGER_OPERATOR_TOKEN_FILE: &str = "quotad-ledger/operator.token";
/// Default number of token lookups remembered (known and unknown tokens alike); past it,
/// expired entries are dropped, then all.
pub const DEFAULT_AUTH_CACHE_MAX: usize = 10_000;
/// Default time a remembered lookup is trusted: the bound on how long a revoked token or
/// a revoked permission keeps working on a sidecar of a remote ledger.
pub const DEFAULT_AUTH_CACHE_TTL_MS: u64 = 5_000;
/// Most accounts a sub-user's access is loaded for; grants beyond are not honoured.
pub const DEFAULT_ACCESS_ACCOUNTS_MAX: usize = 1_000;
/// Longest token accepted in a header (ours are 68 bytes); longer ones are refused unread.
pub const TOKEN_BYTES_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `authorization: Bearer TOKEN`")]
    Missing,
    #[error("malformed authorization header: expected `Bearer TOKEN`")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
    #[error(
        "sub-user {name} may not {permission} on account {account}: the account owner must \
         grant it (Admin.GrantAccess)"
    )]
    NotGranted {
        name: String,
        permission: Permission,
        account: String,
    },
    #[error("the owner of account {owner} may not act on account {account}")]
    OtherAccount { owner: String, account: String },
    #[error("{rpc} is for the operator only")]
    OperatorOnly { rpc: String },
    #[error("{rpc} is for sidecars and the operator only")]
    SidecarOnly { rpc: String },
    #[error("a sidecar token may only call the Ledger service, not {rpc}")]
    SidecarElsewhere { rpc: String },
    #[error("{rpc} is for proxies (a `proxy` token) and the operator only")]
    ProxyOnly { rpc: String },
    #[error("a proxy token may only call the Envoy services (Check, access logs), not {rpc}")]
    ProxyElsewhere { rpc: String },
    #[error("{0:?} is not a permission: reserve, admit, sessions, balance or watch")]
    UnknownPermission(String),
    #[error("token {0} does not exist")]
    UnknownTokenId(String),
    #[error(
        "sub-user {0:?} has no token: make one first (CreateToken, `quotad ctl create-token \
         sub-user {0}`), then grant it access"
    )]
    UnknownSubUser(String),
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
    #[error("token store: {0}")]
    Store(#[from] StoreError),
}

/// One thing a sub-user may be allowed to do on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Reserve, Commit, Release, StreamUsage.
    Reserve,
    Admit,
    /// StartSession, Heartbeat, StopSession.
    Sessions,
    /// GetBalance.
    Balance,
    Watch,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::Reserve,
        Permission::Admit,
        Permission::Sessions,
        Permission::Balance,
        Permission::Watch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Reserve => "reserve",
            Permission::Admit => "admit",
            Permission::Sessions => "sessions",
            Permission::Balance => "balance",
            Permission::Watch => "watch",
        }
    }

    pub fn from_name(s: &str) -> Result<Permission, AuthError> {
        Permission::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| AuthError::UnknownPermission(s.chars().take(64).collect()))
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of permissions, stored as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perms(pub u8);

impl Perms {
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn parse(names: &[String]) -> Result<Perms, AuthError> {
        let mut bits = 0;
        for n in names {
            bits |= Permission::from_name(n.trim())?.bit();
        }
        Ok(Perms(bits))
    }

    pub fn all() -> Perms {
        Perms(Permission::ALL.iter().fold(0, |b, p| b | p.bit()))
    }

    pub fn names(self) -> Vec<String> {
        Permission::ALL
            .iter()
            .filter(|p| self.contains(**p))
            .map(|p| p.name().to_owned())
            .collect()
    }
}

/// What kind of principal a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Operator,
    Owner,
    SubUser,
    Sidecar,
    Proxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Operator => "operator",
            Kind::Owner => "owner",
            Kind::SubUser => "sub_user",
            Kind::Sidecar => "sidecar",
            Kind::Proxy => "proxy",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        [
            Kind::Operator,
            Kind::Owner,
            Kind::SubUser,
            Kind::Sidecar,
            Kind::Proxy,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// The authenticated caller of one request, put in its extensions by `layer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`auth_disabled`): every call is allowed.
    Unchecked,
    Operator {
        name: String,
    },
    Owner {
        account_id: String,
    },
    SubUser {
        name: String,
        access: HashMap<String, Perms>,
    },
    Sidecar {
        name: String,
    },
    /// An Envoy (or Istio / Envoy Gateway) proxy calling Check and the access log service.
    Proxy {
        name: String,
    },
}

impl Caller {
    pub fn is_operator(&self) -> bool {
        matches!(self, Caller::Unchecked | Caller::Operator { .. })
    }

    /// Whether this caller may do `permission` on `account_id`.
    pub fn allow(&self, account_id: &str, permission: Permission) -> Result<(), AuthError> {
        match self {
            Caller::Unchecked | Caller::Operator { .. } => Ok(()),
            Caller::Owner { account_id: own } if own == account_id => Ok(()),
            Caller::Owner { account_id: own } => Err(AuthError::OtherAccount {
                owner: own.clone(),
                account: account_id.to_owned(),
            }),
            Caller::SubUser { name, access } => {
                if access
                    .get(account_id)
                    .is_some_and(|p| p.contains(permission))
                {
                    Ok(())
                } else {
                    Err(AuthError::NotGranted {
                        name: name.clone(),
                        permission,
                        account: account_id.to_owned(),
                    })
                }
            }
            Caller::Sidecar { .. } => Err(AuthError::SidecarElsewhere {
                rpc: format!("a Quota call on account {account_id}"),
            }),
            Caller::Proxy { .. } => Err(AuthError::ProxyElsewhere {
                rpc: format!("a call on account {account_id}"),
            }),
        }
    }

    /// Whether this caller may know anything about `account_id`: the operator, its owner,
    /// or a sub-user with any permission there. Calls that name a reservation or session
    /// of an account the caller has nothing to do with are answered as if it did not
    /// exist, so ids of other accounts cannot be probed.
    pub fn sees(&self, account_id: &str) -> bool {
        match self {
            Caller::Unchecked | Caller::Operator { .. } => true,
            Caller::Owner { account_id: own } => own == account_id,
            Caller::SubUser { access, .. } => access.get(account_id).is_some_and(|p| p.0 != 0),
            Caller::Sidecar { .. } | Caller::Proxy { .. } => false,
        }
    }

    /// The caller of a request, as `layer` recorded it. A request that did not pass the
    /// layer has no caller and is refused.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Arc<Caller>, AuthError> {
        request
            .extensions()
            .get::<Arc<Caller>>()
            .cloned()
            .ok_or(AuthError::Missing)
    }

    /// The caller a stored token and its access rows speak for; None for a revoked or
    /// unreadable token.
    pub fn from_row(row: &TokenRow, access: Vec<(String, u8)>) -> Option<Caller> {
        if row.revoked_at_ms.is_some() {
            return None;
        }
        Some(match Kind::from_name(&row.kind)? {
            Kind::Operator => Caller::Operator {
                name: row.name.clone(),
            },
            Kind::Owner => Caller::Owner {
                account_id: row.account_id.clone(),
            },
            Kind::SubUser => Caller::SubUser {
                name: row.name.clone(),
                access: access.into_iter().map(|(a, p)| (a, Perms(p))).collect(),
            },
            Kind::Sidecar => Caller::Sidecar {
                name: row.name.clone(),
            },
            Kind::Proxy => Caller::Proxy {
                name: row.name.clone(),
            },
        })
    }
}

/// Lower-case hex SHA-256 of a token: what is stored and compared.
pub fn token_sha256(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn random_hex(n: usize) -> Result<String, AuthError> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| AuthError::Unavailable(format!("no randomness for a token: {e}")))?;
    Ok(hex(&bytes))
}

/// A new token (256 random bits) and its id (64 random bits, safe to log and show).
pub fn new_token() -> Result<(String, String), AuthError> {
    Ok((
        format!("{TOKEN_PREFIX}{}", random_hex(32)?),
        format!("tok_{}", random_hex(8)?),
    ))
}

/// The token of an `authorization` header value: `Bearer TOKEN` (the scheme in any case,
/// spaces around the token allowed). Read on every authenticated call: one pass over the
/// bytes, no copy.
pub fn bearer(value: Option<&http::HeaderValue>) -> Result<&str, AuthError> {
    const SCHEME: &[u8] = b"bearer ";
    let v = value.ok_or(AuthError::Missing)?.as_bytes();
    if v.len() > TOKEN_BYTES_MAX + SCHEME.len() || v.len() < SCHEME.len() {
        return Err(AuthError::Malformed);
    }
    let (scheme, rest) = v.split_at(SCHEME.len());
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(AuthError::Malformed);
    }
    let token = rest.trim_ascii();
    // Visible ASCII only, so the bytes are UTF-8 and the conversion cannot fail. Every
    // byte is looked at (no early exit), which the compiler turns into wide compares.
    let graphic = token
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(b'!') <= b'~' - b'!'));
    if token.is_empty() || !graphic {
        return Err(AuthError::Malformed);
    }
    std::str::from_utf8(token).map_err(|_| AuthError::Malformed)
}

/// Where lookups go on a cache miss.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// The caller a token hash speaks for; None if unknown or revoked.
    async fn identify(&self, token_sha256: &str) -> Result<Option<Caller>, AuthError>;
}

/// The caller a token hash speaks for at `ledger`, with the token's id; None if the token
/// is unknown, revoked or unreadable. A sub-user comes with its access (at most
/// `DEFAULT_ACCESS_ACCOUNTS_MAX` accounts).
pub async fn lookup(
    ledger: &Ledger,
    token_sha256: &str,
) -> Result<Option<(String, Caller)>, AuthError> {
    let Some(row) = ledger.token_by_hash(token_sha256).await? else {
        return Ok(None);
    };
    let access = if row.kind == Kind::SubUser.name() && row.revoked_at_ms.is_none() {
        ledger
            .access_of(&row.name, DEFAULT_ACCESS_ACCOUNTS_MAX)
            .await?
    } else {
        Vec::new()
    };
    Ok(Caller::from_row(&row, access).map(|caller| (row.token_id, caller)))
}

/// Lookups in the ledger (embedded ledger, or `quotad ledger` itself).
pub struct LedgerSource(pub Arc<Ledger>);

#[async_trait]
impl TokenSource for LedgerSource {
    async fn identify(&self, token_sha256: &str) -> Result<Option<Caller>, AuthError> {
        Ok(lookup(&self.0, token_sha256)
            .await?
            .map(|(_, caller)| caller))
    }
}

/// Authentication settings of a server.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// No authentication at all: local development only.
    pub disabled: bool,
    pub cache_ttl_ms: u64,
    pub cache_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            disabled: false,
            cache_ttl_ms: DEFAULT_AUTH_CACHE_TTL_MS,
            cache_max: DEFAULT_AUTH_CACHE_MAX,
        }
    }
}

/// What the cache knows of one token: who it speaks for (None: nobody) and when it was
/// looked up.
type Known = (Option<Arc<Caller>>, i64);

/// Checks tokens against a source through a bounded cache. The cache is keyed by the
/// token as presented, so a known token costs one hash-map hit (no SHA-256, no copy);
/// the source is asked by its SHA-256 only on a miss. Its entries live in memory for
/// `auth_cache_ttl_ms`, as the tokens do in the requests that carry them. Its hasher is
/// foldhash (seeded at random per process, a few times cheaper than SipHash on a token):
/// the cache is bounded (`cache_max`) and emptied when full, so colliding keys could not
/// grow a chain beyond it.
pub struct Authenticator {
    source: Option<Arc<dyn TokenSource>>,
    cache: DashMap<Box<str>, Known, foldhash::fast::RandomState>,
    cfg: AuthConfig,
    clock: SharedClock,
}

impl Authenticator {
    pub fn new(cfg: AuthConfig, source: Arc<dyn TokenSource>, clock: SharedClock) -> Self {
        Authenticator {
            source: (!cfg.disabled).then_some(source),
            cache: DashMap::default(),
            cfg,
            clock,
        }
    }

    pub fn disabled(&self) -> bool {
        self.source.is_none()
    }

    /// The caller of a request with these headers.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, AuthError> {
        self.authenticate_shared(headers)
            .await
            .map(|c| Caller::clone(&c))
    }

    /// The caller of a request with these headers, as the cache shares it.
    pub async fn authenticate_shared(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<Caller>, AuthError> {
        if let Some(known) = self.cached(headers) {
            return known;
        }
        let Some(source) = &self.source else {
            return Ok(unchecked());
        };
        let token = bearer(headers.get(http::header::AUTHORIZATION))?;
        let now_ms = self.clock.now_ms();
        let ttl_ms = self.ttl_ms();
        let found = match source.identify(&token_sha256(token)).await {
            Ok(found) => found.map(Arc::new),
            // The source (a remote ledger) cannot be asked: an earlier answer, however
            // old, still holds, so a sidecar keeps serving known callers from its leases
            // through a ledger outage. A revocation cannot reach it then anyway.
            Err(e) => match self.cache.get(token) {
                Some(stale) => {
                    tracing::debug!(error = %e, "token source unavailable; using the last answer");
                    let found = stale.0.clone();
                    drop(stale);
                    // Trusted for one more TTL: calls do not each wait on a dead ledger.
                    self.remember(token, found.clone(), now_ms, ttl_ms);
                    return found.ok_or(AuthError::Unknown);
                }
                None => return Err(e),
            },
        };
        if ttl_ms > 0 {
            self.remember(token, found.clone(), now_ms, ttl_ms);
        }
        found.ok_or(AuthError::Unknown)
    }

    /// The caller of a request with these headers if that is known without asking the
    /// source (authentication off, a malformed header, a token looked up within
    /// `auth_cache_ttl_ms`): one hash-map hit on the token as presented, nothing made.
    /// None: the source must be asked (`authenticate_shared`).
    pub fn cached(&self, headers: &http::HeaderMap) -> Option<Result<Arc<Caller>, AuthError>> {
        if self.source.is_none() {
            return Some(Ok(unchecked()));
        }
        let token = match bearer(headers.get(http::header::AUTHORIZATION)) {
            Ok(token) => token,
            Err(e) => return Some(Err(e)),
        };
        let e = self.cache.get(token)?;
        (self.clock.now_ms().saturating_sub(e.1) < self.ttl_ms())
            .then(|| e.0.clone().ok_or(AuthError::Unknown))
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.cfg.cache_ttl_ms).unwrap_or(i64::MAX)
    }

    fn remember(&self, token: &str, found: Option<Arc<Caller>>, now_ms: i64, ttl_ms: i64) {
        if self.cache.len() >= self.cfg.cache_max {
            self.cache
                .retain(|_, e| now_ms.saturating_sub(e.1) < ttl_ms);
            if self.cache.len() >= self.cfg.cache_max {
                self.cache.clear();
            }
        }
        if self.cfg.cache_max > 0 {
            self.cache.insert(token.into(), (found, now_ms));
        }
    }

    /// Forgets every lookup: after a token or an access change made in this process.
    pub fn forget_all(&self) {
        self.cache.clear();
    }
}

/// The one `Caller::Unchecked` of the process (authentication off).
fn unchecked() -> Arc<Caller> {
    static UNCHECKED: std::sync::OnceLock<Arc<Caller>> = std::sync::OnceLock::new();
    UNCHECKED
        .get_or_init(|| Arc::new(Caller::Unchecked))
        .clone()
}

/// Makes a token for `kind` (with its account or name) and records its hash at `ledger`.
pub async fn create_token(
    ledger: &Ledger,
    kind: Kind,
    account_id: &str,
    name: &str,
) -> Result<(TokenRow, String), AuthError> {
    let (token, token_id) = new_token()?;
    let row = TokenRow {
        token_id,
        token_sha256: token_sha256(&token),
        kind: kind.name().to_owned(),
        account_id: account_id.to_owned(),
        name: name.to_owned(),
        created_at_ms: ledger.now_ms(),
        revoked_at_ms: None,
    };
    ledger.insert_token(row.clone()).await?;
    Ok((row, token))
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// On first start: if the ledger has no operator token, makes one and writes it to `path`
/// (mode 0600), so `quotad ctl` finds it. Returns whether it made one.
pub async fn ensure_operator_token(ledger: &Ledger, path: &Path) -> Result<bool, BootstrapError> {
    if ledger.has_operator_token().await? {
        return Ok(false);
    }
    let (row, token) = create_token(ledger, Kind::Operator, "", "operator").await?;
    let file = |source| BootstrapError::File {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(file)?;
    }
    let tmp = path.with_extension("token.tmp");
    write_private(&tmp, &format!("{token}\n")).map_err(file)?;
    std::fs::rename(&tmp, path).map_err(file)?;
    tracing::info!(path = %path.display(), token_id = %row.token_id, "created the operator token");
    Ok(true)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Reads a token from a file (the first line, trimmed).
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// A client-side interceptor that sends `authorization: Bearer TOKEN` on every call (none
/// without a token): for `quotad ctl`, the examples and tests.
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// None if the token cannot be a header value (it is then not one of ours).
    pub fn new(token: Option<&str>) -> Option<Bearer> {
        match token {
            None => Some(Bearer(None)),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .ok()
                .map(|v| Bearer(Some(v))),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that sends a bearer token.
pub type BearerChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let (a, id_a) = new_token().unwrap();
        let (b, id_b) = new_token().unwrap();
        assert_ne!(a, b);
        assert_ne!(id_a, id_b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        let h = token_sha256(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[TOKEN_PREFIX.len()..]));
        // The known SHA-256 of "abc".
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some(&hv("Bearer qdt_x"))).unwrap(), "qdt_x");
        assert_eq!(bearer(Some(&hv("bearer  qdt_x "))).unwrap(), "qdt_x");
        assert_eq!(bearer(Some(&hv("BEARER qdt_x\t"))).unwrap(), "qdt_x");
        assert!(matches!(bearer(None), Err(AuthError::Missing)));
        let bad_bytes = http::HeaderValue::from_bytes(b"Bearer qdt_\xe9").unwrap();
        assert!(matches!(
            bearer(Some(&bad_bytes)),
            Err(AuthError::Malformed)
        ));
        for bad in [
            "qdt_x",
            "Basic qdt_x",
            "Bearer ",
            "Bearer a b",
            "Bearerqdt_x",
            "Bearer\tqdt_x",
            "Bear",
            "",
        ] {
            assert!(
                matches!(bearer(Some(&hv(bad))), Err(AuthError::Malformed)),
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "x".repeat(TOKEN_BYTES_MAX + 1));
        assert!(matches!(
            bearer(Some(&hv(&long))),
            Err(AuthError::Malformed)
        ));
    }

    #[test]
    fn permissions_parse_and_print() {
        let p = Perms::parse(&["reserve".into(), "watch".into()]).unwrap();
        assert!(p.contains(Permission::Reserve) && p.contains(Permission::Watch));
        assert!(!p.contains(Permission::Admit));
        assert_eq!(p.names(), vec!["reserve", "watch"]);
        assert!(matches!(
            Perms::parse(&["root".into()]),
            Err(AuthError::UnknownPermission(_))
        ));
        assert_eq!(Perms::all().names().len(), 5);
    }

    #[test]
    fn rules() {
        let owner = Caller::Owner {
            account_id: "a".into(),
        };
        assert!(owner.allow("a", Permission::Reserve).is_ok());
        assert!(owner.allow("b", Permission::Balance).is_err());
        let sub = Caller::SubUser {
            name: "bob".into(),
            access: [("a".to_owned(), Perms(Permission::Balance.bit()))].into(),
        };
        assert!(sub.allow("a", Permission::Balance).is_ok());
        let e = sub.allow("a", Permission::Reserve).unwrap_err().to_string();
        assert!(e.contains("bob") && e.contains("reserve") && e.contains("owner must grant"));
        assert!(sub.sees("a") && !sub.sees("b"));
        let sidecar = Caller::Sidecar { name: "s".into() };
        assert!(sidecar.allow("a", Permission::Balance).is_err());
        assert!(Caller::Unchecked.allow("a", Permission::Reserve).is_ok());
        let proxy = Caller::Proxy {
            name: "edge".into(),
        };
        assert!(proxy.allow("a", Permission::Admit).is_err());
        assert!(!proxy.sees("a"));
        assert_eq!(Kind::from_name("proxy"), Some(Kind::Proxy));
    }
}
