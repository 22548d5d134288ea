//! Where webhook deliveries may go: a URL's host must be a listed name (or any name, `*`)
//! or an IP literal in a listed network, and every address it resolves to must lie in a
//! listed network AND outside the built-in block list of special ranges (loopback,
//! link-local with the cloud metadata address, private, carrier-grade NAT, unique-local,
//! multicast, reserved, and the IPv6 prefixes that embed an IPv4 address), so no name can
//! be pointed at an internal address. Only `webhook.allow_internal` (development) lifts the
//! block list. Checked at RegisterDevice and again before every delivery, whose connection
//! then goes to exactly the checked addresses. A lookup slower than `dns_timeout` fails.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// Special-purpose ranges no webhook may reach unless `webhook.allow_internal` is set
/// (IANA special-purpose registries; IPv4-mapped IPv6 addresses are checked as IPv4).
const BLOCKED: &[&str] = &[
    "0.0.0.0/8",       // "this network"
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // carrier-grade NAT
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, including 169.254.169.254 (cloud metadata)
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.88.99.0/24",  // 6to4 relay anycast
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and 255.255.255.255
    "::/96",           // unspecified, loopback, and IPv4-compatible (embeds IPv4)
    "::ffff:0:0:0/96", // IPv4-translated (embeds IPv4)
    "64:ff9b::/96",    // NAT64: embeds an IPv4 address
    "64:ff9b:1::/48",  // local-use NAT64
    "100::/64",        // discard-only
    "2001::/32",       // Teredo: embeds an IPv4 address
    "2001:db8::/32",   // documentation
    "2002::/16",       // 6to4: embeds an IPv4 address
    "fc00::/7",        // unique-local
    "fe80::/10",       // link-local
    "fec0::/10",       // site-local (deprecated)
    "ff00::/8",        // multicast
];

/// A parsed CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("bad network {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix in {s:?}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// True when `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The webhook allow-list.
#[derive(Debug, Clone)]
pub struct Allowlist {
    hosts: Vec<String>,
    networks: Vec<Network>,
    /// The built-in block list, empty when `webhook.allow_internal` is set.
    blocked: Vec<Network>,
    dns_timeout: Duration,
}

/// A webhook URL that passed the check, with the addresses to connect to.
#[derive(Debug, Clone)]
pub struct Checked {
    pub url: reqwest::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

impl Allowlist {
    pub fn new(cfg: &crate::WebhookConfig) -> Result<Self, String> {
        let blocked = if cfg.allow_internal {
            Vec::new()
        } else {
            BLOCKED
                .iter()
                .map(|n| Network::parse(n))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            hosts: cfg
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            networks: cfg
                .allowed_networks
                .iter()
                .map(|n| Network::parse(n))
                .collect::<Result<_, _>>()?,
            blocked,
            dns_timeout: Duration::from_millis(cfg.dns_timeout_ms.max(1)),
        })
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip)) && !self.blocked.iter().any(|n| n.contains(ip))
    }

    /// Checks the URL's form and its host name / literal (no DNS).
    pub fn check_syntax(&self, raw: &str) -> Result<(reqwest::Url, String), String> {
        let url = reqwest::Url::parse(raw).map_err(|_| "webhook token must be a URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("webhook URL must be http or https".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("webhook URL must not carry credentials".into());
        }
        let raw_host = url
            .host_str()
            .ok_or_else(|| "webhook URL has no host".to_owned())?;
        let literal = raw_host.trim_start_matches('[').trim_end_matches(']');
        let host = match literal.parse::<IpAddr>() {
            Ok(ip) => {
                if !self.ip_allowed(ip) {
                    return Err(format!(
                        "webhook host {ip} is not an allowed public address"
                    ));
                }
                raw_host.to_owned()
            }
            Err(_) => {
                let d = raw_host.to_ascii_lowercase();
                if !self.hosts.iter().any(|h| h == "*" || *h == d) {
                    return Err(format!("webhook host {d:?} is not on the allow-list"));
                }
                d
            }
        };
        Ok((url, host))
    }

    /// Full check: syntax, then every resolved address must be in an allowed network.
    pub async fn check(&self, raw: &str) -> Result<Checked, String> {
        let (url, host) = self.check_syntax(raw)?;
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            self.dns_timeout,
            tokio::net::lookup_host((lookup_host.as_str(), port)),
        )
        .await
        .map_err(|_| format!("resolving webhook host {host:?} timed out"))?
        .map_err(|e| format!("cannot resolve webhook host {host:?}: {e}"))?
        .collect();
        if addrs.is_empty() {
            return Err(format!("webhook host {host:?} resolves to nothing"));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.ip_allowed(a.ip())) {
            return Err(format!(
                "webhook host {host:?} resolves to {}, which is not an allowed public address",
                bad.ip()
            ));
        }
        Ok(Checked { url, host, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(hosts: &[&str], networks: &[&str], allow_internal: bool) -> Allowlist {
        Allowlist::new(&crate::WebhookConfig {
            secret: secrecy::SecretString::from("s"),
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            allowed_networks: networks.iter().map(|n| (*n).to_owned()).collect(),
            allow_internal,
            dns_timeout_ms: 2000,
        })
        .expect("valid")
    }

    fn defaults() -> Allowlist {
        list(&["*"], &["0.0.0.0/0", "::/0"], false)
    }

    #[test]
    fn networks_contain_what_they_should() {
        let n = Network::parse("127.0.0.0/8").expect("valid");
        assert!(n.contains("127.1.2.3".parse().expect("ip")));
        assert!(!n.contains("128.0.0.1".parse().expect("ip")));
        assert!(n.contains("::ffff:127.0.0.1".parse().expect("ip")));
        let all = Network::parse("0.0.0.0/0").expect("valid");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nope").is_err());
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_by_default() {
        let a = defaults();
        for bad in [
            "http://127.0.0.1:9/x",
            "http://localhost:9/x",
            "http://[::1]:9/x",
            "http://10.0.0.1/x",
            "http://172.16.5.4/x",
            "http://192.168.1.1/x",
            "http://100.64.0.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/x",
            "http://224.0.0.1/x",
            "http://[fc00::1]/x",
            "http://[fe80::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[2002:7f00:1::]/x",
            "http://[::127.0.0.1]/x",
            "http://[::ffff:0:127.0.0.1]/x",
            "ftp://8.8.8.8/x",
            "http://user:pw@8.8.8.8/x",
            "not a url",
        ] {
            assert!(a.check(bad).await.is_err(), "{bad} must be refused");
        }
        // A public address literal passes (no DNS needed).
        assert!(a.check("https://8.8.8.8/hook").await.is_ok());
        assert!(a.check("https://[2606:4700::1111]/hook").await.is_ok());
    }

    #[tokio::test]
    async fn only_the_development_opt_in_reaches_loopback() {
        let a = list(&["localhost"], &["127.0.0.0/8", "::1/128"], true);
        assert!(a.check("http://127.0.0.1:9/x").await.is_ok());
        assert!(a.check("http://localhost:9/x").await.is_ok());
        assert!(a.check("http://[::1]:9/x").await.is_ok());
        // The allow-list still restricts.
        assert!(a.check("http://10.0.0.1/x").await.is_err());
        assert!(a.check("http://example.com/x").await.is_err());
    }
}
