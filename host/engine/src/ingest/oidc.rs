//! Verifying OIDC tokens (RS256 JWTs), as Google Pub/Sub push sends in
//! `Authorization: Bearer`.
//!
//! Checked: the signature against a key of the configured JWKS (found by the token's `kid`),
//! the algorithm (RS256 only — `none` and HMAC tokens are refused), expiry (`exp`) and
//! not-before (`nbf`), both with 60 s leeway,
//! audience (`aud`), issuer (`iss`), and, when configured, the service account (`email` with
//! `email_verified`). A JWKS from a URL is fetched at start and again when a token names a key
//! it does not hold (at once the first time, then at most once a minute), which follows
//! Google's key rotation without letting forged `kid`s hammer the key server.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use tocsin_config::{JwksSource, OidcSpec};

/// How often an unknown `kid` may trigger a JWKS refetch.
pub const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The longest a JWKS fetch may take.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Claims {
    email: Option<String>,
    email_verified: Option<bool>,
}

/// A verifier for one pipeline's OIDC auth.
pub struct OidcVerifier {
    spec: OidcSpec,
    /// The keys. Only swapped under the write lock, never held across a fetch: a slow key
    /// server must not hold back tokens signed with a key already known.
    keys: RwLock<JwkSet>,
    /// When the key set was last refetched; held while a refetch runs, so one runs at a time
    /// and tokens with unknown keys that arrive meanwhile do not queue behind it.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

impl OidcVerifier {
    /// Loads the key set (reads the file, or fetches the URL).
    pub async fn new(spec: OidcSpec) -> Result<Self, String> {
        let keys = load(&spec.jwks).await?;
        // No refetch recorded yet: the first unknown key may refetch at once.
        Ok(OidcVerifier {
            spec,
            keys: RwLock::new(keys),
            refreshed: tokio::sync::Mutex::new(None),
        })
    }

    /// `Ok` when `token` is a valid token for this pipeline; otherwise why not, in words
    /// that repeat nothing of the token (the answer goes to whoever sent it).
    pub async fn verify(&self, token: &str) -> Result<(), String> {
        use jsonwebtoken::errors::ErrorKind;
        let header = decode_header(token).map_err(|_| "not a JWT".to_string())?;
        if header.alg != Algorithm::RS256 {
            return Err("the token's algorithm is not RS256".into());
        }
        let kid = header.kid.ok_or("the token names no key (`kid`)")?;
        let key = match self.key(&kid).await {
            Some(key) => key,
            None => {
                self.refresh().await;
                self.key(&kid)
                    .await
                    .ok_or_else(|| "the token is signed with an unknown key".to_string())?
            }
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.spec.audience]);
        validation.set_issuer(&self.spec.issuers);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_nbf = true;
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not valid yet (`nbf`)",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                    _ => "invalid token",
                }
                .to_string()
            })?
            .claims;
        if let Some(expected) = &self.spec.email {
            if claims.email.as_deref() != Some(expected.as_str())
                || claims.email_verified != Some(true)
            {
                return Err("token is not for the configured service account".into());
            }
        }
        Ok(())
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().await;
        keys.find(kid)
            .and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
    }

    /// Re-reads the key set, at most once per [`JWKS_REFRESH_MIN_INTERVAL`]. While one
    /// refetch runs, others return at once (their token's key stays unknown: 401, and the
    /// sender retries); requests with known keys never wait for it.
    async fn refresh(&self) {
        let Ok(mut refreshed) = self.refreshed.try_lock() else {
            return;
        };
        if refreshed.is_some_and(|at| at.elapsed() < JWKS_REFRESH_MIN_INTERVAL) {
            return;
        }
        *refreshed = Some(Instant::now());
        match load(&self.spec.jwks).await {
            Ok(fresh) => *self.keys.write().await = fresh,
            Err(e) => tracing::warn!(error = %e, "cannot refresh the JWKS"),
        }
    }
}

async fn load(source: &JwksSource) -> Result<JwkSet, String> {
    let text = match source {
        JwksSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?,
        JwksSource::Url(url) => {
            let client = reqwest::Client::builder()
                .timeout(JWKS_FETCH_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())?;
            client
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot fetch JWKS {url}: {e}"))?
                .text()
                .await
                .map_err(|e| format!("cannot fetch JWKS {url}: {e}"))?
        }
    };
    serde_json::from_str(&text).map_err(|e| format!("the JWKS is not a JSON Web Key Set: {e}"))
}
