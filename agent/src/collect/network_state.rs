//! The network state artifacts of the agent's own (the host's) network
//! namespace: `network_interfaces`, `network_routes`, `network_neighbors`,
//! `listening_sockets` (every namespace, from the socket snapshot) and
//! `network_config` (resolv.conf, hosts, nsswitch.conf, hostname, and ld.so.preload for triage).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

use super::Context;
use super::connections::SocketSnapshot;
use super::fsread;
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::sink::SinkError;

/// One interface with its addresses.
#[derive(Debug, Default, Serialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Flags (`UP`, `LOOPBACK`, `PROMISC`, ...).
    pub flags: Vec<String>,
    /// Link-layer address.
    pub mac: Option<String>,
    /// MTU from sysfs.
    pub mtu: Option<u32>,
    /// Addresses as `address/prefix`.
    pub addresses: Vec<String>,
    /// Promiscuous mode (a sniffer's tell).
    pub promiscuous: bool,
}

/// One route.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Route {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// Interface.
    pub interface: String,
    /// Destination as `address/prefix`.
    pub destination: String,
    /// Gateway.
    pub gateway: String,
    /// Route flags (hex).
    pub flags: String,
    /// Metric.
    pub metric: u32,
}

/// One ARP entry.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Neighbor {
    /// IP address.
    pub address: String,
    /// Hardware address.
    pub mac: String,
    /// Interface.
    pub interface: String,
    /// ARP flags (hex): 0x2 complete, 0x4 permanent.
    pub flags: String,
}

/// One configuration file, content kept.
#[derive(Debug, Serialize)]
pub struct ConfigFile {
    /// Path.
    pub path: String,
    /// Content (lossless, see `content_b64`).
    pub content: Option<String>,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_b64: Option<String>,
    /// SHA-256 of the content.
    pub sha256: Option<String>,
    /// Error reading it.
    pub error: Option<String>,
}

/// A listening (or unconnected datagram) socket.
#[derive(Debug, Serialize)]
pub struct Listener {
    /// Network namespace inode.
    pub netns: u64,
    /// Protocol.
    pub protocol: &'static str,
    /// Local address.
    pub address: Option<String>,
    /// Local port.
    pub port: Option<u16>,
    /// Unix path.
    pub path: Option<String>,
    /// Owning pids.
    pub pids: Vec<i32>,
    /// Owning process names.
    pub process_names: Vec<String>,
}

/// Parses `/proc/net/route` (IPv4; addresses in host byte order hex).
#[must_use]
pub fn parse_route(text: &str) -> Vec<Route> {
    let v4 = |h: &str| {
        u32::from_str_radix(h, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            let dest = v4(f.get(1)?)?;
            let mask = v4(f.get(7)?)?;
            Some(Route {
                family: "ipv4",
                interface: (*f.first()?).to_owned(),
                destination: format!("{dest}/{}", u32::from(mask).count_ones()),
                gateway: v4(f.get(2)?)?.to_string(),
                flags: format!("0x{}", f.get(3)?),
                metric: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// Parses `/proc/net/ipv6_route`.
#[must_use]
pub fn parse_ipv6_route(text: &str) -> Vec<Route> {
    let v6 = |h: &str| {
        u128::from_str_radix(h, 16)
            .ok()
            .filter(|_| h.len() == 32)
            .map(Ipv6Addr::from)
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            let prefix = u8::from_str_radix(f.get(1)?, 16).ok()?;
            Some(Route {
                family: "ipv6",
                interface: (*f.get(9)?).to_owned(),
                destination: format!("{}/{prefix}", v6(f.first()?)?),
                gateway: v6(f.get(4)?)?.to_string(),
                flags: format!("0x{}", f.get(8)?),
                metric: u32::from_str_radix(f.get(5)?, 16).ok()?,
            })
        })
        .collect()
}

/// Parses `/proc/net/arp`.
#[must_use]
pub fn parse_arp(text: &str) -> Vec<Neighbor> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            Some(Neighbor {
                address: (*f.first()?).to_owned(),
                flags: (*f.get(2)?).to_owned(),
                mac: (*f.get(3)?).to_owned(),
                interface: (*f.get(5)?).to_owned(),
            })
        })
        .collect()
}

fn interfaces(sys: &Path) -> Result<Vec<Interface>, String> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))?;
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for ifa in addrs {
        let iface = by_name
            .entry(ifa.interface_name.clone())
            .or_insert_with(|| Interface {
                name: ifa.interface_name.clone(),
                mtu: fsread::read_trimmed(
                    &sys.join("class/net").join(&ifa.interface_name).join("mtu"),
                )
                .and_then(|s| s.parse().ok()),
                ..Interface::default()
            });
        iface.promiscuous = ifa.flags.contains(InterfaceFlags::IFF_PROMISC);
        iface.flags = ifa
            .flags
            .iter_names()
            .map(|(n, _)| n.trim_start_matches("IFF_").to_owned())
            .collect();
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                iface.mac = Some(
                    mac.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            let prefix = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()))
                .unwrap_or(32);
            iface.addresses.push(format!("{}/{prefix}", v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let prefix = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones()))
                .unwrap_or(128);
            iface.addresses.push(format!("{}/{prefix}", v6.ip()));
        }
    }
    Ok(by_name.into_values().collect())
}

fn config_file(path: &Path) -> ConfigFile {
    match fsread::read_small(path) {
        Ok(bytes) => {
            let t = HostText::new(&bytes);
            ConfigFile {
                path: path.display().to_string(),
                sha256: Some(ircap_proto::hashing::sha256_hex(&bytes)),
                content: Some(t.text),
                content_b64: t.b64,
                error: None,
            }
        }
        Err(e) => ConfigFile {
            path: path.display().to_string(),
            content: None,
            content_b64: None,
            sha256: None,
            error: Some(e.to_string()),
        },
    }
}

/// Writes the network state tables.
///
/// # Errors
/// [`SinkError`] when a table cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    sockets: &SocketSnapshot,
) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    let mut out = Vec::new();

    let mut t = JsonlWriter::open(ctx.sink, "network_interfaces", "network_state")?;
    match interfaces(&ctx.roots.sys) {
        Ok(list) => {
            for i in &list {
                t.write(i)?;
            }
        }
        Err(e) => t.error(e),
    }
    out.push(t.finish()?);

    let net = ctx.roots.proc.join("net");
    let read = |name: &str| {
        fsread::read_small(&net.join(name)).map(|b| String::from_utf8_lossy(&b).into_owned())
    };

    let mut t = JsonlWriter::open(ctx.sink, "network_routes", "network_state")?;
    for (file, parse) in [
        ("route", parse_route as fn(&str) -> Vec<Route>),
        ("ipv6_route", parse_ipv6_route),
    ] {
        match read(file) {
            Ok(text) => {
                for r in parse(&text) {
                    t.write(&r)?;
                }
            }
            Err(e) if e.is_gone() => {}
            Err(e) => t.error(e.to_string()),
        }
    }
    out.push(t.finish()?);

    let mut t = JsonlWriter::open(ctx.sink, "network_neighbors", "network_state")?;
    match read("arp") {
        Ok(text) => {
            for n in parse_arp(&text) {
                t.write(&n)?;
            }
        }
        Err(e) => t.error(e.to_string()),
    }
    out.push(t.finish()?);

    let mut t = JsonlWriter::open(ctx.sink, "listening_sockets", "network_state")?;
    for s in &sockets.records {
        let listening =
            s.state == "LISTEN" || (s.state == "UNCONN" && s.protocol.starts_with("udp"));
        if listening {
            t.write(&Listener {
                netns: s.netns,
                protocol: s.protocol,
                address: s.local_address.clone(),
                port: s.local_port,
                path: s.path.clone(),
                pids: s.pids.clone(),
                process_names: s.process_names.clone(),
            })?;
        }
    }
    out.push(t.finish()?);

    let mut t = JsonlWriter::open(ctx.sink, "network_config", "network_state")?;
    // ld.so.preload is not network configuration, but it is the one other
    // small /etc file triage needs (a rootkit lists its library there).
    for name in [
        "resolv.conf",
        "hosts",
        "nsswitch.conf",
        "hostname",
        "ld.so.preload",
    ] {
        let rec = config_file(&ctx.roots.etc.join(name));
        if let Some(e) = &rec.error
            && !e.contains("gone")
        {
            t.error(e.clone());
        }
        t.write(&rec)?;
    }
    out.push(t.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_arp() {
        let r = parse_route(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\neth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].destination, "0.0.0.0/0");
        assert_eq!(r[0].gateway, "192.168.2.1");
        assert_eq!(r[1].destination, "192.168.2.0/24");
        let r6 = parse_ipv6_route(
            "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n",
        );
        assert_eq!(r6[0].destination, "fe80::/64");
        assert_eq!(r6[0].metric, 256);
        let a = parse_arp(
            "IP address       HW type     Flags       HW address            Mask     Device\n192.168.2.1      0x1         0x2         52:54:00:12:34:56     *        eth0\n",
        );
        assert_eq!(a[0].mac, "52:54:00:12:34:56");
        assert_eq!(a[0].interface, "eth0");
    }
}
