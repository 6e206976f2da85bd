//! The tower layer that authenticates every RPC before a service sees it, and applies the
//! rules that depend only on the method: Admin is the operator's (but GrantAccess,
//! RevokeAccess and GetStatement, which an owner may call on its own account, and
//! GetCatalog, which any owner or sub-user may read), the Ledger service is for
//! sidecars and the operator, the Envoy services (ext_authz Check, the access log stream)
//! are for proxies and the operator, and the Quota calls that name an account, a reservation or
//! a session go on to their adapter, which checks the account (`Caller::allow`). Any other
//! method, such as one added later without an account check, is the operator's: the rule
//! is deny unless listed. Health and reflection are open (an orchestrator probes them).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::{AuthError, Authenticator, Caller};

/// Quota methods whose adapter checks the account they act on.
const ACCOUNT_CHECKED: &[&str] = &[
    "/quotad.v1.Quota/Reserve",
    "/quotad.v1.Quota/Commit",
    "/quotad.v1.Quota/Release",
    "/quotad.v1.Quota/Admit",
    "/quotad.v1.Quota/GetBalance",
    "/quotad.v1.Quota/StreamUsage",
    "/quotad.v1.Quota/StartSession",
    "/quotad.v1.Quota/Heartbeat",
    "/quotad.v1.Quota/StopSession",
    "/quotad.v1.Quota/Watch",
    "/quotad.v1.Quota/ReportStorage",
    "/quotad.v1.Admin/GrantAccess",
    "/quotad.v1.Admin/RevokeAccess",
    "/quotad.v1.Admin/GetStatement",
    // Not about an account: the catalog is for anyone who may call quotad at all.
    "/quotad.v1.Admin/GetCatalog",
];

#[derive(Debug, PartialEq, Eq)]
enum Rule {
    Open,
    /// Any authenticated caller; the adapter checks the account.
    Adapter,
    Ledger,
    /// The Envoy services: a `proxy` token or the operator.
    Proxy,
    Operator,
}

/// The Envoy services quotad serves (`crate::envoy`); a proxy token reaches only these.
const PROXY_SERVICES: &[&str] = &[
    "/envoy.service.auth.v3.Authorization/",
    "/envoy.service.accesslog.v3.AccessLogService/",
];

fn rule(path: &str) -> Rule {
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        Rule::Open
    } else if ACCOUNT_CHECKED.contains(&path) {
        Rule::Adapter
    } else if path.starts_with("/quotad.v1.Ledger/") {
        Rule::Ledger
    } else if PROXY_SERVICES.iter().any(|p| path.starts_with(p)) {
        Rule::Proxy
    } else {
        Rule::Operator
    }
}

/// The method's name for messages: `Quota/Reserve`.
fn method(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_start_matches("quotad.v1.")
        .chars()
        .take(128)
        .collect()
}

fn check(path: &str, caller: &Caller) -> Result<(), AuthError> {
    match (rule(path), caller) {
        (Rule::Open, _) | (_, Caller::Unchecked | Caller::Operator { .. }) => Ok(()),
        (Rule::Ledger, Caller::Sidecar { .. }) => Ok(()),
        (Rule::Ledger, _) => Err(AuthError::SidecarOnly { rpc: method(path) }),
        (Rule::Proxy, Caller::Proxy { .. }) => Ok(()),
        (Rule::Proxy, _) => Err(AuthError::ProxyOnly { rpc: method(path) }),
        (_, Caller::Sidecar { .. }) => Err(AuthError::SidecarElsewhere { rpc: method(path) }),
        (_, Caller::Proxy { .. }) => Err(AuthError::ProxyElsewhere { rpc: method(path) }),
        (Rule::Adapter, _) => Ok(()),
        (Rule::Operator, _) => Err(AuthError::OperatorOnly { rpc: method(path) }),
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type Response = http::Response<tonic::body::Body>;
type Boxed<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    /// A known token (or an open method) is decided here, and the call goes on without
    /// a future of its own; only a token the cache does not know waits for its source.
    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if rule(req.uri().path()) == Rule::Open {
            return AuthFuture::Call {
                inner: self.inner.call(req),
            };
        }
        if let Some(known) = self.auth.cached(req.headers()) {
            return match pass(&mut req, known) {
                None => AuthFuture::Call {
                    inner: self.inner.call(req),
                },
                refused => AuthFuture::Refused { resp: refused },
            };
        }
        // The clone is ready only if polled; swap so the one we polled serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        AuthFuture::Lookup {
            fut: Box::pin(async move {
                let found = auth.authenticate_shared(req.headers()).await;
                match pass(&mut req, found) {
                    None => inner.call(req).await,
                    Some(refused) => Ok(refused),
                }
            }),
        }
    }
}

/// Applies the method's rule to an authenticated caller and records the caller in the
/// request (None); or the refusal to answer.
fn pass<B>(req: &mut http::Request<B>, found: Result<Arc<Caller>, AuthError>) -> Option<Response> {
    let checked = found.and_then(|caller| check(req.uri().path(), &caller).map(|()| caller));
    match checked {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            None
        }
        Err(e) => {
            tracing::debug!(rpc = %req.uri().path(), error = %e, "refused");
            Some(tonic::Status::from(e).into_http())
        }
    }
}

pin_project! {
    /// A call past authentication: the inner service's own future (a known token), a
    /// refusal, or the lookup of a token the cache does not know (boxed: rare).
    #[project = AuthProj]
    pub enum AuthFuture<F, E> {
        Call {
            #[pin]
            inner: F,
        },
        Refused {
            resp: Option<Response>,
        },
        Lookup {
            fut: Boxed<E>,
        },
    }
}

impl<F, E> Future for AuthFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AuthProj::Call { inner } => inner.poll(cx),
            AuthProj::Refused { resp } => Poll::Ready(Ok(resp.take().unwrap_or_else(|| {
                tonic::Status::internal("auth: polled after it answered").into_http()
            }))),
            AuthProj::Lookup { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_by_method() {
        let owner = Caller::Owner {
            account_id: "a".into(),
        };
        let sidecar = Caller::Sidecar { name: "s".into() };
        let op = Caller::Operator { name: "o".into() };
        assert!(check("/quotad.v1.Quota/Reserve", &owner).is_ok());
        assert!(check("/quotad.v1.Admin/GrantAccess", &owner).is_ok());
        assert!(check("/quotad.v1.Admin/TopUp", &owner).is_err());
        assert!(check("/quotad.v1.Admin/TopUp", &op).is_ok());
        assert!(check("/quotad.v1.Ledger/Sync", &owner).is_err());
        assert!(check("/quotad.v1.Ledger/Sync", &sidecar).is_ok());
        assert!(check("/quotad.v1.Quota/Reserve", &sidecar).is_err());
        // A method not listed is the operator's.
        assert!(check("/quotad.v1.Quota/SomethingNew", &owner).is_err());
        assert!(check("/quotad.v1.Quota/SomethingNew", &op).is_ok());
        assert!(check("/grpc.health.v1.Health/Check", &sidecar).is_ok());
        // The Envoy services are the proxies' (and the operator's), and only theirs.
        let proxy = Caller::Proxy {
            name: "edge".into(),
        };
        let envoy_check = "/envoy.service.auth.v3.Authorization/Check";
        let envoy_log = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";
        for path in [envoy_check, envoy_log] {
            assert!(check(path, &proxy).is_ok());
            assert!(check(path, &op).is_ok());
            assert!(check(path, &owner).is_err());
            assert!(check(path, &sidecar).is_err());
        }
        assert!(check("/quotad.v1.Quota/Reserve", &proxy).is_err());
        assert!(check("/quotad.v1.Admin/CreateToken", &proxy).is_err());
        assert!(check("/quotad.v1.Ledger/Sync", &proxy).is_err());
    }
}
