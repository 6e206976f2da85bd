//! The service surface an operator's tools rely on: health, reflection in both versions
//! (grpcurl speaks v1; grpcio-reflection, Postman and older tools only v1alpha), and a
//! graceful restart that keeps accounts, grants, holds and charges.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

async fn channel(h: &Harness) -> Channel {
    let addr = h.running.as_ref().unwrap().addr;
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn health_reports_serving_for_each_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let h = Harness::start().await;
    let mut client = HealthClient::new(channel(&h).await);
    for service in ["quotad.v1.Quota", "quotad.v1.Admin"] {
        let r = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service}");
    }
    let unknown = client
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_lists_services_and_resolves_symbols() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let h = Harness::start().await;
    let mut client = ServerReflectionClient::new(channel(&h).await);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "quotad.v1.Quota".into(),
            )),
        },
    ];
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list, got {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "quotad.v1.Quota",
        "quotad.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let second = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
        panic!("expected a file descriptor, got {second:?}");
    };
    assert!(!fd.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn reflection_v1alpha_lists_services() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let h = Harness::start().await;
    let mut client = ServerReflectionClient::new(channel(&h).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let r = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else {
        panic!("expected a service list, got {r:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "quotad.v1.Quota"));
}

#[tokio::test]
async fn graceful_restart_keeps_accounts_grants_holds_and_charges() {
    let mut h = Harness::start().await;
    h.create_account("acme", "3").await.unwrap();
    h.purchase("acme", "plan.compute.starter", "p1", 0)
        .await
        .unwrap();
    h.grant_credit("acme", "c1", COUPON, ANY, "1", T0_MS + 10 * DAY_MS)
        .await
        .unwrap();
    assert!(
        h.reserve("acme", "done", GPU_SHARED, A10, 10_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("done", 10_000).await.unwrap();
    let open = h
        .reserve("acme", "open", GPU_SHARED, A10, 20_000, 0)
        .await
        .unwrap();
    assert!(open.admitted);
    let before = h.get_balance("acme").await.unwrap();

    h.restart().await;

    let after = h.get_balance("acme").await.unwrap();
    assert_eq!(after, before, "the whole account view survives a restart");
    assert_eq!(amount(&after.held), "0.012");
    // The open hold is still there to commit; the settled one still answers its retry.
    assert_eq!(
        amount(&h.commit("open", 20_000).await.unwrap().charged),
        "0.012"
    );
    assert_eq!(
        amount(&h.commit("done", 10_000).await.unwrap().charged),
        "0.006"
    );
    let s = h.get_statement("acme").await.unwrap();
    let ids: Vec<&str> = s.entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(ids, vec!["done", "open"]);
    h.shutdown().await;
}
