//! Authentication and sub-user permissions (issue 6, R9), black-box over real gRPC: every
//! rule of `auth`, each tried as an attacker would: no token, a garbage or revoked token,
//! an owner reaching for another account, a sub-user beyond what it was granted, another
//! account's reservation or session, Admin by a non-operator, a sidecar without the right
//! token at its ledger; plus `quotad ctl` finding the operator token, and TLS / mTLS.

mod common;

use common::*;
use quotad::clock::ManualClock;
use quotad::pb;
use quotad::pb::admin_client::AdminClient;
use quotad::pb::quota_client::QuotaClient;
use quotad::server::{self, LedgerServeConfig};
use tonic::Code;

async fn token_for(h: &mut Harness, kind: pb::principal::Kind, subject: &str) -> (String, String) {
    token_at(&mut h.admin, kind, subject).await
}

/// (token id, token) of a new token for `kind` (owner: `subject` is the account).
async fn token_at(
    admin: &mut AdminClient<Ch>,
    kind: pb::principal::Kind,
    subject: &str,
) -> (String, String) {
    let (account_id, name) = if kind == pb::principal::Kind::Owner {
        (subject.to_owned(), String::new())
    } else {
        (String::new(), subject.to_owned())
    };
    let r = admin
        .create_token(pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: kind as i32,
                account_id,
                name,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.token.starts_with("qdt_"), "{r:?}");
    (r.token_id, r.token)
}

async fn clients(h: &Harness, token: &str) -> (QuotaClient<Ch>, AdminClient<Ch>) {
    connect(h.running.as_ref().unwrap().addr, token).await
}

async fn grant(
    admin: &mut AdminClient<Ch>,
    account: &str,
    user: &str,
    perms: &[&str],
) -> Vec<String> {
    admin
        .grant_access(pb::GrantAccessRequest {
            account_id: account.into(),
            sub_user: user.into(),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
        })
        .await
        .map(|r| r.into_inner().permissions)
        .unwrap()
}

async fn balance(q: &mut QuotaClient<Ch>, account: &str) -> Result<pb::Balance, tonic::Status> {
    q.get_balance(pb::GetBalanceRequest {
        account_id: account.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn reserve(
    q: &mut QuotaClient<Ch>,
    account: &str,
    id: &str,
) -> Result<pb::ReserveResponse, tonic::Status> {
    q.reserve(reserve_req(account, id, 1_000))
        .await
        .map(|r| r.into_inner())
}

async fn commit(q: &mut QuotaClient<Ch>, id: &str) -> Result<pb::CommitResponse, tonic::Status> {
    q.commit(pb::CommitRequest {
        reservation_id: id.into(),
        quantity: 1_000,
    })
    .await
    .map(|r| r.into_inner())
}

/// Two accounts with money, acme and globex.
async fn two_accounts() -> Harness {
    let mut h = Harness::start().await;
    h.create("acme", "10").await;
    h.create("globex", "10").await;
    h
}

#[tokio::test]
async fn first_start_writes_a_private_operator_token_once() {
    let mut h = Harness::start().await;
    let path = h.dir.path().join(quotad::auth::OPERATOR_TOKEN_FILE);
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(first.trim().starts_with("qdt_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    // The database keeps only the hash.
    let db = std::fs::read(h.dir.path().join("ledger.db")).unwrap();
    let raw = first.trim().as_bytes();
    assert!(
        !db.windows(raw.len()).any(|w| w == raw),
        "the token is stored in clear"
    );
    h.restart().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    h.create("acme", "1").await;
}

#[tokio::test]
async fn a_missing_malformed_garbage_or_revoked_token_is_unauthenticated() {
    let mut h = two_accounts().await;
    let addr = h.running.as_ref().unwrap().addr;
    let (mut q, mut a) = connect(addr, "").await;
    assert_status(
        "no token",
        balance(&mut q, "acme").await,
        Code::Unauthenticated,
        &["missing bearer token"],
    );
    let r = a
        .create_account(pb::CreateAccountRequest {
            account_id: "evil".into(),
            balance: None,
        })
        .await;
    assert_status(
        "no token, Admin",
        r,
        Code::Unauthenticated,
        &["missing bearer token"],
    );

    let (mut q, _) = connect(
        addr,
        "qdt_0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await;
    assert_status(
        "garbage",
        balance(&mut q, "acme").await,
        Code::Unauthenticated,
        &["unknown or revoked token"],
    );
    // The hash of a real token, sent as the token, is not the token.
    let hash = quotad::auth::token_sha256(&h.token);
    let (mut q, _) = connect(addr, &hash).await;
    assert_status(
        "hash as token",
        balance(&mut q, "acme").await,
        Code::Unauthenticated,
        &["unknown or revoked token"],
    );

    // Not `Bearer TOKEN`.
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let basic = h.token.clone();
    let mut q = QuotaClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", format!("Basic {basic}").parse().unwrap());
        Ok(req)
    });
    let r = q
        .get_balance(pb::GetBalanceRequest {
            account_id: "acme".into(),
        })
        .await;
    assert_status("Basic scheme", r, Code::Unauthenticated, &["Bearer"]);

    // Revoked: refused at once (the embedded ledger clears the cache on revocation).
    let (id, token) = token_for(&mut h, pb::principal::Kind::Owner, "acme").await;
    let (mut q, _) = clients(&h, &token).await;
    balance(&mut q, "acme").await.unwrap();
    h.admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: id.clone(),
        })
        .await
        .unwrap();
    assert_status(
        "revoked",
        balance(&mut q, "acme").await,
        Code::Unauthenticated,
        &["unknown or revoked token"],
    );
    let r = h
        .admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: "tok_nope".into(),
        })
        .await;
    assert_status("unknown token id", r, Code::NotFound, &["tok_nope"]);
    // Nothing was changed by any refused call.
    assert_eq!(amount(&h.balance("acme").await.balance), "10");
}

#[tokio::test]
async fn an_owner_acts_on_its_own_account_only() {
    let mut h = two_accounts().await;
    let (_, token) = token_for(&mut h, pb::principal::Kind::Owner, "acme").await;
    let (mut q, mut a) = clients(&h, &token).await;
    assert!(reserve(&mut q, "acme", "a1").await.unwrap().admitted);
    commit(&mut q, "a1").await.unwrap();
    balance(&mut q, "acme").await.unwrap();
    q.admit(pb::AdmitRequest {
        account_id: "acme".into(),
        resource: pb::Resource::GpuShared as i32,
        sku: A10.into(),
        quantity: 1,
    })
    .await
    .unwrap();

    for (what, r) in [
        ("balance", balance(&mut q, "globex").await.map(drop)),
        ("reserve", reserve(&mut q, "globex", "g1").await.map(drop)),
    ] {
        assert_status(what, r, Code::PermissionDenied, &["acme", "globex"]);
    }
    // Admin is the operator's, but an owner manages access to its own account.
    let r = a
        .top_up(pb::TopUpRequest {
            account_id: "acme".into(),
            amount: Some(money("100")),
            topup_id: "free-money".into(),
        })
        .await;
    assert_status("owner TopUp", r, Code::PermissionDenied, &["operator"]);
    let r = a
        .create_token(pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: pb::principal::Kind::Operator as i32,
                account_id: String::new(),
                name: "me".into(),
            }),
        })
        .await;
    assert_status(
        "owner CreateToken",
        r,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_eq!(
        grant(&mut a, "acme", "bob", &["balance"]).await,
        vec!["balance"]
    );
    let r = a
        .grant_access(pb::GrantAccessRequest {
            account_id: "globex".into(),
            sub_user: "bob".into(),
            permissions: vec!["reserve".into()],
        })
        .await;
    assert_status(
        "owner grants on another account",
        r,
        Code::PermissionDenied,
        &["globex"],
    );
    assert_eq!(amount(&h.balance("globex").await.balance), "10");
}

/// Each permission opens exactly its calls, only on the account it was granted on.
#[tokio::test]
async fn a_sub_user_has_exactly_what_its_owner_granted() {
    let mut h = two_accounts().await;
    let (_, owner) = token_for(&mut h, pb::principal::Kind::Owner, "acme").await;
    let (_, bob) = token_for(&mut h, pb::principal::Kind::SubUser, "bob").await;
    let (_, mut owner_admin) = clients(&h, &owner).await;
    let (mut q, mut bob_admin) = clients(&h, &bob).await;

    // One call per permission; each returns Ok or the status.
    async fn try_call(q: &mut QuotaClient<Ch>, perm: &str, n: usize) -> Result<(), tonic::Status> {
        match perm {
            "reserve" => reserve(q, "acme", &format!("bob-{n}")).await.map(drop),
            "admit" => q
                .admit(pb::AdmitRequest {
                    account_id: "acme".into(),
                    resource: pb::Resource::GpuShared as i32,
                    sku: A10.into(),
                    quantity: 1,
                })
                .await
                .map(drop),
            "sessions" => q
                .start_session(pb::StartSessionRequest {
                    account_id: "acme".into(),
                    session_id: format!("bob-s{n}"),
                    sku: "gpu.exclusive.a10.8c30g".into(),
                    auto_shutdown: None,
                    idle_timeout_ms: 0,
                })
                .await
                .map(drop),
            "balance" => balance(q, "acme").await.map(drop),
            "watch" => q
                .watch(pb::WatchRequest {
                    account_id: "acme".into(),
                })
                .await
                .map(drop),
            _ => unreachable!(),
        }
    }
    const PERMS: [&str; 5] = ["reserve", "admit", "sessions", "balance", "watch"];
    let mut n = 0;
    for p in PERMS {
        n += 1;
        let r = try_call(&mut q, p, n).await;
        assert_status(
            &format!("{p} before the grant"),
            r,
            Code::PermissionDenied,
            &[
                "sub-user bob",
                p,
                "account acme",
                "owner must grant",
                "GrantAccess",
            ],
        );
    }
    let mut granted: Vec<&str> = Vec::new();
    for p in PERMS {
        grant(&mut owner_admin, "acme", "bob", &[p]).await;
        granted.push(p);
        for other in PERMS {
            n += 1;
            let r = try_call(&mut q, other, n).await;
            if granted.contains(&other) {
                r.unwrap_or_else(|e| panic!("{other} after granting {granted:?}: {e:?}"));
            } else {
                assert_status(
                    &format!("{other} with {granted:?}"),
                    r,
                    Code::PermissionDenied,
                    &[other],
                );
            }
        }
    }
    // Not on another account, and a sub-user manages nothing.
    assert_status(
        "other account",
        balance(&mut q, "globex").await,
        Code::PermissionDenied,
        &["globex", "owner must grant"],
    );
    let r = bob_admin
        .grant_access(pb::GrantAccessRequest {
            account_id: "acme".into(),
            sub_user: "bob".into(),
            permissions: vec!["reserve".into()],
        })
        .await;
    assert_status(
        "sub-user GrantAccess",
        r,
        Code::PermissionDenied,
        &["operator"],
    );
    // Revoked again: denied again, at once.
    let left = owner_admin
        .revoke_access(pb::RevokeAccessRequest {
            account_id: "acme".into(),
            sub_user: "bob".into(),
            permissions: vec!["balance".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .permissions;
    assert_eq!(left, vec!["reserve", "admit", "sessions", "watch"]);
    assert_status(
        "balance revoked",
        balance(&mut q, "acme").await,
        Code::PermissionDenied,
        &["balance"],
    );
    reserve(&mut q, "acme", "still").await.unwrap();
    owner_admin
        .revoke_access(pb::RevokeAccessRequest {
            account_id: "acme".into(),
            sub_user: "bob".into(),
            permissions: vec![],
        })
        .await
        .unwrap();
    assert_status(
        "all revoked",
        reserve(&mut q, "acme", "no").await,
        Code::PermissionDenied,
        &["reserve"],
    );
    // A permission that does not exist is named.
    let r = owner_admin
        .grant_access(pb::GrantAccessRequest {
            account_id: "acme".into(),
            sub_user: "bob".into(),
            permissions: vec!["root".into()],
        })
        .await;
    assert_status(
        "bad permission",
        r,
        Code::InvalidArgument,
        &["root", "reserve"],
    );
}

#[tokio::test]
async fn nobody_settles_or_probes_another_accounts_reservation_or_session() {
    let mut h = two_accounts().await;
    let (_, acme) = token_for(&mut h, pb::principal::Kind::Owner, "acme").await;
    let (_, globex) = token_for(&mut h, pb::principal::Kind::Owner, "globex").await;
    let (_, bob) = token_for(&mut h, pb::principal::Kind::SubUser, "bob").await;
    let (mut qa, mut acme_admin) = clients(&h, &acme).await;
    let (mut qg, _) = clients(&h, &globex).await;
    let (mut qb, _) = clients(&h, &bob).await;
    assert!(
        reserve(&mut qa, "acme", "secret-job")
            .await
            .unwrap()
            .admitted
    );
    qa.start_session(pb::StartSessionRequest {
        account_id: "acme".into(),
        session_id: "secret-session".into(),
        sku: "gpu.exclusive.a10.8c30g".into(),
        auto_shutdown: None,
        idle_timeout_ms: 0,
    })
    .await
    .unwrap();

    // globex: answered exactly like an id that does not exist.
    let theirs = commit(&mut qg, "secret-job").await.unwrap_err();
    let unknown = commit(&mut qg, "no-such-job").await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace("secret-job", "X"),
        unknown.message().replace("no-such-job", "X")
    );
    let r = qg
        .release(pb::ReleaseRequest {
            reservation_id: "secret-job".into(),
        })
        .await;
    assert_status("release theirs", r, Code::NotFound, &["does not exist"]);
    for r in [
        qg.heartbeat(pb::HeartbeatRequest {
            session_id: "secret-session".into(),
            busy: false,
        })
        .await
        .map(drop),
        qg.stop_session(pb::StopSessionRequest {
            session_id: "secret-session".into(),
        })
        .await
        .map(drop),
    ] {
        assert_status("their session", r, Code::NotFound, &["does not exist"]);
    }
    // Reusing their id for globex's own reservation: refused without naming acme.
    let r = reserve(&mut qg, "globex", "secret-job").await;
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(!s.message().contains("acme"), "{s:?}");
    // A usage stream of globex's own taking over acme's job: refused without naming acme.
    let mut job = Job::open(&mut qg, "globex", "secret-job").await;
    let s = job.report(1, 1_000).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(!s.message().contains("acme"), "{s:?}");
    // A usage stream naming acme's job on acme is refused at its first report.
    let mut job = Job::open(&mut qg, "acme", "secret-job").await;
    let r = job.report(1, 1_000).await;
    assert_status("stream on acme", r, Code::PermissionDenied, &["acme"]);

    // bob with balance on acme sees acme, so is told what he lacks.
    grant(&mut acme_admin, "acme", "bob", &["balance"]).await;
    assert_status(
        "bob commits",
        commit(&mut qb, "secret-job").await,
        Code::PermissionDenied,
        &["reserve", "owner must grant"],
    );
    let r = qb
        .stop_session(pb::StopSessionRequest {
            session_id: "secret-session".into(),
        })
        .await;
    assert_status("bob stops", r, Code::PermissionDenied, &["sessions"]);

    // The hold is untouched, and its owner settles it.
    let b = h.balance("acme").await;
    assert_ne!(amount(&b.held), "0");
    commit(&mut qa, "secret-job").await.unwrap();
}

#[tokio::test]
async fn a_sidecar_token_is_for_the_ledger_service_only() {
    let mut h = two_accounts().await;
    let (_, sidecar) = token_for(&mut h, pb::principal::Kind::Sidecar, "s1").await;
    let (mut q, mut a) = clients(&h, &sidecar).await;
    assert_status(
        "sidecar on Quota",
        balance(&mut q, "acme").await,
        Code::PermissionDenied,
        &["sidecar"],
    );
    let r = a.get_catalog(pb::GetCatalogRequest {}).await;
    assert_status("sidecar on Admin", r, Code::PermissionDenied, &["sidecar"]);
}

#[tokio::test]
async fn auth_disabled_lets_everyone_in_and_writes_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth.disabled = true;
    let running = server::start(cfg, ManualClock::new(T0_MS)).await.unwrap();
    let (mut q, mut a) = connect(running.addr, "").await;
    create_account(&mut a, "acme", "1").await;
    balance(&mut q, "acme").await.unwrap();
    assert!(!dir.path().join(quotad::auth::OPERATOR_TOKEN_FILE).exists());
    running.shutdown().await.unwrap();
}

/// `quotad ctl` with nothing but the default: ./quotad-data/operator.token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_finds_the_operator_token_in_the_data_dir() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("quotad-data");
    let running = server::start(config(&data), ManualClock::new(T0_MS))
        .await
        .unwrap();
    let addr = running.addr.to_string();
    let ctl = |cwd: &std::path::Path, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quotad"));
        cmd.current_dir(cwd)
            .arg("ctl")
            .arg("--addr")
            .arg(&addr)
            .args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("QUOTAD_") {
                cmd.env_remove(k);
            }
        }
        cmd.output().unwrap()
    };
    let out = tokio::task::block_in_place(|| ctl(work.path(), &["create-account", "acme"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokio::task::block_in_place(|| ctl(work.path(), &["create-token", "owner", "acme"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("qdt_"), "{stdout}");
    // Elsewhere there is no token to find: refused, and said so.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = tokio::task::block_in_place(|| ctl(elsewhere.path(), &["balance", "acme"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("UNAUTHENTICATED") && stderr.contains("missing bearer token"),
        "{stderr}"
    );
    running.shutdown().await.unwrap();
}

/// Ledger mode: the ledger refuses Sync without a sidecar (or operator) token, the sidecar
/// checks its callers' tokens with the ledger, and a revocation reaches it within the
/// cache TTL (driven by the manual clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_serves_only_sidecars_with_a_token_and_revocations_reach_them() {
    const TTL_MS: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let mut lcfg = LedgerServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        format!("sqlite:{}", dir.path().join("ledger.db").display()),
    );
    lcfg.operator_token_file = Some(dir.path().join("ledger-operator.token"));
    let ledger = server::start_ledger(lcfg, clock.clone()).await.unwrap();
    let operator =
        quotad::auth::read_token_file(&dir.path().join("ledger-operator.token")).unwrap();
    let (_, mut admin) = connect(ledger.addr, &operator).await;
    create_account(&mut admin, "acme", "10").await;
    let (_, sidecar_token) = token_at(&mut admin, pb::principal::Kind::Sidecar, "s1").await;
    let (owner_id, owner) = token_at(&mut admin, pb::principal::Kind::Owner, "acme").await;

    let sidecar = |name: &str, token: Option<&str>| {
        let mut cfg = config(&dir.path().join(name));
        cfg.ledger_url = Some(format!("http://{}", ledger.addr));
        cfg.sync_interval_ms = 3_600_000;
        cfg.ledger_token = token.map(str::to_owned);
        cfg.auth.cache_ttl_ms = TTL_MS;
        cfg
    };
    // No token, a wrong one, a non-sidecar one: the ledger says no.
    for (name, token, why) in [
        ("none", None, "missing bearer token"),
        ("wrong", Some("qdt_wrong"), "unknown or revoked token"),
        (
            "owner",
            Some(owner.as_str()),
            "sidecars and the operator only",
        ),
    ] {
        let running = server::start(sidecar(name, token), clock.clone())
            .await
            .unwrap();
        let e = running
            .engine()
            .refresh_account("acme")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(why) && e.contains("token"), "{name}: {e}");
        // Its callers cannot be checked either: refused, not let through.
        let (mut q, _) = connect(running.addr, &owner).await;
        let r = balance(&mut q, "acme").await;
        assert!(r.is_err(), "{name}: {r:?}");
        running.shutdown().await.ok();
    }
    // The right one: syncs, and serves the owner (checked with the ledger).
    let running = server::start(sidecar("good", Some(&sidecar_token)), clock.clone())
        .await
        .unwrap();
    running.engine().refresh_account("acme").await.unwrap();
    let (mut q, _) = connect(running.addr, &owner).await;
    assert!(reserve(&mut q, "acme", "r1").await.unwrap().admitted);
    assert_status(
        "other account",
        balance(&mut q, "globex").await,
        Code::PermissionDenied,
        &["acme"],
    );
    // The sidecar's token is no Quota caller.
    let (mut qs, _) = connect(running.addr, &sidecar_token).await;
    assert_status(
        "sidecar token on Quota",
        balance(&mut qs, "acme").await,
        Code::PermissionDenied,
        &["sidecar"],
    );
    // A client with an owner token cannot Sync at the ledger.
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", ledger.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut lc = pb::ledger_client::LedgerClient::new(with_token(ch.clone(), &owner));
    let r = lc
        .sync(pb::SyncRequest {
            sidecar_id: "fake".into(),
            ..Default::default()
        })
        .await;
    assert_status("owner Sync", r, Code::PermissionDenied, &["sidecars"]);
    let mut lc = pb::ledger_client::LedgerClient::new(with_token(ch, ""));
    let r = lc
        .authenticate(pb::AuthenticateRequest {
            token_sha256: quotad::auth::token_sha256(&owner),
        })
        .await;
    assert_status(
        "anonymous Authenticate",
        r,
        Code::Unauthenticated,
        &["missing"],
    );

    // Revoked at the ledger: the sidecar still trusts its cached answer within the TTL,
    // and refuses once it has passed.
    admin
        .revoke_token(pb::RevokeTokenRequest { token_id: owner_id })
        .await
        .unwrap();
    balance(&mut q, "acme").await.unwrap();
    clock.advance_ms(TTL_MS as i64);
    assert_status(
        "revoked, after the TTL",
        balance(&mut q, "acme").await,
        Code::Unauthenticated,
        &["unknown or revoked"],
    );
    running.shutdown().await.unwrap();
    ledger.shutdown().await.unwrap();
}

/// TLS with a CA made here: a TLS client works, a plaintext one does not; with mTLS a
/// client without a certificate is refused and one with a certificate from the CA works.
#[tokio::test]
async fn tls_and_mutual_tls() {
    use quotad::tls::{ClientTls, ServerTls};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let ca_file = write("ca.pem", ca.pem());
    let (cert, key) = leaf(vec!["localhost".into()]);
    let (cert_file, key_file) = (write("server.pem", cert), write("server.key", key));
    let (ccert, ckey) = leaf(vec!["client".into()]);
    let (ccert_file, ckey_file) = (write("client.pem", ccert), write("client.key", ckey));

    for mutual in [false, true] {
        let data = dir.path().join(format!("data-{mutual}"));
        let mut cfg = config(&data);
        cfg.tls = Some(ServerTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: mutual.then(|| ca_file.clone()),
        });
        let running = server::start(cfg, ManualClock::new(T0_MS)).await.unwrap();
        let token = operator_token(&data);
        let port = running.addr.port();
        let tls_client = |with_cert: bool| {
            let tls = ClientTls {
                ca_file: Some(ca_file.clone()),
                cert_file: with_cert.then(|| ccert_file.clone()),
                key_file: with_cert.then(|| ckey_file.clone()),
                domain: Some("localhost".into()),
            };
            let token = token.clone();
            async move {
                let ch =
                    tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
                        .unwrap()
                        .tls_config(tls.config().unwrap())
                        .unwrap()
                        .connect()
                        .await?;
                let mut q = QuotaClient::new(with_token(ch, &token));
                Ok::<_, Box<dyn std::error::Error>>(
                    q.get_balance(pb::GetBalanceRequest {
                        account_id: "nobody".into(),
                    })
                    .await,
                )
            }
        };
        // NOT_FOUND from the server: the call went through TLS and authentication.
        let r = tls_client(true).await.unwrap();
        assert_eq!(r.unwrap_err().code(), Code::NotFound);
        let r = tls_client(false).await;
        if mutual {
            let refused = match r {
                Err(_) => true,
                Ok(call) => call.is_err_and(|s| s.code() != Code::NotFound),
            };
            assert!(refused, "mTLS let a client without a certificate in");
        } else {
            assert_eq!(r.unwrap().unwrap_err().code(), Code::NotFound);
        }
        // Plaintext gets nowhere.
        let plain = async {
            let ch = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await?;
            let mut q = QuotaClient::new(with_token(ch, &token));
            q.get_balance(pb::GetBalanceRequest {
                account_id: "nobody".into(),
            })
            .await
            .map_err(|s| Box::new(s) as Box<dyn std::error::Error>)
        };
        let r: Result<_, Box<dyn std::error::Error>> = plain.await;
        assert!(r.is_err(), "a plaintext client was served");
        running.shutdown().await.unwrap();
    }
}

/// ReportStorage charges the account it names, so it is checked like a Commit: the owner
/// reports its own storage, nobody else's, and a sub-user only with `reserve`.
#[tokio::test]
async fn storage_reports_need_the_reserve_permission_on_the_account() {
    let mut h = two_accounts().await;
    let report = |account: &str| pb::ReportStorageRequest {
        account_id: account.into(),
        bytes_stored: 1_000_000_000,
        at_ms: 0,
    };
    let (_, owner) = token_for(&mut h, pb::principal::Kind::Owner, "acme").await;
    let (mut q, mut a) = clients(&h, &owner).await;
    q.report_storage(report("acme")).await.unwrap();
    let r = q.report_storage(report("globex")).await;
    assert_status("owner of another", r, Code::PermissionDenied, &["globex"]);

    let (_, bob) = token_for(&mut h, pb::principal::Kind::SubUser, "bob").await;
    let (mut qb, _) = clients(&h, &bob).await;
    grant(&mut a, "acme", "bob", &["balance"]).await;
    let r = qb.report_storage(report("acme")).await;
    assert_status(
        "sub-user without reserve",
        r,
        Code::PermissionDenied,
        &["bob", "reserve", "acme", "owner must grant"],
    );
    grant(&mut a, "acme", "bob", &["reserve"]).await;
    qb.report_storage(report("acme")).await.unwrap();
}
