//! Sinks' outbound HTTP through the host's pool: every sink frames its body with
//! Content-Length (a server that refuses chunked uploads gets them all); a sink's deliveries one
//! after another share one kept-alive connection; HTTPS works against a server signed by the operator's CA (`--tls-ca-file`);
//! a server no trusted authority signed is refused with a certificate error, retried and
//! dead-lettered while the engine goes on; a CA file that is not PEM stops the start with a
//! reason.

use std::process::Command;
use std::time::Duration;

use tocsin_tests::receiver::Receiver;
use tocsin_tests::{post_json_message, tocsin_bin, wait_until, Env, OPEN_JSON_SOURCE};

/// A test certificate authority and a server certificate it signed for 127.0.0.1.
struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tocsin test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&server_key, &ca, &ca_key).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// Waits until nothing of `pipeline` is queued: the last delivery's answer was read and its
/// connection is back in the pool. (The receiver records a request before it answers, so
/// seeing it there is not enough: a message posted then may find the connection still busy.)
async fn wait_for_acknowledgement(queue: &dyn tocsin_queue::QueueStore, pipeline: &str) {
    wait_until(Duration::from_secs(30), "the acknowledgement", || {
        queue
            .depths(pipeline)
            .is_ok_and(|d| d.ingress == 0 && d.sinks.iter().all(|(_, n)| *n == 0))
    })
    .await;
}

fn pipeline(receiver: &Receiver, retry: &str) -> String {
    format!("{OPEN_JSON_SOURCE}{}", receiver.sink_toml("hook", retry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_deliveries_share_one_kept_alive_connection() {
    let receiver = Receiver::start().await;
    let env = Env::new();
    env.write_pipeline("alerts", &pipeline(&receiver, "{ max_attempts = 3 }"));
    let server = env.start().await;
    // One after another (each delivered before the next is posted), so one connection is
    // all they need, whatever the sink's concurrency.
    for i in 0..20 {
        let id = format!("m{i}");
        assert_eq!(
            post_json_message(&server.base_url, "alerts", &id).await,
            202
        );
        wait_until(Duration::from_secs(30), "the delivery", || {
            receiver.visible().len() == i + 1
        })
        .await;
        wait_for_acknowledgement(server.queue.as_ref(), "alerts").await;
    }
    // wasmtime-wasi-http's default sender opened a connection for every request: 20 here.
    assert_eq!(receiver.connections(), 1, "{:?}", receiver.requests());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_sink_delivers_to_a_server_signed_by_the_operators_ca() {
    let pki = test_pki();
    let receiver = Receiver::start_tls(&pki.server_cert_pem, &pki.server_key_pem).await;
    assert!(receiver.url().starts_with("https://"));
    let env = Env::new();
    let ca_file = env.path("internal-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    env.write_pipeline("alerts", &pipeline(&receiver, "{ max_attempts = 3 }"));
    let server = env
        .start_with(|s| s.tls_ca_file = Some(ca_file.clone()))
        .await;
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        assert_eq!(post_json_message(&server.base_url, "alerts", id).await, 202);
        wait_until(Duration::from_secs(30), "a delivery over HTTPS", || {
            receiver.visible().len() == i + 1
        })
        .await;
        wait_for_acknowledgement(server.queue.as_ref(), "alerts").await;
    }
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "each once: {requests:?}");
    assert!(requests.iter().all(|r| r.key.starts_with("alerts/hook/")));
    assert_eq!(receiver.connections(), 1, "one TLS session for all three");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_no_trusted_authority_signed_is_refused_then_dead_lettered() {
    let pki = test_pki();
    let receiver = Receiver::start_tls(&pki.server_cert_pem, &pki.server_key_pem).await;
    let env = Env::new();
    env.write_pipeline(
        "alerts",
        &pipeline(&receiver, r#"{ max_attempts = 2, initial = "50ms" }"#),
    );
    let server = env.start().await;
    assert_eq!(
        post_json_message(&server.base_url, "alerts", "m1").await,
        202
    );
    wait_until(Duration::from_secs(30), "a dead letter", || {
        server
            .queue
            .dead_letters("alerts", "hook")
            .is_ok_and(|d| d.len() == 1)
    })
    .await;
    let (_, letter) = server
        .queue
        .dead_letters("alerts", "hook")
        .unwrap()
        .remove(0);
    let error = letter.last_error.unwrap();
    assert!(
        error.starts_with("gave up after 2 attempts") && error.contains("TlsCertificateError"),
        "{error}"
    );
    assert!(receiver.requests().is_empty(), "no request got through");
    // The engine goes on: ingest still answers.
    assert_eq!(
        post_json_message(&server.base_url, "alerts", "m2").await,
        202
    );
    server.stop().await;
}

#[test]
fn a_ca_file_that_is_not_pem_stops_the_start_with_a_reason() {
    let env = Env::new();
    let bad = env.path("not-a-ca.pem");
    std::fs::write(&bad, "this is not a certificate\n").unwrap();
    let out = Command::new(tocsin_bin())
        .args(["run", "--listen", "none", "--pipelines"])
        .arg(env.path("pipelines"))
        .arg("--data")
        .arg(env.path("data"))
        .arg("--tls-ca-file")
        .arg(&bad)
        .output()
        .expect("tocsin runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not-a-ca.pem") && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );
}

/// Every shipped HTTP sink, and a plugin that speaks wasi:http without the SDK, delivers to a
/// server that refuses chunked bodies with 411: each request is framed by `Content-Length`,
/// none is chunked, and the body is exactly the announced length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_sends_content_length_to_a_server_that_refuses_chunked_bodies() {
    use tocsin_tests::strict_http::StrictServer;
    let strict = StrictServer::start().await;
    let port = strict.port;
    // The server does refuse chunked uploads, so a pass below means none was sent.
    refuses_a_chunked_body(port).await;

    let env = Env::new();
    std::fs::write(env.path("token"), "tok").unwrap();
    let token = env.path("token").display().to_string();
    let grants = |secret: &str| {
        format!(
            "grants = {{ hosts = [\"127.0.0.1:{port}\"]{} }}",
            if secret.is_empty() {
                String::new()
            } else {
                format!(", secrets = {{ {secret} = \"file:{token}\" }}")
            }
        )
    };
    let sinks = [
        ("hook", "webhook", format!("{{ url = \"http://127.0.0.1:{port}/hook\" }}"), ""),
        ("toot", "mastodon", format!("{{ instance = \"http://127.0.0.1:{port}\" }}"), "access_token"),
        (
            "room",
            "matrix",
            format!("{{ homeserver = \"http://127.0.0.1:{port}\", room = \"!r:example.org\" }}"),
            "access_token",
        ),
        (
            "central",
            "forward",
            format!("{{ central = \"http://127.0.0.1:{port}\", pipeline = \"fleet\", agent = \"db1\" }}"),
            "token",
        ),
        ("raw", "raw-http-sink", format!("{{ url = \"http://127.0.0.1:{port}/raw\" }}"), ""),
    ];
    let mut text = OPEN_JSON_SOURCE.to_string();
    for (name, plugin, config, secret) in &sinks {
        text.push_str(&format!(
            "[[sink]]\nname = \"{name}\"\nplugin = \"{plugin}\"\nconfig = {config}\n{}\n\
             retry = {{ max_attempts = 2, initial = \"100ms\" }}\n\n",
            grants(secret)
        ));
    }
    env.write_pipeline("alerts", &text);
    let server = env.start().await;
    assert_eq!(
        post_json_message(&server.base_url, "alerts", "m1").await,
        202
    );
    wait_until(Duration::from_secs(30), "five deliveries", || {
        server.counter("alerts", |c| &c.delivered) >= 5
    })
    .await;

    // All but the hand-made chunked request above.
    let captured: Vec<_> = strict
        .captured()
        .into_iter()
        .filter(|r| r.path() != "/x")
        .collect();
    for request in &captured {
        assert_eq!(
            request.answered, 200,
            "a request was refused: {} {:?}",
            request.request_line, request.headers
        );
        assert_eq!(request.header("transfer-encoding"), None, "{request:?}");
        let length: usize = request
            .header("content-length")
            .unwrap_or_else(|| panic!("no content-length: {request:?}"))
            .parse()
            .unwrap();
        assert!(length > 0, "{request:?}");
        assert_eq!(request.body.len(), length, "{request:?}");
    }
    let mut paths: Vec<&str> = captured.iter().map(|r| r.path()).collect();
    paths.sort_unstable();
    assert_eq!(paths.len(), 5, "{paths:?}");
    assert!(
        paths.contains(&"/hook") && paths.contains(&"/raw"),
        "{paths:?}"
    );
    assert!(paths.contains(&"/api/v1/statuses"), "{paths:?}");
    assert!(paths.contains(&"/ingest/fleet"), "{paths:?}");
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("/_matrix/client/v3/rooms/")),
        "{paths:?}"
    );
    assert_eq!(server.counter("alerts", |c| &c.retries), 0);
    server.stop().await;
}

/// Sends a chunked POST by hand and expects the strict server's 411.
async fn refuses_a_chunked_body(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    socket
        .write_all(
            b"POST /x HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n\
              2\r\n{}\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
}
