//! Checking who posts to an ingest pipeline, before any plugin sees the request.
//!
//! Every comparison of a secret is constant-time (`subtle`, and `hmac`'s `verify_slice`), so
//! response timing does not leak how much of a token or signature was right.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use tocsin_config::IngestAuth;

use super::oidc::OidcVerifier;

/// An ingest pipeline's authentication, with its secret resolved.
pub enum Authenticator {
    /// Anyone.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// GitHub `X-Hub-Signature-256`, keyed with this secret.
    GithubHmac(Vec<u8>),
    /// An OIDC JWT in `Authorization: Bearer`.
    Oidc(Box<OidcVerifier>),
}

impl std::fmt::Debug for Authenticator {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Authenticator::None => "Authenticator::None",
            Authenticator::Bearer(_) => "Authenticator::Bearer(REDACTED)",
            Authenticator::GithubHmac(_) => "Authenticator::GithubHmac(REDACTED)",
            Authenticator::Oidc(_) => "Authenticator::Oidc",
        })
    }
}

impl Authenticator {
    /// Resolves the secret of a pipeline's `auth` (and loads an OIDC key set).
    ///
    /// An empty secret is refused: an HMAC keyed with `""` is forgeable by anyone, and an
    /// empty bearer token is a mistake (an empty file, an unset variable), not a choice.
    pub async fn from_spec(spec: &IngestAuth) -> Result<Self, String> {
        let resolve = |secret: &tocsin_config::SecretRef| -> Result<String, String> {
            let value = secret.resolve()?;
            if value.trim().is_empty() {
                let source = match secret {
                    tocsin_config::SecretRef::Env(name) => format!("environment variable {name}"),
                    tocsin_config::SecretRef::File(path) => format!("file {}", path.display()),
                };
                return Err(format!(
                    "the auth secret ({source}) is empty; an empty secret would let anyone in"
                ));
            }
            Ok(value)
        };
        Ok(match spec {
            IngestAuth::None => Authenticator::None,
            IngestAuth::Bearer(secret) => Authenticator::Bearer(resolve(secret)?),
            IngestAuth::GithubHmac(secret) => {
                Authenticator::GithubHmac(resolve(secret)?.into_bytes())
            }
            IngestAuth::Oidc(oidc) => {
                Authenticator::Oidc(Box::new(OidcVerifier::new(oidc.clone()).await?))
            }
        })
    }

    /// What can be checked before the body is read: a bearer or OIDC token whole, and for
    /// GitHub that a well-formed signature header is there. `Ok` when the request may go on
    /// (to [`Authenticator::check_body`]); otherwise why not, for the 401 answer.
    pub async fn check_headers(&self, headers: &HeaderMap) -> Result<(), String> {
        match self {
            Authenticator::None => Ok(()),
            Authenticator::Oidc(verifier) => verifier.verify(bearer(headers)?).await,
            Authenticator::Bearer(token) => {
                let given = bearer(headers)?;
                if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                    Ok(())
                } else {
                    Err("wrong bearer token".into())
                }
            }
            Authenticator::GithubHmac(_) => github_signature(headers)
                .map(|_| ())
                .map_err(str::to_string),
        }
    }

    /// What needs the body: GitHub's signature over it.
    pub fn check_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        match self {
            Authenticator::GithubHmac(secret) => {
                github(secret, headers, body).map_err(str::to_string)
            }
            _ => Ok(()),
        }
    }

    /// Both checks, in order.
    pub async fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        self.check_headers(headers).await?;
        self.check_body(headers, body)
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| "missing `Authorization: Bearer <token>`".to_string())
}

/// The signature GitHub sent: `X-Hub-Signature-256: sha256=<64 hex digits>`.
fn github_signature(headers: &HeaderMap) -> Result<Vec<u8>, &'static str> {
    let header = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .ok_or("missing X-Hub-Signature-256")?;
    let hex_sig = header
        .strip_prefix("sha256=")
        .ok_or("X-Hub-Signature-256 must start with `sha256=`")?;
    let signature = hex::decode(hex_sig).map_err(|_| "X-Hub-Signature-256 is not hex")?;
    if signature.len() != 32 {
        return Err("X-Hub-Signature-256 is not a SHA-256 signature");
    }
    Ok(signature)
}

/// GitHub's signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`,
/// compared in constant time.
fn github(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let signature = github_signature(headers)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable secret")?;
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| "X-Hub-Signature-256 does not match the body")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    /// GitHub's documented test vector (docs: "Validating webhook deliveries").
    #[test]
    fn github_test_vector_is_accepted_and_anything_else_refused() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let sig = |v: &str| headers(&[("x-hub-signature-256", v)]);
        assert_eq!(github(secret, &sig(good), b"Hello, World!"), Ok(()));
        assert!(github(secret, &sig(good), b"Hello, World?").is_err());
        let flipped = good.replace("757107", "757108");
        assert!(github(secret, &sig(&flipped), b"Hello, World!").is_err());
        assert_eq!(
            github(secret, &HeaderMap::new(), b"Hello, World!"),
            Err("missing X-Hub-Signature-256")
        );
        assert!(github(secret, &sig("sha1=abc"), b"x").is_err());
        assert!(github(secret, &sig("sha256=zz"), b"x").is_err());
    }

    #[tokio::test]
    async fn an_empty_secret_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let secret = tocsin_config::SecretRef::File(empty);
        for spec in [
            IngestAuth::Bearer(secret.clone()),
            IngestAuth::GithubHmac(secret.clone()),
        ] {
            let err = Authenticator::from_spec(&spec).await.expect_err("refused");
            assert!(err.contains("is empty"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_github_request_without_a_signature_is_refused_before_its_body_is_read() {
        let auth = Authenticator::GithubHmac(b"k".to_vec());
        assert!(auth.check_headers(&HeaderMap::new()).await.is_err());
        let short = headers(&[("x-hub-signature-256", "sha256=abcd")]);
        assert!(auth.check_headers(&short).await.is_err());
    }

    #[tokio::test]
    async fn bearer_tokens_must_match_exactly() {
        let auth = Authenticator::Bearer("s3cret".into());
        let with = |v: &str| headers(&[("authorization", v)]);
        assert_eq!(auth.check(&with("Bearer s3cret"), b"").await, Ok(()));
        assert!(auth.check(&with("Bearer s3cre"), b"").await.is_err());
        assert!(auth.check(&with("Bearer s3cret2"), b"").await.is_err());
        assert!(auth.check(&with("Basic s3cret"), b"").await.is_err());
        assert!(auth.check(&HeaderMap::new(), b"").await.is_err());
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
