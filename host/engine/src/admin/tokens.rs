//! Who may use the admin API: named tokens, each with a role, read from a small TOML file
//! (`--api-tokens`), their values from `env:` or `file:` like every other secret.
//!
//! ```toml
//! [[token]]
//! name   = "dashboard"
//! role   = "read"                  # pipelines, queues, dead letters: look, change nothing
//! secret = "file:dashboard.token"  # relative to this file
//!
//! [[token]]
//! name   = "alice"
//! role   = "admin"                 # also replay and purge
//! secret = "env:TOCSIN_ALICE_TOKEN"
//! ```
//!
//! A request names its token by value only (`Authorization: Bearer …`); every token is compared
//! in constant time, and the access log records the matching token's *name*.

use std::path::Path;

use axum::http::HeaderMap;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use tocsin_config::SecretRef;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything the API shows.
    Read,
    /// Read, and change state: replay, purge.
    Admin,
}

impl Role {
    /// Its name, as the file and the reference write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request: the name and role of its token (handlers find it in the request's
/// extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The tokens the API accepts.
#[derive(Default)]
pub struct ApiTokens {
    tokens: Vec<(String, Role, String)>,
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No token, or one that matches none (401).
    Unknown(&'static str),
    /// A known token without the role the request needs (403), and its name.
    Forbidden(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    secret: String,
}

impl ApiTokens {
    /// Reads the tokens file at `path`; every error names the file and the token.
    pub fn load(path: &Path) -> Result<ApiTokens, String> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        if file.token.is_empty() {
            return Err(format!(
                "{shown}: no [[token]]; the admin API needs at least one"
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut tokens: Vec<(String, Role, String)> = Vec::new();
        for entry in file.token {
            let name = entry.name;
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid_name {
                return Err(format!(
                    "{shown}: token name `{}`: use 1 to 64 letters, digits, `.`, `_` or `-` (it is written to the access log)",
                    tocsin_message::one_line(&name)
                ));
            }
            if tokens.iter().any(|(n, _, _)| *n == name) {
                return Err(format!("{shown}: token `{name}` is named twice"));
            }
            let value = SecretRef::parse(&entry.secret, base)
                .and_then(|secret| secret.resolve())
                .map_err(|e| format!("{shown}: token `{name}`: {e}"))?;
            let value = value.trim().to_string();
            if value.len() < 16 {
                return Err(format!(
                    "{shown}: token `{name}`: its value is shorter than 16 characters; make one with e.g. `openssl rand -hex 32`"
                ));
            }
            if tokens.iter().any(|(_, _, v)| *v == value) {
                return Err(format!(
                    "{shown}: token `{name}` has the value of another token; the access log could not tell them apart"
                ));
            }
            tokens.push((name, entry.role, value));
        }
        Ok(ApiTokens { tokens })
    }

    /// Tokens given directly (for tests and embedding): `(name, role, value)`.
    pub fn from_values(tokens: Vec<(String, Role, String)>) -> ApiTokens {
        ApiTokens { tokens }
    }

    /// How many tokens there are of each role, for the start-up line.
    pub fn count(&self, role: Role) -> usize {
        self.tokens.iter().filter(|(_, r, _)| *r == role).count()
    }

    /// The token the request carries, if it has at least `needs`.
    pub fn check(&self, headers: &HeaderMap, needs: Role) -> Result<Caller, Denial> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Denial::Unknown("no `Authorization: Bearer <token>` header"))?
            .trim();
        // Every token is compared, whichever matches, so the time says nothing of which.
        let mut found = None;
        for (name, role, value) in &self.tokens {
            if bool::from(given.as_bytes().ct_eq(value.as_bytes())) {
                found = Some((name, *role));
            }
        }
        match found {
            None => Err(Denial::Unknown("unknown token")),
            Some((name, role)) if role < needs => Err(Denial::Forbidden(name.clone())),
            Some((name, role)) => Ok(Caller {
                name: name.clone(),
                role,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {value}").parse().unwrap());
        headers
    }

    #[test]
    fn tokens_are_read_with_their_roles_and_checked_by_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alice.token"), "a".repeat(32) + "\n").unwrap();
        let path = dir.path().join("tokens.toml");
        let tokens_file = |board_secret: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[token]]\nname = \"alice\"\nrole = \"admin\"\nsecret = \"file:alice.token\"\n\n\
                     [[token]]\nname = \"board\"\nrole = \"read\"\nsecret = \"{board_secret}\"\n"
                ),
            )
            .unwrap();
        };
        tokens_file("env:TOCSIN_TEST_UNSET_TOKEN_VARIABLE");
        let missing = ApiTokens::load(&path).err().unwrap();
        assert!(missing.contains("token `board`"), "{missing}");
        std::fs::write(dir.path().join("board.token"), "b".repeat(20)).unwrap();
        tokens_file("file:board.token");
        let tokens = ApiTokens::load(&path).unwrap();
        assert_eq!(
            (tokens.count(Role::Admin), tokens.count(Role::Read)),
            (1, 1)
        );
        let alice = bearer(&"a".repeat(32));
        let board = bearer(&"b".repeat(20));
        let caller = |name: &str, role| {
            Ok(Caller {
                name: name.into(),
                role,
            })
        };
        assert_eq!(
            tokens.check(&alice, Role::Admin),
            caller("alice", Role::Admin)
        );
        assert_eq!(
            tokens.check(&board, Role::Read),
            caller("board", Role::Read)
        );
        assert_eq!(
            tokens.check(&board, Role::Admin),
            Err(Denial::Forbidden("board".into()))
        );
        assert!(matches!(
            tokens.check(&bearer("c".repeat(20).as_str()), Role::Read),
            Err(Denial::Unknown(_))
        ));
        assert!(matches!(
            tokens.check(&HeaderMap::new(), Role::Read),
            Err(Denial::Unknown(_))
        ));
    }

    #[test]
    fn short_shared_and_badly_named_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let write = |entries: &[(&str, &str)]| {
            let text: String = entries
                .iter()
                .enumerate()
                .map(|(i, (name, value))| {
                    std::fs::write(dir.path().join(format!("{i}.token")), value).unwrap();
                    format!("[[token]]\nname = \"{name}\"\nrole = \"read\"\nsecret = \"file:{i}.token\"\n")
                })
                .collect();
            std::fs::write(&path, text).unwrap();
            ApiTokens::load(&path).err().unwrap_or_default()
        };
        assert!(write(&[("a", "short")]).contains("shorter than 16"));
        let long = "x".repeat(16);
        assert!(write(&[("a", &long), ("b", &long)]).contains("value of another token"));
        assert!(write(&[("a", &long), ("a", "y".repeat(16).as_str())]).contains("named twice"));
        assert!(write(&[("a b", &long)]).contains("letters, digits"));
        std::fs::write(&path, "").unwrap();
        assert!(ApiTokens::load(&path)
            .err()
            .unwrap()
            .contains("no [[token]]"));
    }
}
