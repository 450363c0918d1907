//! `--allow-root`: the IPv4 addresses and networks a worker serves. dllama's protocol has no
//! authentication, so a worker that can be reached can be driven; an allowlist keeps the port
//! to the machines of the cluster.

use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// One allowed network: an address and a prefix length (`10.0.0.0/8`, or `/32` for one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedNet {
    network: u32,
    prefix: u8,
}

impl AllowedNet {
    /// Parses `a.b.c.d` or `a.b.c.d/n` (n in 0..=32).
    pub fn parse(text: &str) -> Result<AllowedNet, &'static str> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| "invalid prefix length")?),
            None => (text, 32),
        };
        if prefix > 32 {
            return Err("prefix length above 32");
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| "not an IPv4 address")?;
        let mask = AllowedNet::mask(prefix);
        Ok(AllowedNet {
            network: u32::from(addr) & mask,
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// Whether `addr` is inside this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & AllowedNet::mask(self.prefix) == self.network
    }
}

impl core::fmt::Display for AllowedNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// The networks a worker serves; empty = everyone (dllama's behaviour).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<AllowedNet>,
}

impl AllowList {
    /// An allowlist of `nets` (empty: everyone is allowed).
    pub fn new(nets: Vec<AllowedNet>) -> AllowList {
        AllowList { nets }
    }

    /// Whether the list restricts anything.
    pub fn is_restricted(&self) -> bool {
        !self.nets.is_empty()
    }

    /// Whether `addr` may connect. IPv4-mapped IPv6 addresses count as their IPv4 address;
    /// any other IPv6 address is refused by a restricted list.
    pub fn allows(&self, addr: core::net::IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        let v4 = match addr {
            core::net::IpAddr::V4(a) => a,
            core::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => a,
                None => return false,
            },
        };
        self.nets.iter().any(|n| n.contains(v4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_hosts() {
        let list = AllowList::new(vec![
            AllowedNet::parse("10.77.0.0/24").unwrap(),
            AllowedNet::parse("192.168.1.7").unwrap(),
        ]);
        let ip = |s: &str| s.parse::<core::net::IpAddr>().unwrap();
        assert!(list.allows(ip("10.77.0.3")));
        assert!(!list.allows(ip("10.77.1.3")));
        assert!(list.allows(ip("192.168.1.7")));
        assert!(!list.allows(ip("192.168.1.8")));
        assert!(list.allows(ip("::ffff:10.77.0.9")));
        assert!(!list.allows(ip("::1")));
        assert!(AllowList::default().allows(ip("8.8.8.8")));
        assert!(
            AllowedNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(AllowedNet::parse("10.0.0.0/33").is_err());
        assert!(AllowedNet::parse("host").is_err());
        assert_eq!(
            AllowedNet::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }
}
