//! Client identity: MAC addresses, IP addresses and subnets, their parsing and normal forms.
//!
//! Names in `once/` and `static/` are one of these three; every spelling a sysadmin is likely
//! to type is accepted, and each has one normal form that pxesrv itself writes.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// A 48-bit Ethernet address. Displays as iPXE's `${mac:hexhyp}`: `aa-bb-cc-dd-ee-ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{input:?} is not a MAC address: write it as aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff")]
pub struct MacParseError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` and `aabbccddeeff`,
    /// any case. One separator style per address; every group must be complete.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.chars().take(64).collect(),
        };
        let hex: String = match s.len() {
            12 => s.to_owned(),
            17 => {
                let sep = s.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(err());
                }
                let groups: Vec<&str> = s.split(sep as char).collect();
                if groups.len() != 6 || groups.iter().any(|g| g.len() != 2) {
                    return Err(err());
                }
                groups.concat()
            }
            14 => {
                let groups: Vec<&str> = s.split('.').collect();
                if groups.len() != 3 || groups.iter().any(|g| g.len() != 4) {
                    return Err(err());
                }
                groups.concat()
            }
            _ => return Err(err()),
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) is the IPv4 client it carries.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// What a file name in `once/` or `static/` stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryName {
    Mac(MacAddr),
    Ip(IpAddr),
    Subnet(IpNet),
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is neither an IP address (10.1.2.3, 2001:db8::7), a MAC address \
     (aa-bb-cc-dd-ee-ff) nor a subnet (10.1.0.0_16, 2001:db8::_48)"
)]
pub struct NameParseError {
    pub input: String,
}

impl FromStr for EntryName {
    type Err = NameParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(mac) = s.parse::<MacAddr>() {
            return Ok(EntryName::Mac(mac));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(EntryName::Ip(normalize_ip(ip)));
        }
        // A subnet is written ADDR_LEN because `/` cannot be part of a file name; ADDR/LEN is
        // accepted too where a name is typed on the command line.
        if let Some((addr, len)) = s.rsplit_once('_').or_else(|| s.rsplit_once('/')) {
            let canonical_len =
                len.bytes().all(|b| b.is_ascii_digit()) && (len == "0" || !len.starts_with('0'));
            if let (true, Ok(ip), Ok(len)) = (canonical_len, addr.parse::<IpAddr>(), len.parse()) {
                let net = match normalize_ip(ip) {
                    IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, len).map(IpNet::V4),
                    IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, len).map(IpNet::V6),
                };
                if let Ok(net) = net {
                    return Ok(EntryName::Subnet(net.trunc()));
                }
            }
        }
        Err(NameParseError {
            input: s.chars().take(80).collect(),
        })
    }
}

impl EntryName {
    /// The canonical file name pxesrv writes for this entry.
    pub fn file_name(&self) -> String {
        match self {
            EntryName::Mac(mac) => mac.to_string(),
            EntryName::Ip(ip) => ip.to_string(),
            EntryName::Subnet(net) => format!("{}_{}", net.network(), net.prefix_len()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            EntryName::Mac(_) => "mac",
            EntryName::Ip(_) => "ip",
            EntryName::Subnet(_) => "subnet",
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The identity of a booting client: its address as the server sees it, and its MAC when
/// the client told us (`?mac=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientId {
    pub ip: IpAddr,
    pub mac: Option<MacAddr>,
}

impl ClientId {
    pub fn new(ip: IpAddr, mac: Option<MacAddr>) -> Self {
        ClientId {
            ip: normalize_ip(ip),
            mac,
        }
    }
}

/// An unspecified address, used by the admin CLI when only a MAC is asked about.
pub const NO_IP: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings() {
        let want = MacAddr([0xaa, 0xbb, 0xcc, 0x0d, 0xee, 0xff]);
        for s in [
            "aa:bb:cc:0d:ee:ff",
            "AA:BB:CC:0D:EE:FF",
            "aa-bb-cc-0d-ee-ff",
            "aabbcc0deeff",
            "AABBCC0DEEFF",
            "aabb.cc0d.eeff",
        ] {
            assert_eq!(s.parse::<MacAddr>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "aa-bb-cc-0d-ee-ff");
    }

    #[test]
    fn mac_rejects() {
        for s in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb-cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:fg",
            "a:bb:cc:dd:ee:fff",
            "aabbccddeef",
            "aabbccddeeffa",
            "+a:bb:cc:dd:ee:ff",
            "aa bb cc dd ee ff",
            "../../etc/pass",
            "aa:bb:cc:dd:ee:f\0",
            "ａａ:bb:cc:dd:ee:ff",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn entry_names() {
        use EntryName::*;
        let ip = |s: &str| Ip(s.parse().unwrap());
        let net = |s: &str| Subnet(s.parse().unwrap());
        let cases: &[(&str, EntryName)] = &[
            ("10.1.2.3", ip("10.1.2.3")),
            ("2001:db8::7", ip("2001:db8::7")),
            ("2001:0db8:0::7", ip("2001:db8::7")),
            ("::ffff:10.1.2.3", ip("10.1.2.3")),
            ("10.1.0.0_16", net("10.1.0.0/16")),
            ("10.1.2.3_16", net("10.1.0.0/16")),
            ("10.1.0.0/16", net("10.1.0.0/16")),
            ("2001:db8::_48", net("2001:db8::/48")),
            ("0.0.0.0_0", net("0.0.0.0/0")),
            (
                "aa-bb-cc-dd-ee-ff",
                Mac(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<EntryName>().as_ref(), Ok(want), "{s}");
        }
        for s in [
            "README",
            "default",
            "10.1.0.0_33",
            "10.1.0.0_",
            "10.1.0.0_016",
            "10.1.0.0_+16",
            "_16",
            "10.1.2",
            "10.1.2.3 ",
            "2001:db8::_129",
            "..",
            "",
        ] {
            assert!(s.parse::<EntryName>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn canonical_file_names() {
        for (input, name) in [
            ("AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff"),
            ("2001:0db8:0::7", "2001:db8::7"),
            ("10.1.2.3_16", "10.1.0.0_16"),
            ("2001:db8::/48", "2001:db8::_48"),
        ] {
            assert_eq!(input.parse::<EntryName>().unwrap().file_name(), name);
        }
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let c = ClientId::new("::ffff:192.0.2.9".parse().unwrap(), None);
        assert_eq!(c.ip, "192.0.2.9".parse::<IpAddr>().unwrap());
    }
}
