//! `grants.hosts` entries: what each one may reach, and why one that can match nothing is
//! refused when the file is read rather than discovered as a request that never goes out.
//!
//! An entry is `host` (the scheme's own port: 80 for http, 443 for https) or `host:port` (that
//! port only). `host` is a DNS name, an IPv4 address, an IPv6 address (bare or in brackets), or
//! `*.domain`: every name below `domain` (not `domain` itself), where `domain` has at least two
//! labels, so a wildcard never covers a whole top-level domain. A bare `*` is refused: it would
//! be no allow-list at all.

use std::net::IpAddr;

/// A parsed `grants.hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    host: GrantedHost,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GrantedHost {
    /// A DNS name or an IP address, lower case, without brackets.
    Exact(String),
    /// `*.domain`: the suffix `.domain`, lower case.
    Below(String),
}

impl HostGrant {
    /// Parses an entry, or says why it can match no request.
    pub fn parse(entry: &str) -> Result<HostGrant, String> {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.contains(['/', '@', ' ', '?', '#']) {
            return Err("write `host` or `host:port`: no scheme, path or user".into());
        }
        let (host, port) = split_port(&entry)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(HostGrant {
                host: GrantedHost::Exact(ip.to_string()),
                port,
            });
        }
        if host == "*" {
            return Err(
                "`*` would let the plugin reach any host: name the hosts it needs, \
                 or `*.example.org` for every name below a domain"
                    .into(),
            );
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        if name.contains('*') {
            return Err("`*` may only be the whole first label, as in `*.example.org`".into());
        }
        check_dns_name(name)?;
        if wildcard && !name.contains('.') {
            return Err(format!(
                "`*.{name}` would cover a whole top-level domain: name a domain below it"
            ));
        }
        Ok(HostGrant {
            host: if wildcard {
                GrantedHost::Below(format!(".{name}"))
            } else {
                GrantedHost::Exact(name.to_string())
            },
            port,
        })
    }

    /// Whether a request to `host` (as a URL writes it: IPv6 in brackets, any case) on
    /// `port` is granted, `default_port` being its scheme's own.
    pub fn allows(&self, host: &str, port: u16, default_port: u16) -> bool {
        if self.port.unwrap_or(default_port) != port {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        match &self.host {
            GrantedHost::Exact(name) => match host.parse::<IpAddr>() {
                // `::0001` and `::1` are one address.
                Ok(ip) => ip.to_string() == *name,
                Err(_) => host == *name,
            },
            GrantedHost::Below(suffix) => {
                host.parse::<IpAddr>().is_err()
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address → (host, port).
fn split_port(entry: &str) -> Result<(&str, Option<u16>), String> {
    let port = |text: &str| match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(Some(p)),
        _ => Err(format!("`{text}` is not a port (1–65535)")),
    };
    if let Some(rest) = entry.strip_prefix('[') {
        let Some((host, tail)) = rest.split_once(']') else {
            return Err("an IPv6 address in `[` needs its `]`".into());
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not an IPv6 address"));
        }
        return match tail {
            "" => Ok((host, None)),
            _ => match tail.strip_prefix(':') {
                Some(p) => Ok((host, port(p)?)),
                None => Err(format!("`{tail}` after `]`: write `[address]:port`")),
            },
        };
    }
    if entry.matches(':').count() > 1 {
        // A bare IPv6 address has no port (write `[address]:port` for one).
        return Ok((entry, None));
    }
    match entry.split_once(':') {
        Some((host, p)) => Ok((host, port(p)?)),
        None => Ok((entry, None)),
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, none empty, none
/// starting or ending with `-`, at most 63 bytes each and 253 in all.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the host name is empty".into());
    }
    if name.len() > 253 {
        return Err("a host name has at most 253 characters".into());
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(format!(
                "`{name}` is not a host name (labels of letters, digits and `-`, separated \
                 by single dots)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, host: &str, port: u16, default: u16) -> bool {
        HostGrant::parse(entry).unwrap().allows(host, port, default)
    }

    #[test]
    fn names_addresses_and_ports_parse() {
        for ok in [
            "matrix.example.org",
            "Matrix.Example.org:8448",
            "localhost",
            "127.0.0.1:8008",
            "[::1]:8008",
            "[fd00::7]",
            "fd00::8",
            "*.example.org",
            "*.hooks.example.org:8443",
            "my_host.internal",
        ] {
            assert!(HostGrant::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn entries_that_can_match_nothing_are_refused_with_the_reason() {
        for (bad, why) in [
            ("*", "any host"),
            ("*:443", "any host"),
            ("*.org", "top-level domain"),
            ("api.*.example.org", "whole first label"),
            ("*example.org", "whole first label"),
            ("https://example.org", "no scheme"),
            ("example.org/path", "no scheme"),
            ("user@example.org", "no scheme"),
            ("example..org", "not a host name"),
            ("-example.org", "not a host name"),
            ("example.org.", "not a host name"),
            ("exa mple.org", "no scheme"),
            ("example.org:0", "not a port"),
            ("example.org:http", "not a port"),
            ("example.org:70000", "not a port"),
            ("[::1", "needs its `]`"),
            ("[example.org]:80", "not an IPv6 address"),
            ("", "empty"),
        ] {
            let err = HostGrant::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_wildcard_covers_names_below_its_domain_only() {
        assert!(allows("*.example.org", "hooks.example.org", 443, 443));
        assert!(allows("*.example.org", "a.b.EXAMPLE.org", 443, 443));
        assert!(!allows("*.example.org", "example.org", 443, 443));
        assert!(!allows("*.example.org", "evilexample.org", 443, 443));
        assert!(!allows("*.example.org", "example.org.evil.net", 443, 443));
        assert!(!allows("*.example.org", "hooks.example.org", 80, 443));
        assert!(allows("*.example.org:8443", "hooks.example.org", 8443, 443));
    }

    #[test]
    fn ports_and_addresses_match_as_urls_write_them() {
        assert!(allows("example.org", "example.org", 443, 443));
        assert!(allows("example.org", "example.org", 80, 80));
        assert!(!allows("example.org", "example.org", 80, 443));
        assert!(!allows("example.org", "example.org", 8448, 443));
        assert!(allows("[::1]:8008", "[::1]", 8008, 80));
        assert!(allows("::1", "[0:0::1]", 443, 443));
        assert!(!allows("fd00::8", "[fd00::9]", 443, 443));
        assert!(allows("127.0.0.1:8008", "127.0.0.1", 8008, 80));
    }
}
