//! The client address a request is limited by.
//!
//! The TCP peer, unless the peer is one of `TRUSTED_PROXIES`: then the forwarding chain
//! (`Forwarded: for=`, else `X-Forwarded-For`) is walked from the right, skipping trusted hops,
//! and the first untrusted address is the client. Entries left of it were written by the
//! client and are ignored, so a spoofed header changes nothing. IPv6 clients are keyed by
//! their /64, the block a single subscriber usually gets.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// The client address; `None` only when the peer is unknown (requests not from a socket).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !trusted(peer, proxies) {
        return Some(peer);
    }
    let mut current = peer;
    for hop in forwarding_chain(headers).into_iter().rev() {
        match hop {
            // Garbage written by the trusted hop's client: stop at the hop.
            None => return Some(current),
            Some(ip) if !trusted(ip, proxies) => return Some(ip),
            Some(ip) => current = ip,
        }
    }
    Some(current)
}

/// Left-to-right addresses of the forwarding chain; `None` for an unparseable element.
fn forwarding_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim().trim_matches('"');
    if let Some(rest) = raw.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(ip, _)| ip.parse::<Ipv6Addr>().ok())
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The limiter key for an address: `ip:1.2.3.4`, or `ip:2001:db8:1:2::/64`.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            // Every request that counts needs its key: built without the formatting machinery.
            let mut key = String::with_capacity(18);
            key.push_str("ip:");
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    key.push('.');
                }
                key.push_str(itoa::Buffer::new().format(octet));
            }
            key
        }
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            format!("ip:{}/64", Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn proxies() -> Vec<IpNet> {
        vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9"), ("forwarded", "for=8.8.8.8")]);
        assert_eq!(
            client_ip(ip("203.0.113.7"), &h, &proxies()),
            ip("203.0.113.7")
        );
        assert_eq!(client_ip(ip("203.0.113.7"), &h, &[]), ip("203.0.113.7"));
    }

    #[test]
    fn a_trusted_proxy_is_believed_for_the_right_most_untrusted_hop() {
        // The client prepended a fake address; the proxies appended the real ones.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.1.1")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &h, &proxies()),
            ip("198.51.100.4")
        );
        // Several header lines form one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.4:5555"),
        ]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &proxies()),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn forwarded_takes_precedence_and_is_parsed_with_quotes_and_ports() {
        let h = headers(&[
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https"#,
            ),
            ("x-forwarded-for", "1.1.1.1"),
        ]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies()), ip("2001:db8::7"));
    }

    #[test]
    fn garbage_or_an_all_trusted_chain_falls_back_safely() {
        let h = headers(&[("x-forwarded-for", "198.51.100.4, nonsense")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies()), ip("10.0.0.2"));
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies()), ip("10.9.9.9"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &proxies()),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(None, &HeaderMap::new(), &proxies()), None);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            ip_key("2001:db8:1:2:bbbb::9".parse().unwrap()),
            "ip:2001:db8:1:2::/64"
        );
        let mapped = client_ip(ip("::ffff:192.0.2.1"), &HeaderMap::new(), &[]);
        assert_eq!(mapped, ip("192.0.2.1"));
        assert_eq!(ip_key(mapped.unwrap()), "ip:192.0.2.1");
        for v4 in ["0.0.0.0", "10.200.3.45", "255.255.255.255"] {
            assert_eq!(ip_key(v4.parse().unwrap()), format!("ip:{v4}"));
        }
    }
}
