//! Where webhook deliveries may go: a URL's host must be a listed name or an IP literal in
//! a listed network, and every address it resolves to must lie in a listed network (so a
//! listed name cannot be re-pointed at an internal address). Checked at RegisterDevice and
//! again before every delivery, whose connection then goes to exactly the checked addresses.

use std::net::{IpAddr, SocketAddr};

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
}

/// A webhook URL that passed the check, with the addresses to connect to.
#[derive(Debug, Clone)]
pub struct Checked {
    pub url: reqwest::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

impl Allowlist {
    pub fn new(hosts: &[String], networks: &[String]) -> Result<Self, String> {
        Ok(Self {
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            networks: networks
                .iter()
                .map(|n| Network::parse(n))
                .collect::<Result<_, _>>()?,
        })
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
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
                    return Err(format!("webhook host {ip} is not on the allow-list"));
                }
                raw_host.to_owned()
            }
            Err(_) => {
                let d = raw_host.to_ascii_lowercase();
                if !self.hosts.contains(&d) {
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
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup_host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve webhook host {host:?}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("webhook host {host:?} resolves to nothing"));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.ip_allowed(a.ip())) {
            return Err(format!(
                "webhook host {host:?} resolves to {} which is not on the allow-list",
                bad.ip()
            ));
        }
        Ok(Checked { url, host, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_list() -> Allowlist {
        Allowlist::new(
            &["localhost".into()],
            &["127.0.0.0/8".into(), "::1/128".into()],
        )
        .expect("valid")
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
    async fn loopback_only_by_default() {
        let a = default_list();
        assert!(a.check("http://127.0.0.1:9/x").await.is_ok());
        assert!(a.check("http://localhost:9/x").await.is_ok());
        assert!(a.check("http://[::1]:9/x").await.is_ok());
        for bad in [
            "http://10.0.0.1/x",
            "http://example.com/x",
            "ftp://127.0.0.1/x",
            "http://user:pw@127.0.0.1/x",
            "not a url",
            "http://169.254.169.254/latest",
        ] {
            assert!(a.check(bad).await.is_err(), "{bad} must be refused");
        }
    }
}
