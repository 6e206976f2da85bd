//! Envoy's ext_authz v3 `Authorization/Check`: identify the end user by the HTTP request's
//! bearer token, find the account, and Reserve the route's estimate under an id derived
//! from x-request-id (a shadow route asks Admit, which holds nothing). Thin: the decisions
//! are `mapping`'s and the engine's; this moves them in and out of Envoy's messages.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use envoy_types::pb::google::rpc;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use super::mapping::{self, Denial, Mode, Route, RouteError};
use super::meta;
use crate::auth::{Authenticator, Caller, Permission};
use crate::engine::{self, Engine};
use crate::grpc::convert;
use crate::grpc::error::Invalid;
use crate::metrics::SharedMetrics;

/// The label of Check decisions in `quotad_decisions_total`.
const RPC_ENFORCE: &str = "envoy.Check";
const RPC_SHADOW: &str = "envoy.Check.shadow";

pub struct AuthzService {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    metrics: SharedMetrics,
    currency: String,
}

/// Check's answer before it becomes Envoy's message.
enum Decision {
    Allow {
        account_id: String,
        reservation_id: String,
    },
    Deny(Denial),
}

impl AuthzService {
    pub fn new(engine: Arc<Engine>, auth: Arc<Authenticator>, metrics: SharedMetrics) -> Self {
        let currency = engine.catalog().currency.clone();
        AuthzService {
            engine,
            auth,
            metrics,
            currency,
        }
    }

    /// The account the end user acts on, if the user may admit work there.
    async fn account(&self, headers: &HashMap<String, String>) -> Result<String, Denial> {
        let mut map = http::HeaderMap::new();
        if let Some(v) = headers.get("authorization")
            && let Ok(v) = http::HeaderValue::from_str(v)
        {
            map.insert(http::header::AUTHORIZATION, v);
        }
        let caller = self
            .auth
            .authenticate(&map)
            .await
            .map_err(|e| mapping::auth_denied(&e))?;
        let named = headers.get(mapping::ACCOUNT_HEADER).map(|a| a.trim());
        let account = match (&caller, named) {
            (Caller::Owner { account_id }, None) => account_id.clone(),
            (_, Some(a)) => convert::id(mapping::ACCOUNT_HEADER, a)
                .map_err(|e| mapping::bad_account(e.0))?
                .to_owned(),
            (_, None) => return Err(mapping::account_required()),
        };
        caller
            .allow(&account, Permission::Admit)
            .map_err(|e| mapping::auth_denied(&e))?;
        Ok(account)
    }

    async fn decide(
        &self,
        route: &Route,
        request_id: &str,
        headers: &HashMap<String, String>,
    ) -> Decision {
        let account_id = match self.account(headers).await {
            Ok(a) => a,
            Err(d) => return Decision::Deny(d),
        };
        let Some(price) = self.engine.catalog().prices.get(&route.sku) else {
            let e = RouteError::UnknownSku(route.sku.clone());
            tracing::error!(error = %e, "ext_authz route misconfigured");
            return Decision::Deny(mapping::misconfigured(&e));
        };
        let resource = price.resource;
        let reservation_id = mapping::reservation_id(&account_id, request_id);
        if route.mode == Mode::Enforce && self.engine.reservation_account(&reservation_id).is_some()
        {
            // Envoy checks a request once; a second request under the same x-request-id
            // (a client's replay) would run on the first one's hold and charge, uncharged.
            return Decision::Deny(mapping::request_id_used());
        }
        let outcome = match route.mode {
            Mode::Enforce => self
                .engine
                .reserve(engine::ReserveRequest {
                    account_id: account_id.clone(),
                    reservation_id: reservation_id.clone(),
                    resource,
                    sku: route.sku.clone(),
                    quantity: route.quantity,
                    ttl_ms: route.ttl_ms,
                })
                .await
                .map(|o| (o.admitted, o.reason, o.available)),
            Mode::Shadow => self
                .engine
                .admit(&account_id, resource, &route.sku, route.quantity)
                .await
                .map(|o| (o.admitted, o.reason, o.available)),
        };
        match outcome {
            Ok((true, _, _)) => Decision::Allow {
                account_id,
                reservation_id,
            },
            Ok((false, reason, available)) => Decision::Deny(mapping::denied(
                reason.unwrap_or(crate::billing::DenyReason::InsufficientFunds),
                available,
            )),
            Err(e) => {
                tracing::warn!(%account_id, %reservation_id, error = %e, "ext_authz check failed");
                Decision::Deny(mapping::engine_denied(&e))
            }
        }
    }

    fn count(&self, mode: Mode, decision: &Decision) {
        let rpc = match mode {
            Mode::Enforce => RPC_ENFORCE,
            Mode::Shadow => RPC_SHADOW,
        };
        match decision {
            Decision::Allow { .. } => self.metrics.decision(rpc, true, ""),
            Decision::Deny(d) => self.metrics.decision(rpc, false, d.reason),
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let attrs = request.into_inner().attributes.unwrap_or_default();
        let http = attrs
            .request
            .and_then(|r| r.http)
            .ok_or_else(|| Invalid("CheckRequest has no HTTP request attributes".into()))?;
        let route = match mapping::route(&attrs.context_extensions) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, path = %http.path.chars().take(128).collect::<String>(),
                    "ext_authz route misconfigured");
                let d = mapping::misconfigured(&e);
                // A route meant to be shadowed is never denied, misconfigured or not.
                if mapping::is_shadow(&attrs.context_extensions) {
                    self.metrics.decision(RPC_SHADOW, false, d.reason);
                    return Ok(Response::new(shadow_pass(d.reason)));
                }
                self.metrics.decision(RPC_ENFORCE, false, d.reason);
                return Ok(Response::new(deny(&d, &self.currency)));
            }
        };
        // Not `http.id`: Envoy fills that with its internal stream id, new for every Check.
        let request_id = http
            .headers
            .get("x-request-id")
            .cloned()
            .unwrap_or_default();
        let decision = if request_id.is_empty() {
            let e = RouteError::NoRequestId;
            tracing::error!(error = %e, "ext_authz request without an id");
            Decision::Deny(mapping::misconfigured(&e))
        } else {
            self.decide(&route, &request_id, &http.headers).await
        };
        self.count(route.mode, &decision);
        let response = match (route.mode, decision) {
            (
                Mode::Enforce,
                Decision::Allow {
                    account_id,
                    reservation_id,
                },
            ) => {
                tracing::debug!(%account_id, %reservation_id, %request_id, "ext_authz allowed");
                allow(&route, Some(&account_id), Some(&reservation_id), "ALLOWED")
            }
            (Mode::Enforce, Decision::Deny(d)) => {
                tracing::info!(status = d.status, reason = d.reason, message = %d.message,
                    %request_id, "ext_authz denied");
                deny(&d, &self.currency)
            }
            (Mode::Shadow, Decision::Allow { account_id, .. }) => {
                tracing::info!(%account_id, %request_id, sku = %route.sku,
                    "shadow: would allow");
                allow(&route, Some(&account_id), None, "ALLOWED")
            }
            (Mode::Shadow, Decision::Deny(d)) => {
                tracing::info!(status = d.status, reason = d.reason, message = %d.message,
                    %request_id, sku = %route.sku, "shadow: would deny; let through");
                allow(&route, None, None, d.reason)
            }
        };
        Ok(Response::new(response))
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(ValueKind::StringValue(s.to_owned())),
    }
}

/// Lets the request through: the end user's token is removed, the account and reservation
/// are set for the upstream (any the client sent are replaced or removed), and the
/// access log gets what it needs to settle the request as dynamic metadata.
fn allow(
    route: &Route,
    account_id: Option<&str>,
    reservation_id: Option<&str>,
    decision: &str,
) -> CheckResponse {
    let mut headers = Vec::new();
    let mut headers_to_remove = vec!["authorization".to_owned()];
    for (name, value) in [
        (mapping::ACCOUNT_HEADER, account_id),
        (mapping::RESERVATION_HEADER, reservation_id),
    ] {
        match value {
            Some(v) => headers.push(header(name, v)),
            None => headers_to_remove.push(name.to_owned()),
        }
    }
    let mut fields = HashMap::from([
        (meta::MODE.to_owned(), string(route.mode.name())),
        (meta::DECISION.to_owned(), string(decision)),
    ]);
    if let (Some(account), Some(reservation)) = (account_id, reservation_id) {
        fields.insert(meta::ACCOUNT.to_owned(), string(account));
        fields.insert(meta::RESERVATION.to_owned(), string(reservation));
        fields.insert(
            meta::ESTIMATE.to_owned(),
            string(&route.quantity.to_string()),
        );
        fields.insert(meta::USAGE_HEADER.to_owned(), string(&route.usage_header));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..OkHttpResponse::default()
        })),
    }
}

/// Lets a request of a shadow route through whose route could not be read.
fn shadow_pass(decision: &str) -> CheckResponse {
    let route = Route {
        sku: String::new(),
        quantity: 0,
        mode: Mode::Shadow,
        ttl_ms: 0,
        usage_header: String::new(),
    };
    allow(&route, None, None, decision)
}

/// Stops the request with the denial's status and JSON body.
fn deny(d: &Denial, currency: &str) -> CheckResponse {
    let mut headers = vec![header("content-type", "application/json")];
    if d.status == 401 {
        headers.push(header("www-authenticate", "Bearer"));
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::PermissionDenied as i32,
            message: d.message.clone(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(d.status),
            }),
            headers,
            body: d.body(currency),
        })),
    }
}
