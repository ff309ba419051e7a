//! Checking who posts to an ingest pipeline, before any plugin sees the request.
//!
//! Every comparison of a secret is constant-time (`subtle`, and `hmac`'s `verify_slice`), so
//! response timing does not leak how much of a token or signature was right.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use tocsin_config::IngestAuth;

/// An ingest pipeline's authentication, with its secret resolved.
pub enum Authenticator {
    /// Anyone.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// GitHub `X-Hub-Signature-256`, keyed with this secret.
    GithubHmac(Vec<u8>),
}

impl std::fmt::Debug for Authenticator {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Authenticator::None => "Authenticator::None",
            Authenticator::Bearer(_) => "Authenticator::Bearer(REDACTED)",
            Authenticator::GithubHmac(_) => "Authenticator::GithubHmac(REDACTED)",
        })
    }
}

impl Authenticator {
    /// Resolves the secret of a pipeline's `auth`.
    pub fn from_spec(spec: &IngestAuth) -> Result<Self, String> {
        Ok(match spec {
            IngestAuth::None => Authenticator::None,
            IngestAuth::Bearer(secret) => Authenticator::Bearer(secret.resolve()?),
            IngestAuth::GithubHmac(secret) => {
                Authenticator::GithubHmac(secret.resolve()?.into_bytes())
            }
        })
    }

    /// `Ok` when the request may go on; otherwise why not, for the 401 answer.
    pub fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        match self {
            Authenticator::None => Ok(()),
            Authenticator::Bearer(token) => {
                let given = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or("missing `Authorization: Bearer <token>`")?;
                if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                    Ok(())
                } else {
                    Err("wrong bearer token")
                }
            }
            Authenticator::GithubHmac(secret) => {
                let header = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .ok_or("missing X-Hub-Signature-256")?;
                let hex_sig = header
                    .strip_prefix("sha256=")
                    .ok_or("X-Hub-Signature-256 must start with `sha256=`")?;
                let signature =
                    hex::decode(hex_sig).map_err(|_| "X-Hub-Signature-256 is not hex")?;
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "unusable secret")?;
                mac.update(body);
                mac.verify_slice(&signature)
                    .map_err(|_| "X-Hub-Signature-256 does not match the body")
            }
        }
    }
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
        let auth = Authenticator::GithubHmac(b"It's a Secret to Everybody".to_vec());
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            auth.check(&headers(&[("x-hub-signature-256", good)]), b"Hello, World!"),
            Ok(())
        );
        assert!(auth
            .check(&headers(&[("x-hub-signature-256", good)]), b"Hello, World?")
            .is_err());
        let flipped = good.replace("757107", "757108");
        assert!(auth
            .check(
                &headers(&[("x-hub-signature-256", &flipped)]),
                b"Hello, World!"
            )
            .is_err());
        assert_eq!(
            auth.check(&HeaderMap::new(), b"Hello, World!"),
            Err("missing X-Hub-Signature-256")
        );
        assert!(auth
            .check(&headers(&[("x-hub-signature-256", "sha1=abc")]), b"x")
            .is_err());
        assert!(auth
            .check(&headers(&[("x-hub-signature-256", "sha256=zz")]), b"x")
            .is_err());
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let auth = Authenticator::Bearer("s3cret".into());
        assert_eq!(
            auth.check(&headers(&[("authorization", "Bearer s3cret")]), b""),
            Ok(())
        );
        assert!(auth
            .check(&headers(&[("authorization", "Bearer s3cre")]), b"")
            .is_err());
        assert!(auth
            .check(&headers(&[("authorization", "Bearer s3cret2")]), b"")
            .is_err());
        assert!(auth
            .check(&headers(&[("authorization", "Basic s3cret")]), b"")
            .is_err());
        assert!(auth.check(&HeaderMap::new(), b"").is_err());
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
