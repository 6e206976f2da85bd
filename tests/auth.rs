//! Authentication and sub-user permissions (issue 6, R9), black-box over real gRPC: every
//! rule of `auth`, each tried as an attacker would: no token, a garbage or revoked token,
//! an owner reaching for another account, a sub-user beyond what it was granted, another
//! account's reservation or session, Admin by a non-operator, a sidecar without the right
//! token at its ledger; plus `quotad ctl` finding the operator token, and TLS / mTLS.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use quotad::clock::ManualClock;
use quotad::pb;
use quotad::pb::quota_client::QuotaClient;
use quotad::server::{self, LedgerServeConfig};
use tonic::Code;

/// (token id, token) of a new token for `kind` (owner: `subject` is the account).
async fn token(c: &mut Client, kind: pb::principal::Kind, subject: &str) -> (String, String) {
    let (account_id, name) = if kind == OWNER {
        (subject, "")
    } else {
        ("", subject)
    };
    let r = c.create_token(kind, account_id, name).await.unwrap();
    assert!(r.token.starts_with("qdt_"), "{r:?}");
    (r.token_id, r.token)
}

/// Two accounts with money, acme and globex.
async fn two_accounts() -> Harness {
    let mut h = Harness::start().await;
    h.create_account("acme", "10").await.unwrap();
    h.create_account("globex", "10").await.unwrap();
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
    h.create_account("acme", "1").await.unwrap();
}

#[tokio::test]
async fn a_missing_malformed_garbage_or_revoked_token_is_unauthenticated() {
    let mut h = two_accounts().await;
    let addr = h.running.as_ref().unwrap().addr;
    let mut q = Client::connect(addr, "").await;
    assert_status(
        "no token",
        q.get_balance("acme").await,
        Code::Unauthenticated,
        &["missing bearer token"],
    );
    let r = q.create_account("evil", None).await;
    assert_status(
        "no token, Admin",
        r,
        Code::Unauthenticated,
        &["missing bearer token"],
    );

    let garbage = "qdt_0000000000000000000000000000000000000000000000000000000000000000";
    let mut q = Client::connect(addr, garbage).await;
    assert_status(
        "garbage",
        q.get_balance("acme").await,
        Code::Unauthenticated,
        &["unknown or revoked token"],
    );
    // The hash of a real token, sent as the token, is not the token.
    let hash = quotad::auth::token_sha256(&h.token);
    let mut q = Client::connect(addr, &hash).await;
    assert_status(
        "hash as token",
        q.get_balance("acme").await,
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
    // A header of the test's own: the raw client, not `Client`.
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
    let (id, token) = token(&mut h, OWNER, "acme").await;
    let mut q = Client::connect(h.addr(), &token).await;
    q.get_balance("acme").await.unwrap();
    h.revoke_token(&id).await.unwrap();
    assert_status(
        "revoked",
        q.get_balance("acme").await,
        Code::Unauthenticated,
        &["unknown or revoked token"],
    );
    let r = h.revoke_token("tok_nope").await;
    assert_status("unknown token id", r, Code::NotFound, &["tok_nope"]);
    // Nothing was changed by any refused call.
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().balance), "10");
}

#[tokio::test]
async fn an_owner_acts_on_its_own_account_only() {
    let mut h = two_accounts().await;
    h.create_token(SUB_USER, "", "bob").await.unwrap();
    let (_, token) = token(&mut h, OWNER, "acme").await;
    let mut q = Client::connect(h.addr(), &token).await;
    assert!(
        q.reserve("acme", "a1", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    q.commit("a1", 1_000).await.unwrap();
    q.get_balance("acme").await.unwrap();
    q.admit("acme", pb::Resource::GpuShared, A10, 1)
        .await
        .unwrap();

    for (what, r) in [
        ("balance", q.get_balance("globex").await.map(drop)),
        (
            "reserve",
            q.reserve("globex", "g1", GPU_SHARED, A10, 1_000, 0)
                .await
                .map(drop),
        ),
    ] {
        assert_status(what, r, Code::PermissionDenied, &["acme", "globex"]);
    }
    // Admin is the operator's, but an owner manages access to its own account.
    let r = q.top_up("acme", "100", "free-money").await;
    assert_status("owner TopUp", r, Code::PermissionDenied, &["operator"]);
    let r = q.create_token(OPERATOR, "", "me").await;
    assert_status(
        "owner CreateToken",
        r,
        Code::PermissionDenied,
        &["operator"],
    );
    assert_eq!(
        q.grant_access("acme", "bob", &["balance"])
            .await
            .unwrap()
            .permissions,
        vec!["balance"]
    );
    let r = q.grant_access("globex", "bob", &["reserve"]).await;
    assert_status(
        "owner grants on another account",
        r,
        Code::PermissionDenied,
        &["globex"],
    );
    assert_eq!(
        amount(&h.get_balance("globex").await.unwrap().balance),
        "10"
    );
}

/// Each permission opens exactly its calls, only on the account it was granted on.
#[tokio::test]
async fn a_sub_user_has_exactly_what_its_owner_granted() {
    let mut h = two_accounts().await;
    let (_, owner) = token(&mut h, OWNER, "acme").await;
    let (_, bob) = token(&mut h, SUB_USER, "bob").await;
    let mut owner_admin = Client::connect(h.addr(), &owner).await;
    let mut q = Client::connect(h.addr(), &bob).await;

    // One call per permission; each returns Ok or the status.
    async fn try_call(q: &mut Client, perm: &str, n: usize) -> Result<(), tonic::Status> {
        match perm {
            "reserve" => q
                .reserve("acme", &format!("bob-{n}"), GPU_SHARED, A10, 1_000, 0)
                .await
                .map(drop),
            "admit" => q
                .admit("acme", pb::Resource::GpuShared, A10, 1)
                .await
                .map(drop),
            "sessions" => q
                .start_session(
                    "acme",
                    &format!("bob-s{n}"),
                    "gpu.exclusive.a10.8c30g",
                    None,
                    0,
                )
                .await
                .map(drop),
            "balance" => q.get_balance("acme").await.map(drop),
            "watch" => q.watch("acme").await.map(drop),
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
        owner_admin.grant_access("acme", "bob", &[p]).await.unwrap();
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
        q.get_balance("globex").await,
        Code::PermissionDenied,
        &["globex", "owner must grant"],
    );
    let r = q.grant_access("acme", "bob", &["reserve"]).await;
    assert_status(
        "sub-user GrantAccess",
        r,
        Code::PermissionDenied,
        &["operator"],
    );
    // Revoked again: denied again, at once.
    let left = owner_admin
        .revoke_access("acme", "bob", &["balance"])
        .await
        .unwrap()
        .permissions;
    assert_eq!(left, vec!["reserve", "admit", "sessions", "watch"]);
    assert_status(
        "balance revoked",
        q.get_balance("acme").await,
        Code::PermissionDenied,
        &["balance"],
    );
    q.reserve("acme", "still", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    owner_admin.revoke_access("acme", "bob", &[]).await.unwrap();
    assert_status(
        "all revoked",
        q.reserve("acme", "no", GPU_SHARED, A10, 1_000, 0).await,
        Code::PermissionDenied,
        &["reserve"],
    );
    // A permission that does not exist is named.
    let r = owner_admin.grant_access("acme", "bob", &["root"]).await;
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
    let (_, acme) = token(&mut h, OWNER, "acme").await;
    let (_, globex) = token(&mut h, OWNER, "globex").await;
    let (_, bob) = token(&mut h, SUB_USER, "bob").await;
    let mut qa = Client::connect(h.addr(), &acme).await;
    let mut qg = Client::connect(h.addr(), &globex).await;
    let mut qb = Client::connect(h.addr(), &bob).await;
    assert!(
        qa.reserve("acme", "secret-job", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    qa.start_session("acme", "secret-session", "gpu.exclusive.a10.8c30g", None, 0)
        .await
        .unwrap();

    // globex: answered exactly like an id that does not exist.
    let theirs = qg.commit("secret-job", 1_000).await.unwrap_err();
    let unknown = qg.commit("no-such-job", 1_000).await.unwrap_err();
    assert_eq!(theirs.code(), Code::NotFound);
    assert_eq!(
        theirs.message().replace("secret-job", "X"),
        unknown.message().replace("no-such-job", "X")
    );
    let r = qg.release("secret-job").await;
    assert_status("release theirs", r, Code::NotFound, &["does not exist"]);
    for r in [
        qg.heartbeat("secret-session", false).await.map(drop),
        qg.stop_session("secret-session").await.map(drop),
    ] {
        assert_status("their session", r, Code::NotFound, &["does not exist"]);
    }
    // Reusing their id for globex's own reservation: refused without naming acme.
    let r = qg
        .reserve("globex", "secret-job", GPU_SHARED, A10, 1_000, 0)
        .await;
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(!s.message().contains("acme"), "{s:?}");
    // A usage stream of globex's own taking over acme's job: refused without naming acme.
    let mut job = qg.stream_usage("globex", "secret-job").await.unwrap();
    let s = job.report(1, 1_000).await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(!s.message().contains("acme"), "{s:?}");
    // A usage stream naming acme's job on acme is refused at its first report.
    let mut job = qg.stream_usage("acme", "secret-job").await.unwrap();
    let r = job.report(1, 1_000).await;
    assert_status("stream on acme", r, Code::PermissionDenied, &["acme"]);

    // bob with balance on acme sees acme, so is told what he lacks.
    qa.grant_access("acme", "bob", &["balance"]).await.unwrap();
    assert_status(
        "bob commits",
        qb.commit("secret-job", 1_000).await,
        Code::PermissionDenied,
        &["reserve", "owner must grant"],
    );
    let r = qb.stop_session("secret-session").await;
    assert_status("bob stops", r, Code::PermissionDenied, &["sessions"]);

    // The hold is untouched, and its owner settles it.
    let b = h.get_balance("acme").await.unwrap();
    assert_ne!(amount(&b.held), "0");
    qa.commit("secret-job", 1_000).await.unwrap();
}

#[tokio::test]
async fn a_sidecar_token_is_for_the_ledger_service_only() {
    let mut h = two_accounts().await;
    let (_, sidecar) = token(&mut h, SIDECAR, "s1").await;
    let mut q = Client::connect(h.addr(), &sidecar).await;
    assert_status(
        "sidecar on Quota",
        q.get_balance("acme").await,
        Code::PermissionDenied,
        &["sidecar"],
    );
    let r = q.get_catalog().await;
    assert_status("sidecar on Admin", r, Code::PermissionDenied, &["sidecar"]);
}

#[tokio::test]
async fn auth_disabled_lets_everyone_in_and_writes_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth.disabled = true;
    let running = server::start(cfg, ManualClock::new(T0_MS)).await.unwrap();
    let mut q = Client::connect(running.addr, "").await;
    q.create_account("acme", "1").await.unwrap();
    q.get_balance("acme").await.unwrap();
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
    // ... and the error names the files it looked for.
    for tried in ["quotad-data/operator.token", "quotad-ledger/operator.token"] {
        assert!(stderr.contains(tried), "{stderr}");
    }
    // From elsewhere, --data-dir (or QUOTAD_DATA_DIR) names the server's directory.
    let dir = data.display().to_string();
    let out = tokio::task::block_in_place(|| {
        ctl(elsewhere.path(), &["--data-dir", &dir, "balance", "acme"])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // create-token --quiet prints the token alone, ready for a file.
    let out = tokio::task::block_in_place(|| {
        ctl(
            elsewhere.path(),
            &[
                "--data-dir",
                &dir,
                "create-token",
                "owner",
                "acme",
                "--quiet",
            ],
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("qdt_") && stdout.lines().count() == 1,
        "{stdout}"
    );
    let mut owner = Client::connect(running.addr, stdout.trim()).await;
    owner.get_balance("acme").await.unwrap();
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
    let mut admin = Client::connect(ledger.addr, &operator).await;
    admin.create_account("acme", "10").await.unwrap();
    let (sidecar_token_id, sidecar_token) = token(&mut admin, SIDECAR, "s1").await;
    let (owner_id, owner) = token(&mut admin, OWNER, "acme").await;

    let sidecar = |name: &str, token: Option<&str>| {
        let mut cfg = config(&dir.path().join(name));
        cfg.ledger_url = Some(format!("http://{}", ledger.addr));
        cfg.sync_interval_ms = 3_600_000;
        cfg.ledger_token = token.map(str::to_owned);
        cfg.auth.cache_ttl_ms = TTL_MS;
        cfg
    };
    // No token, a wrong one, a non-sidecar one: the ledger says no, and the sidecar does
    // not start.
    for (name, token, why) in [
        ("none", None, "missing bearer token"),
        ("wrong", Some("qdt_wrong"), "unknown or revoked token"),
        (
            "owner",
            Some(owner.as_str()),
            "sidecars and the operator only",
        ),
    ] {
        let e = match server::start(sidecar(name, token), clock.clone()).await {
            Ok(_) => panic!("{name}: a sidecar with a refused ledger token started"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(why) && e.contains("refused this sidecar's token"),
            "{name}: {e}"
        );
    }
    // The right one: syncs, and serves the owner (checked with the ledger).
    let (_, other_owner) = token(&mut admin, OWNER, "acme").await;
    let running = server::start(sidecar("good", Some(&sidecar_token)), clock.clone())
        .await
        .unwrap();
    running.engine().refresh_account("acme").await.unwrap();
    let mut q = Client::connect(running.addr, &owner).await;
    assert!(
        q.reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    assert_status(
        "other account",
        q.get_balance("globex").await,
        Code::PermissionDenied,
        &["acme"],
    );
    // The sidecar's token is no Quota caller.
    let mut qs = Client::connect(running.addr, &sidecar_token).await;
    assert_status(
        "sidecar token on Quota",
        qs.get_balance("acme").await,
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
    admin.revoke_token(&owner_id).await.unwrap();
    q.get_balance("acme").await.unwrap();
    clock.advance_ms(TTL_MS as i64);
    assert_status(
        "revoked, after the TTL",
        q.get_balance("acme").await,
        Code::Unauthenticated,
        &["unknown or revoked"],
    );
    // The sidecar's own token revoked at the ledger: its callers' tokens cannot be
    // checked, and the answer says the ledger refused it (it did answer).
    admin.revoke_token(&sidecar_token_id).await.unwrap();
    let mut q2 = Client::connect(running.addr, &other_owner).await;
    assert_status(
        "sidecar token revoked",
        q2.get_balance("acme").await,
        Code::Unavailable,
        &["refused this sidecar's own token"],
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
                let mut q = Client::over(with_token(ch, &token));
                Ok::<_, Box<dyn std::error::Error>>(q.get_balance("nobody").await)
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
            let mut q = Client::over(with_token(ch, &token));
            q.get_balance("nobody")
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
    const GB: i64 = 1_000_000_000;
    let (_, owner) = token(&mut h, OWNER, "acme").await;
    let mut q = Client::connect(h.addr(), &owner).await;
    q.report_storage("acme", GB, 0).await.unwrap();
    let r = q.report_storage("globex", GB, 0).await;
    assert_status("owner of another", r, Code::PermissionDenied, &["globex"]);

    let (_, bob) = token(&mut h, SUB_USER, "bob").await;
    let mut qb = Client::connect(h.addr(), &bob).await;
    q.grant_access("acme", "bob", &["balance"]).await.unwrap();
    let r = qb.report_storage("acme", GB, 0).await;
    assert_status(
        "sub-user without reserve",
        r,
        Code::PermissionDenied,
        &["bob", "reserve", "acme", "owner must grant"],
    );
    q.grant_access("acme", "bob", &["reserve"]).await.unwrap();
    qb.report_storage("acme", GB, 0).await.unwrap();
}
