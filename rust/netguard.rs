//! Which addresses the server may connect to on its own behalf: the proxy
//! (`--proxy-networks`, here) and the health probes (`--probe-networks`, through the
//! binding `_core.NetPolicy`, which `probes.py` asks). One implementation of the fence:
//! - an IP address outside the allowed networks is never connected to;
//! - `localhost` is 127.0.0.1 / ::1 without asking a resolver;
//! - when every allowed network is loopback, no other host name is resolved at all;
//! - otherwise a name is resolved and only its addresses inside the networks are used; the
//!   connection goes to the checked address, never to the name again (DNS rebinding);
//! - link-local and cloud metadata addresses only when a network that names them is given.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

/// An IP network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// `10.0.0.0/8`, `::1/128` or a bare address (host bits are ignored, as `strict=False`).
    pub fn parse(text: &str) -> Option<Net> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Net { addr, prefix })
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let ((a, width), (b, _)) = (Net::bits(self.addr), Net::bits(ip));
        let shift = u32::from(width - self.prefix);
        shift >= u32::from(width) || (a >> shift) == (b >> shift)
    }

    /// The network in canonical form, host bits cleared (`10.1.2.3/8` is `10.0.0.0/8`), as
    /// Python's `ipaddress.ip_network(text, strict=False)` writes it.
    pub fn canonical(&self) -> String {
        let (bits, width) = Net::bits(self.addr);
        let shift = u32::from(width - self.prefix);
        let masked = if shift >= 128 { 0 } else { (bits >> shift) << shift };
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(masked as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
        };
        format!("{addr}/{}", self.prefix)
    }

    /// Whether every address of `self` is in `other`.
    fn within(&self, other: &Net) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4() && self.prefix >= other.prefix && other.contains(self.addr)
    }
}

/// Cloud metadata and link-local addresses: reached only through a network that names them.
static SENSITIVE: LazyLock<[Net; 4]> = LazyLock::new(|| {
    ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"].map(|n| Net::parse(n).expect("a CIDR"))
});
static LOOPBACKS: LazyLock<[Net; 2]> =
    LazyLock::new(|| ["127.0.0.0/8", "::1/128"].map(|n| Net::parse(n).expect("a CIDR")));

/// Parsed once: every proxied request and probe asks (`allows`).
fn sensitive() -> &'static [Net; 4] {
    &SENSITIVE
}

fn loopbacks() -> &'static [Net; 2] {
    &LOOPBACKS
}

/// An IPv6 address that carries an IPv4 address, as that IPv4 address: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some
/// stacks), NAT64's well-known prefix (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002:AABB:CCDD::/48`,
/// RFC 3056). Every check looks at the IPv4 address, so no spelling reaches what the plain
/// one may not.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let low = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // `::` and `::1` are IPv6's own unspecified and loopback addresses, not IPv4-compatible.
    if s[..6] == [0; 6] && u32::from(low) > 1 {
        return IpAddr::V4(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(low);
    }
    if s[0] == 0x2002 {
        return IpAddr::V4(std::net::Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    ip
}

/// Networks as an operator gives them (`--probe-networks 10.0.0.0/8,::1`), in canonical
/// form; blank items are skipped; the message names a bad one.
pub fn parse_networks<S: AsRef<str>>(items: &[S]) -> Result<Vec<Net>, String> {
    let networks = items
        .iter()
        .map(|item| item.as_ref().trim())
        .filter(|text| !text.is_empty())
        .map(|text| {
            Net::parse(text).ok_or_else(|| format!("'{text}' is not a network in CIDR form (e.g. 127.0.0.0/8)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if networks.is_empty() {
        return Err("give at least one network (e.g. 127.0.0.0/8,::1/128)".to_owned());
    }
    Ok(networks)
}

pub fn is_sensitive(ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    sensitive().iter().any(|n| n.contains(ip))
}

/// The networks the proxy may reach.
#[derive(Debug, Clone)]
pub struct NetPolicy {
    networks: Vec<Net>,
    /// The networks as the operator gave them (canonical CIDRs), for messages.
    described: String,
    purpose: &'static str,
}

impl NetPolicy {
    pub fn new<S: AsRef<str>>(cidrs: &[S], purpose: &'static str) -> Result<NetPolicy, String> {
        let networks = parse_networks(cidrs)?;
        let described = networks.iter().map(Net::canonical).collect::<Vec<_>>().join(", ");
        Ok(NetPolicy {
            networks,
            described,
            purpose,
        })
    }

    /// The networks, as messages name them (`127.0.0.0/8, ::1/128`).
    pub fn describe(&self) -> &str {
        &self.described
    }

    pub fn loopback_only(&self) -> bool {
        self.networks.iter().all(|n| loopbacks().iter().any(|lo| n.within(lo)))
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        let mut within = self.networks.iter().filter(|n| n.contains(ip)).peekable();
        if is_sensitive(ip) {
            return within.any(|n| sensitive().iter().any(|s| n.within(s)));
        }
        within.peek().is_some()
    }

    /// Ok when the policy lets a connection go to `ip`; the reason otherwise.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(self.refused_address(ip))
        }
    }

    fn outside(&self, what: &str) -> String {
        format!(
            "{what} is outside the {} networks ({}); not connected",
            self.purpose, self.described
        )
    }

    fn refused_address(&self, ip: IpAddr) -> String {
        if is_sensitive(ip) {
            return format!(
                "address {ip} is link-local or a cloud metadata address; not connected unless a {} network names it",
                self.purpose
            );
        }
        self.outside(&format!("address {ip}"))
    }

    /// The addresses of `host` known without a resolver (an IP address, `localhost`), only
    /// those the policy allows; `Ok(None)` when a resolver must be asked; the reason when
    /// nothing may be connected to, or when the name must not even be resolved.
    pub fn known(&self, host: &str) -> Result<Option<Vec<IpAddr>>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check(ip).map(|()| Some(vec![ip]));
        }
        if host == "localhost" {
            let local = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
            let allowed: Vec<IpAddr> = local.into_iter().filter(|ip| self.allows(*ip)).collect();
            return if allowed.is_empty() {
                Err(self.outside("localhost"))
            } else {
                Ok(Some(allowed))
            };
        }
        if self.loopback_only() {
            return Err(format!(
                "host '{host}' not resolved: the {} networks ({}) are loopback only",
                self.purpose, self.described
            ));
        }
        Ok(None)
    }

    /// What a resolver `found` for `host`, less what the policy does not allow (in order,
    /// without repeats); the reason when nothing is left.
    pub fn choose(&self, host: &str, found: &[IpAddr]) -> Result<Vec<IpAddr>, String> {
        let mut seen: Vec<IpAddr> = Vec::new();
        for ip in found {
            if !seen.contains(ip) {
                seen.push(*ip);
            }
        }
        let allowed: Vec<IpAddr> = seen.iter().copied().filter(|ip| self.allows(*ip)).collect();
        if allowed.is_empty() {
            let listed: Vec<String> = seen.iter().map(IpAddr::to_string).collect();
            return Err(self.outside(&format!("host '{host}' ({})", listed.join(", "))));
        }
        Ok(allowed)
    }

    /// The address to connect to for `host:port` (the first allowed one), or why not.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let addresses = match self.known(host)? {
            Some(known) => known,
            None => {
                let found: Vec<IpAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| format!("cannot resolve host '{host}': {e}"))?
                    .map(|a| a.ip())
                    .collect();
                self.choose(host, &found)?
            }
        };
        Ok(SocketAddr::new(addresses[0], port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cidrs: &[&str]) -> NetPolicy {
        NetPolicy::new(&cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(), "proxy").unwrap()
    }

    #[test]
    fn networks_contain_like_pythons_ipaddress() {
        let lo = Net::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.9.9.9".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Net::parse("::/0").unwrap().contains("::1".parse().unwrap()));
        assert_eq!(Net::parse("10.0.0/33"), None);
        assert_eq!(Net::parse("10.0.0.0/33"), None);
    }

    #[test]
    fn metadata_addresses_need_a_network_that_names_them() {
        let wide = policy(&["0.0.0.0/0"]);
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(!wide.allows(meta));
        assert!(!wide.allows("::ffff:169.254.169.254".parse().unwrap()));
        let both = policy(&["0.0.0.0/0", "::/0"]);
        for spelling in ["64:ff9b::a9fe:a9fe", "::169.254.169.254", "2002:a9fe:a9fe::1"] {
            assert!(!both.allows(spelling.parse().unwrap()), "{spelling}");
        }
        assert_eq!(unmapped("::1".parse().unwrap()), "::1".parse::<IpAddr>().unwrap());
        assert!(wide.allows("8.8.8.8".parse().unwrap()));
        assert!(policy(&["0.0.0.0/0", "169.254.169.254/32"]).allows(meta));
    }

    #[test]
    fn networks_are_described_in_canonical_form() {
        let p = policy(&["10.1.2.3/8", " ::1 ", "", "FE80::1/10"]);
        assert_eq!(p.describe(), "10.0.0.0/8, ::1/128, fe80::/10");
        assert_eq!(
            parse_networks(&["x"]).unwrap_err(),
            "'x' is not a network in CIDR form (e.g. 127.0.0.0/8)"
        );
        assert!(parse_networks(&["", " "])
            .unwrap_err()
            .starts_with("give at least one network"));
        assert_eq!(Net::parse("0.0.0.0/0").unwrap().canonical(), "0.0.0.0/0");
        assert_eq!(Net::parse("::/0").unwrap().canonical(), "::/0");
    }

    #[test]
    fn a_resolvers_answer_is_fenced_in_order_without_repeats() {
        let p = policy(&["10.0.0.0/8"]);
        let found: Vec<IpAddr> = ["192.0.2.1", "10.0.0.2", "10.0.0.2", "10.0.0.1"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let ips = |list: &[&str]| list.iter().map(|a| a.parse().unwrap()).collect::<Vec<IpAddr>>();
        assert_eq!(p.choose("db", &found).unwrap(), ips(&["10.0.0.2", "10.0.0.1"]));
        let err = p.choose("db", &found[..1]).unwrap_err();
        assert_eq!(
            err,
            "host 'db' (192.0.2.1) is outside the proxy networks (10.0.0.0/8); not connected"
        );
        assert_eq!(p.known("db"), Ok(None));
    }

    #[tokio::test]
    async fn names_are_not_resolved_under_a_loopback_policy() {
        let lo = policy(&["127.0.0.0/8", "::1/128"]);
        assert_eq!(
            lo.resolve("localhost", 80).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(lo.resolve("[::1]", 81).await.unwrap(), "[::1]:81".parse().unwrap());
        let err = lo.resolve("user-service", 80).await.unwrap_err();
        assert!(err.contains("not resolved") && err.contains("loopback only"), "{err}");
        let err = lo.resolve("192.0.2.1", 80).await.unwrap_err();
        assert_eq!(
            err,
            "address 192.0.2.1 is outside the proxy networks (127.0.0.0/8, ::1/128); not connected"
        );
        let err = lo.resolve("169.254.169.254", 80).await.unwrap_err();
        assert!(err.contains("link-local or a cloud metadata"), "{err}");
    }
}
