//! The Envoy bootstrap `quotad ctl envoy-config` prints: one listener in front of one
//! upstream, every request checked by quotad's ext_authz and settled through the gRPC
//! access log, Envoy authenticated to quotad with a proxy token. It is meant to run as it
//! is (`envoy -c FILE`) and to be the starting point of a real configuration, so every
//! quotad-specific choice is written out in it with a comment.

use std::path::{Path, PathBuf};

use super::mapping::{self, DEFAULT_USAGE_HEADER};

/// The route timeout unless `--route-timeout-ms` says otherwise: long GPU requests.
pub const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 300_000;
/// How much longer than the route's timeout a hold lives: the response is finished, the
/// access log flushed and the Commit made within it.
pub const HOLD_MARGIN_MS: u64 = 60_000;
/// Longest route timeout accepted: the hold (timeout + margin) must stay within the
/// engine's longest hold TTL.
pub const ROUTE_TIMEOUT_MAX_MS: u64 = 23 * 60 * 60 * 1000;
/// How long Envoy waits for Check: it may include one bounded lease request to the ledger.
pub const CHECK_TIMEOUT_MS: u64 = 3_000;
/// How often Envoy flushes access log entries to quotad (its default is 1 s): charges land
/// sooner, and fewer are in Envoy's buffer if it stops.
pub const ACCESS_LOG_FLUSH_MS: u64 = 100;
/// Largest estimate: the engine's quantities are i64 on the wire.
pub const QUANTITY_MAX: u64 = i64::MAX.unsigned_abs();
/// The name of the ext_authz filter, under which its dynamic metadata is kept.
pub const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";

#[derive(clap::Args, Debug, Clone)]
pub struct EnvoyConfigArgs {
    /// Where Envoy listens for the tool's HTTP clients (HOST:PORT)
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// The tool runtime behind Envoy (HOST:PORT)
    #[arg(long, value_name = "ADDR")]
    pub upstream: String,
    /// The catalog sku requests are charged under
    #[arg(long)]
    pub sku: String,
    /// The estimate held per request, in the sku's unit (GPU time: milliseconds)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=QUANTITY_MAX))]
    pub quantity: u64,
    /// Response header in which the upstream reports what a request used
    #[arg(long, value_name = "H", default_value = DEFAULT_USAGE_HEADER)]
    pub usage_header: String,
    /// Compute, count and log decisions but never deny and never charge
    #[arg(long)]
    pub shadow: bool,
    /// Let requests through when quotad cannot be reached (they are then not charged)
    #[arg(long)]
    pub failure_mode_allow: bool,
    /// The route's timeout; the hold lives one minute longer
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_ROUTE_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..=ROUTE_TIMEOUT_MAX_MS))]
    pub route_timeout_ms: u64,
    /// Name of the proxy token created for this Envoy
    #[arg(long, default_value = "envoy")]
    pub name: String,
    /// Where to create the proxy token when Admin is not served at --addr (a sidecar
    /// with --ledger: the `quotad ledger`); default --addr
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--{flag} {value:?}: {reason}")]
    Addr {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("--sku {0:?} is empty or longer than 64 bytes")]
    Sku(String),
    #[error("--usage-header {0:?} is not a lower-case header name (letters, digits, - and _)")]
    UsageHeader(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A `HOST:PORT` Envoy connects to or listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `HOST:PORT`, `[V6]:PORT`, or a URL `http(s)://HOST:PORT[/]` (as `ctl --addr`).
    pub fn parse(flag: &'static str, value: &str) -> Result<HostPort, BootstrapError> {
        let err = |reason| BootstrapError::Addr {
            flag,
            value: value.chars().take(100).collect(),
            reason,
        };
        let v = value.trim();
        let v = v.split_once("://").map_or(v, |(_, rest)| rest);
        let v = v.trim_end_matches('/');
        let (host, port) = v.rsplit_once(':').ok_or(err("expected HOST:PORT"))?;
        let port: u16 = port.parse().map_err(|_| err("the port is not a number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if port == 0 {
            return Err(err("the port must not be 0"));
        }
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':');
        if host.is_empty() || host.len() > 253 || !host.bytes().all(ok) {
            return Err(err("the host is not a host name or IP address"));
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

/// TLS of Envoy's connection to quotad (from ctl's own TLS settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotadTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Everything the bootstrap is made of.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub listen: HostPort,
    pub upstream: HostPort,
    pub quotad: HostPort,
    /// None: plaintext to quotad.
    pub quotad_tls: Option<QuotadTls>,
    pub proxy_token: String,
    pub sku: String,
    pub quantity: u64,
    pub usage_header: String,
    pub shadow: bool,
    pub failure_mode_allow: bool,
    pub route_timeout_ms: u64,
}

impl EnvoyConfigArgs {
    /// The bootstrap for a quotad at `quotad_addr` (ctl's --addr), with TLS if that is
    /// https or a CA is given.
    pub fn bootstrap(
        &self,
        quotad_addr: &str,
        tls: QuotadTls,
        proxy_token: String,
    ) -> Result<Bootstrap, BootstrapError> {
        if self.sku.is_empty() || self.sku.len() > 64 || self.sku.contains(['"', '\\', '\n']) {
            return Err(BootstrapError::Sku(self.sku.clone()));
        }
        if !mapping::header_name_ok(&self.usage_header) {
            return Err(BootstrapError::UsageHeader(self.usage_header.clone()));
        }
        let https = quotad_addr.trim().starts_with("https://") || tls.ca_file.is_some();
        let absolute = |p: &Option<PathBuf>| -> Result<Option<PathBuf>, BootstrapError> {
            p.as_deref().map(absolute_path).transpose()
        };
        let quotad_tls = if https {
            Some(QuotadTls {
                ca_file: absolute(&tls.ca_file)?,
                cert_file: absolute(&tls.cert_file)?,
                key_file: absolute(&tls.key_file)?,
            })
        } else {
            None
        };
        Ok(Bootstrap {
            listen: HostPort::parse("listen", &self.listen)?,
            upstream: HostPort::parse("upstream", &self.upstream)?,
            quotad: HostPort::parse("addr", quotad_addr)?,
            quotad_tls,
            proxy_token,
            sku: self.sku.clone(),
            quantity: self.quantity,
            usage_header: self.usage_header.clone(),
            shadow: self.shadow,
            failure_mode_allow: self.failure_mode_allow,
            route_timeout_ms: self.route_timeout_ms,
        })
    }
}

/// Envoy reads files relative to its own working directory: give it absolute paths.
fn absolute_path(p: &Path) -> Result<PathBuf, BootstrapError> {
    std::fs::canonicalize(p).map_err(|source| BootstrapError::File {
        path: p.to_owned(),
        source,
    })
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// A cluster of one endpoint: a static IP, or a host name resolved by DNS.
fn cluster(name: &str, at: &HostPort, extra: &str) -> String {
    let kind = if at.is_ip() { "STATIC" } else { "LOGICAL_DNS" };
    format!(
        r#"  - name: {name}
    type: {kind}
    connect_timeout: 1s
{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {host}, port_value: {port} }}
"#,
        host = q(&at.host),
        port = at.port,
    )
}

/// The quotad cluster: HTTP/2 (gRPC), TLS if quotad serves it.
fn quotad_cluster(b: &Bootstrap) -> String {
    let mut extra = String::from(
        r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"#,
    );
    if let Some(tls) = &b.quotad_tls {
        extra.push_str(&format!(
            r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
"#,
            sni = q(&b.quotad.host)
        ));
        if let Some(ca) = &tls.ca_file {
            extra.push_str(&format!(
                "          validation_context:\n            trusted_ca: {{ filename: {} }}\n",
                q(&ca.display().to_string())
            ));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            extra.push_str(&format!(
                "          tls_certificates:\n          - certificate_chain: {{ filename: {} }}\n            private_key: {{ filename: {} }}\n",
                q(&cert.display().to_string()),
                q(&key.display().to_string())
            ));
        }
    }
    cluster("quotad", &b.quotad, &extra)
}

/// How Envoy calls quotad: the quotad cluster, with the proxy token as gRPC metadata.
fn grpc_service(b: &Bootstrap, indent: usize, timeout: Option<u64>) -> String {
    let pad = " ".repeat(indent);
    let timeout = timeout.map_or(String::new(), |ms| {
        format!("{pad}timeout: {}\n", seconds(ms))
    });
    format!(
        "{pad}envoy_grpc: {{ cluster_name: quotad }}\n{timeout}{pad}initial_metadata:\n{pad}- key: authorization\n{pad}  value: {}\n",
        q(&format!("Bearer {}", b.proxy_token))
    )
}

/// The whole bootstrap YAML.
pub fn render(b: &Bootstrap) -> String {
    let mode = if b.shadow { "shadow" } else { "enforce" };
    let ttl_ms = b.route_timeout_ms.saturating_add(HOLD_MARGIN_MS);
    format!(
        r#"# Envoy bootstrap made by `quotad ctl envoy-config`: Envoy on {listen_host}:{listen_port} in front of
# {up_host}:{up_port}; every request is admitted by quotad at {q_host}:{q_port} (ext_authz Check: a
# Reserve of the route's estimate for the account of the request's bearer token) and
# charged once when it finished (the gRPC access log: the upstream's {usage} header,
# else the estimate; released if the upstream failed before reporting).
# The proxy token below lets this Envoy, and nothing else, call Check: keep the file private.
# Run: envoy -c THIS_FILE
static_resources:
  listeners:
  - name: quotad_ingress
    address:
      socket_address: {{ address: {listen_addr}, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: quotad_ingress
          # x-request-id names the reservation: Envoy makes one for every request.
          generate_request_id: true
          route_config:
            name: tools
            virtual_hosts:
            - name: tool
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                # The end user's quotad token is never forwarded, also when ext_authz lets
                # a request through in failure mode without looking at it.
                request_headers_to_remove: [authorization]
                route:
                  cluster: upstream
                  timeout: {timeout}
                  # Retried attempts are one request: one Check, one charge.
                  retry_policy:
                    retry_on: connect-failure,refused-stream,retriable-status-codes
                    retriable_status_codes: [503]
                    num_retries: 2
                typed_per_filter_config:
                  {filter}:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      # What a request on this route costs; quotad reads these at Check.
                      context_extensions:
                        quotad.sku: {sku}
                        quotad.quantity: "{quantity}"
                        quotad.mode: {mode}
                        quotad.ttl_ms: "{ttl_ms}"
                        quotad.usage_header: {usage_q}
          http_filters:
          - name: {filter}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              # false: quotad unreachable means 503 and nothing passes unpaid. true: requests
              # pass uncharged (marked x-envoy-auth-failure-mode-allowed) until it is back.
              failure_mode_allow: {fail_open}
              failure_mode_allow_header_add: true
              status_on_error: {{ code: ServiceUnavailable }}
              grpc_service:
{check_service}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          access_log:
          # Every request quotad admitted, once finished (client gone or upstream failed
          # included), goes to quotad, which commits or releases its hold.
          - name: envoy.access_loggers.http_grpc
            filter:
              metadata_filter:
                matcher:
                  filter: {filter}
                  path: [{{ key: quotad.mode }}]
                  value: {{ present_match: true }}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
              common_config:
                log_name: quotad
                transport_api_version: V3
                buffer_flush_interval: {flush}
                buffer_size_bytes: 16384
                grpc_service:
{log_service}              additional_response_headers_to_log: [{usage_q}]
  clusters:
{upstream_cluster}{quotad_cluster}"#,
        listen_host = b.listen.host,
        listen_port = b.listen.port,
        listen_addr = q(&b.listen.host),
        up_host = b.upstream.host,
        up_port = b.upstream.port,
        q_host = b.quotad.host,
        q_port = b.quotad.port,
        usage = b.usage_header,
        usage_q = q(&b.usage_header),
        timeout = seconds(b.route_timeout_ms),
        filter = EXT_AUTHZ_FILTER,
        sku = q(&b.sku),
        quantity = b.quantity,
        fail_open = b.failure_mode_allow,
        check_service = grpc_service(b, 16, Some(CHECK_TIMEOUT_MS)),
        log_service = grpc_service(b, 18, None),
        flush = seconds(ACCESS_LOG_FLUSH_MS),
        upstream_cluster = cluster("upstream", &b.upstream, ""),
        quotad_cluster = quotad_cluster(b),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> EnvoyConfigArgs {
        EnvoyConfigArgs {
            listen: "0.0.0.0:8080".into(),
            upstream: "comfyui:8188".into(),
            sku: "gpu.shared.a10".into(),
            quantity: 60_000,
            usage_header: DEFAULT_USAGE_HEADER.into(),
            shadow: false,
            failure_mode_allow: false,
            route_timeout_ms: DEFAULT_ROUTE_TIMEOUT_MS,
            name: "envoy".into(),
            admin_addr: None,
        }
    }

    /// deploy/envoy/envoy.yaml is this function's output for the guide's example (with a
    /// placeholder token); `QUOTAD_BLESS=1 cargo test --lib envoy::bootstrap` rewrites it.
    #[test]
    fn the_deployed_example_is_current() {
        let mut a = args();
        a.listen = "0.0.0.0:8080".into();
        let b = a
            .bootstrap(
                "http://quotad:50051",
                QuotadTls::default(),
                "qdt_REPLACE_WITH_THE_PROXY_TOKEN".into(),
            )
            .unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/envoy.yaml");
        let want = render(&b);
        if std::env::var_os("QUOTAD_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is stale: QUOTAD_BLESS=1 cargo test --lib envoy::bootstrap"
        );
    }

    #[test]
    fn addresses_parse() {
        let h = HostPort::parse("addr", "http://127.0.0.1:50051").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("127.0.0.1", 50051));
        assert!(h.is_ip());
        let h = HostPort::parse("addr", "[::1]:9").unwrap();
        assert_eq!(h.host, "::1");
        assert!(!HostPort::parse("u", "comfyui:8188").unwrap().is_ip());
        for bad in ["nohost", "h:0", "h:x", ":80", "a b:80", "h\":1"] {
            assert!(HostPort::parse("listen", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bootstrap_says_what_quotad_needs() {
        let b = args()
            .bootstrap(
                "http://127.0.0.1:50051",
                QuotadTls::default(),
                "qdt_abc".into(),
            )
            .unwrap();
        let y = render(&b);
        for want in [
            "quotad.sku: \"gpu.shared.a10\"",
            "quotad.quantity: \"60000\"",
            "quotad.mode: enforce",
            "quotad.ttl_ms: \"360000\"",
            "value: \"Bearer qdt_abc\"",
            "failure_mode_allow: false",
            "additional_response_headers_to_log: [\"x-quotad-usage\"]",
            "type: LOGICAL_DNS",
            "socket_address: { address: \"127.0.0.1\", port_value: 50051 }",
            "timeout: 300.000s",
        ] {
            assert!(y.contains(want), "missing {want:?} in\n{y}");
        }
        assert!(!y.contains("UpstreamTlsContext"));
        let mut a = args();
        a.shadow = true;
        a.failure_mode_allow = true;
        let y = render(
            &a.bootstrap("127.0.0.1:1", QuotadTls::default(), "t".into())
                .unwrap(),
        );
        assert!(y.contains("quotad.mode: shadow") && y.contains("failure_mode_allow: true"));
        let mut a = args();
        a.usage_header = "X-Usage".into();
        assert!(matches!(
            a.bootstrap("127.0.0.1:1", QuotadTls::default(), "t".into()),
            Err(BootstrapError::UsageHeader(_))
        ));
    }
}
