//! Pub/Sub push with OIDC tokens signed by a key pair this test generates: a valid token is
//! accepted and a Cloud Storage notification decoded into labels; expired, wrong-audience,
//! wrongly signed, wrong-account and non-RS256 tokens are refused before the decoder, and
//! queue nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::json;
use tocsin_tests::{file_sink, serve_on_loopback, wait_until, Env};

const AUDIENCE: &str = "https://tocsin.test/ingest/storage";
const ACCOUNT: &str = "push@acme.iam.gserviceaccount.com";

struct Signer {
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn signer(kid: &str) -> Signer {
    let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pem = private.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Signer {
        key: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        jwk: json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                    "n": b64(private.n().to_bytes_be()), "e": b64(private.e().to_bytes_be())}),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(signer: &Signer, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(&header, &claims, &signer.key).unwrap()
}

fn claims(aud: &str, exp: u64, email: &str) -> serde_json::Value {
    json!({"iss": "https://accounts.google.com", "aud": aud, "exp": exp, "iat": now() - 10,
           "email": email, "email_verified": true, "sub": "1234"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_are_checked_and_storage_notifications_decoded() {
    let env = Env::new();
    env.mkdir("out");
    let google = signer("key-1");
    let impostor = signer("key-1");
    std::fs::write(
        env.path("jwks.json"),
        json!({"keys": [google.jwk]}).to_string(),
    )
    .unwrap();
    env.write_pipeline(
        "storage",
        &format!(
            "[source]\nplugin = \"pubsub-push\"\nauth = {{ oidc = {{ jwks = \"file:{}\", audience = \"{AUDIENCE}\", email = \"{ACCOUNT}\" }} }}\n\n{}",
            env.path("jwks.json").display(),
            file_sink(&env, "out", "storage.jsonl")
        ),
    );
    let server = env.start().await;
    let object = json!({"name": "backups/db1.tar.zst", "bucket": "acme-backups"}).to_string();
    let body = json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(object),
            "attributes": {"bucketId": "acme-backups", "objectId": "backups/db1.tar.zst",
                           "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1"},
            "messageId": "2070443601311540",
            "publishTime": "2026-11-24T10:00:00.5Z"
        },
        "subscription": "projects/acme/subscriptions/tocsin"
    })
    .to_string();
    let post = |token: String| {
        let body = body.clone();
        let url = format!("{}/ingest/storage", server.base_url);
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };

    let refused = [
        (
            token(&google, "key-1", claims(AUDIENCE, now() - 3600, ACCOUNT)),
            "token expired",
        ),
        (
            token(
                &google,
                "key-1",
                claims("https://elsewhere/", now() + 600, ACCOUNT),
            ),
            "wrong audience",
        ),
        (
            token(&impostor, "key-1", claims(AUDIENCE, now() + 600, ACCOUNT)),
            "bad signature",
        ),
        (
            token(
                &google,
                "key-1",
                claims(AUDIENCE, now() + 600, "other@acme.iam.gserviceaccount.com"),
            ),
            "not for the configured service account",
        ),
        (
            token(&google, "key-2", claims(AUDIENCE, now() + 600, ACCOUNT)),
            "signed with an unknown key",
        ),
        (
            token(&google, "key-1", {
                let mut c = claims(AUDIENCE, now() + 600, ACCOUNT);
                c["nbf"] = json!(now() + 300);
                c
            }),
            "not valid yet",
        ),
        (
            encode(
                &Header::new(Algorithm::HS256),
                &claims(AUDIENCE, now() + 600, ACCOUNT),
                &EncodingKey::from_secret(b"guess"),
            )
            .unwrap(),
            "is not RS256",
        ),
        ("not.a.jwt".to_string(), "not a JWT"),
    ];
    for (token, reason) in refused {
        let (status, text) = post(token).await;
        assert_eq!(status, 401, "{reason}: {text}");
        assert!(text.contains(reason), "`{reason}` not in {text}");
    }
    // The answer repeats nothing the sender chose: a forged 10 KB key id is not echoed.
    let long_kid = "k".repeat(10_000);
    let (status, text) = post(token(
        &google,
        &long_kid,
        claims(AUDIENCE, now() + 600, ACCOUNT),
    ))
    .await;
    assert_eq!(status, 401);
    assert!(text.len() < 200 && !text.contains("kkkk"), "{text}");

    let (status, text) = post(token(
        &google,
        "key-1",
        claims(AUDIENCE, now() + 600, ACCOUNT),
    ))
    .await;
    assert_eq!(status, 202, "{text}");
    wait_until(Duration::from_secs(20), "delivery", || {
        !env.read_lines("out/storage.jsonl").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = env.read_json_lines("out/storage.jsonl");
    assert_eq!(
        lines.len(),
        1,
        "refused requests queued nothing: {lines:#?}"
    );
    let labels = lines[0]["labels"].as_array().unwrap();
    for expected in [
        ["bucket", "acme-backups"],
        ["object", "backups/db1.tar.zst"],
        ["event-type", "OBJECT_FINALIZE"],
    ] {
        assert!(
            labels.contains(&json!(expected)),
            "{expected:?} not in {labels:?}"
        );
    }
    assert_eq!(lines[0]["id"], "2070443601311540");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_from_a_url_is_fetched_and_refetched_for_a_new_key() {
    let first = signer("old");
    let rotated = signer("new");
    // The key set served over HTTP; Google-style rotation adds a key later.
    let served = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [first.jwk.clone()]})));
    let keys = served.clone();
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.lock().unwrap().clone()) }
        }),
    );
    let (env, server) = storage_with_jwks_at(serve_on_loopback(app).await).await;
    let post = |token: String, id: &str| push(&server.base_url, token, id.to_string());
    let bearer =
        |signer: &Signer, kid: &str| token(signer, kid, claims(AUDIENCE, now() + 600, ACCOUNT));
    assert_eq!(post(bearer(&first, "old"), "1").await, 202);
    // The key server publishes a new key; a token signed with it makes tocsin refetch.
    served.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(rotated.jwk.clone());
    assert_eq!(post(bearer(&rotated, "new"), "2").await, 202);
    // Refetches are rate-limited: a token naming an unknown key right after is refused.
    let stranger = signer("stranger");
    assert_eq!(post(bearer(&stranger, "stranger"), "3").await, 401);
    wait_until(Duration::from_secs(20), "two deliveries", || {
        env.read_lines("out/storage.jsonl").len() == 2
    })
    .await;
    server.stop().await;
}

/// A token naming an unknown key makes tocsin refetch the key set; while that fetch hangs on a
/// slow key server, tokens signed with a key already known are still answered (the key set is
/// not locked across the fetch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_refetch_does_not_hold_back_tokens_with_known_keys() {
    let known = signer("known");
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let keys = json!({"keys": [known.jwk.clone()]});
    let (seen, gate) = (fetches.clone(), release.clone());
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let (seen, gate, keys) = (seen.clone(), gate.clone(), keys.clone());
            async move {
                // The first fetch (at start) answers at once; later ones wait for the test.
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                    gate.notified().await;
                }
                axum::Json(keys)
            }
        }),
    );
    let (_env, server) = storage_with_jwks_at(serve_on_loopback(app).await).await;
    let base = server.base_url.clone();
    let post = move |token: String, id: &str| push(&base, token, id.to_string());
    let stranger = signer("stranger");
    let unknown = tokio::spawn(post(
        token(
            &stranger,
            "stranger",
            claims(AUDIENCE, now() + 600, ACCOUNT),
        ),
        "1",
    ));
    wait_until(Duration::from_secs(20), "the refetch to start", || {
        fetches.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    // The refetch hangs; a token with the known key is answered meanwhile.
    let valid = post(
        token(&known, "known", claims(AUDIENCE, now() + 600, ACCOUNT)),
        "2",
    )
    .await;
    assert_eq!(valid, 202);
    assert!(!unknown.is_finished(), "the refetch was not held");
    release.notify_one();
    assert_eq!(unknown.await.unwrap(), 401);
    server.stop().await;
}

/// An environment with the `storage` pipeline: `pubsub-push` checking OIDC tokens against the
/// JWKS served on loopback `port` at `/certs`, into `out/storage.jsonl`; started.
async fn storage_with_jwks_at(port: u16) -> (Env, tocsin_tests::Running) {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "storage",
        &format!(
            "[source]\nplugin = \"pubsub-push\"\nauth = {{ oidc = {{ jwks = \"http://127.0.0.1:{port}/certs\", audience = \"{AUDIENCE}\" }} }}\n\n{}",
            file_sink(&env, "out", "storage.jsonl")
        ),
    );
    let server = env.start().await;
    (env, server)
}

/// Pushes a Pub/Sub message with id `id` to `storage` as the bearer of `token`; the answer's
/// status (0 when there was none).
fn push(base: &str, token: String, id: String) -> impl std::future::Future<Output = u16> {
    let url = format!("{base}/ingest/storage");
    let body =
        json!({"message": {"data": "aGk=", "messageId": id}, "subscription": "s"}).to_string();
    async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}
