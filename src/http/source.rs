//! Which address a callback comes from, and whether that address may send
//! callbacks at all (`CALLBACK_ALLOWED_SOURCES`). The vendor's signature
//! covers only an order number, so the sending address is the strongest
//! check there is against forged callbacks.
//!
//! Pure: no I/O, no logging, no clock. It must never believe a forwarded
//! address from a peer that is not a trusted proxy, and never an address it
//! cannot parse: in both cases the TCP peer is what gets judged.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use actix_web::http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// Built once at startup, shared read-only by every worker.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    allowed: Option<Vec<IpNet>>,
    header: Option<HeaderName>,
    trusted_proxies: Vec<IpNet>,
}

/// What the handler records and answers for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The client address (`None` when the transport has no peer address).
    pub addr: Option<IpAddr>,
    /// Why the request is refused, when it is.
    pub refusal: Option<String>,
}

impl SourcePolicy {
    /// `allowed: None` accepts every address; `header: None` judges the TCP
    /// peer whatever the request says.
    pub fn new(
        allowed: Option<Vec<IpNet>>,
        header: Option<HeaderName>,
        trusted_proxies: Vec<IpNet>,
    ) -> SourcePolicy {
        SourcePolicy {
            allowed,
            header,
            trusted_proxies,
        }
    }

    /// Anything the client wrote is ignored unless our own proxy stands
    /// behind it; behind a proxy, the TCP peer is the proxy and says nothing
    /// about the sender.
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        match &self.header {
            Some(name) if self.is_trusted_proxy(peer) => {
                forwarded_client(headers, name, |a| self.is_trusted_proxy(a)).unwrap_or(peer)
            }
            _ => peer,
        }
    }

    /// A dual-stack listener reports IPv4 senders as `::ffff:a.b.c.d`; they
    /// are judged as the IPv4 address operators write in the ranges.
    pub fn allows(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.allowed
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&addr)))
    }

    /// One call for the handler, so it carries no address rules. Without a
    /// peer address (not TCP) a restricted endpoint refuses: an address that
    /// cannot be judged is not an allowed one.
    pub fn judge(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Judged {
        let addr = peer.map(|p| self.client_addr(p, headers));
        Judged {
            addr,
            refusal: self.refusal(addr),
        }
    }

    /// Why a client address (already judged from the peer and the proxy
    /// header) may not send callbacks, if it may not. A stored request is
    /// judged again by this, on the address it recorded.
    pub fn refusal(&self, addr: Option<IpAddr>) -> Option<String> {
        match addr {
            Some(a) if !self.allows(a) => Some(format!(
                "source address {a} is not in CALLBACK_ALLOWED_SOURCES"
            )),
            None if self.allowed.is_some() => Some(
                "source address unknown (no TCP peer), CALLBACK_ALLOWED_SOURCES is set".to_owned(),
            ),
            _ => None,
        }
    }

    fn is_trusted_proxy(&self, addr: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&addr))
    }
}

/// Every proxy appends the address it saw, so walking from the right, the
/// first address that is not one of our proxies is the one our outermost
/// proxy vouches for; whatever lies left of it the client may have written.
/// `None` (judge the peer) when the header is missing, or when the address
/// that would count cannot be read.
fn forwarded_client(
    headers: &HeaderMap,
    name: &HeaderName,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let mut left_most = None;
    // Repeated header lines are one list, in order (RFC 9110 §5.3).
    for value in headers.get_all(name).rev() {
        let text = value.to_str().ok()?;
        for element in text.rsplit(',').map(str::trim) {
            if element.is_empty() {
                continue;
            }
            let addr = parse_element(element)?;
            if !trusted(addr) {
                return Some(addr);
            }
            left_most = Some(addr);
        }
    }
    left_most
}

/// One list element: `203.0.113.5`, `203.0.113.5:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`, or an RFC 7239 `for=...;proto=...` pair list.
fn parse_element(element: &str) -> Option<IpAddr> {
    let node = if element.contains('=') {
        element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })?
    } else {
        element
    };
    let node = node
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .unwrap_or(node);
    let ip = node
        .parse::<IpAddr>()
        .or_else(|_| node.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .or_else(|| {
            let inner = node.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use proptest::prelude::*;

    const XFF: &str = "x-forwarded-for";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(spec: &[&str]) -> Vec<IpNet> {
        spec.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn loopback() -> Vec<IpNet> {
        nets(&["127.0.0.0/8", "::1/128"])
    }

    /// Behind a proxy: `X-Forwarded-For` believed from loopback.
    fn proxied() -> SourcePolicy {
        SourcePolicy::new(None, Some(HeaderName::from_static(XFF)), loopback())
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(
                HeaderName::from_static(XFF),
                HeaderValue::from_str(line).unwrap(),
            );
        }
        h
    }

    fn client(policy: &SourcePolicy, peer: &str, lines: &[&str]) -> IpAddr {
        policy.client_addr(ip(peer), &headers(lines))
    }

    #[test]
    fn the_peer_is_judged_when_no_header_is_configured() {
        let p = SourcePolicy::new(None, None, loopback());
        assert_eq!(client(&p, "127.0.0.1", &["203.0.113.5"]), ip("127.0.0.1"));
    }

    #[test]
    fn a_trusted_proxy_s_header_names_the_client() {
        assert_eq!(
            client(&proxied(), "127.0.0.1", &["203.0.113.5"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            client(&proxied(), "::1", &["2001:db8::7"]),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn an_untrusted_peer_s_header_is_ignored() {
        assert_eq!(
            client(&proxied(), "198.51.100.1", &["203.0.113.5"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_right_most_address_that_is_not_a_trusted_proxy_counts() {
        let p = SourcePolicy::new(
            None,
            Some(HeaderName::from_static(XFF)),
            nets(&["127.0.0.0/8", "10.0.0.0/8"]),
        );
        // A client forging the left part of the chain gains nothing.
        assert_eq!(
            client(&p, "127.0.0.1", &["203.0.113.5, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client(&p, "127.0.0.1", &["203.0.113.5, 198.51.100.1, 10.0.0.2"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn when_every_address_is_a_trusted_proxy_the_left_most_counts() {
        assert_eq!(
            client(&proxied(), "127.0.0.1", &["127.0.0.3, 127.0.0.2"]),
            ip("127.0.0.3")
        );
    }

    #[test]
    fn repeated_header_lines_read_as_one_list_in_order() {
        assert_eq!(
            client(&proxied(), "127.0.0.1", &["203.0.113.5", "198.51.100.1"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client(&proxied(), "127.0.0.1", &["203.0.113.5", "127.0.0.2"]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn spaces_brackets_ports_quotes_and_forwarded_pairs_are_tolerated() {
        let cases = [
            ("  203.0.113.5  ", "203.0.113.5"),
            ("203.0.113.5:4711", "203.0.113.5"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("\"[2001:db8::1]:4711\"", "2001:db8::1"),
            ("::ffff:203.0.113.5", "203.0.113.5"),
            ("for=203.0.113.5", "203.0.113.5"),
            (
                "proto=https; For=\"[2001:db8::1]:443\";by=127.0.0.1",
                "2001:db8::1",
            ),
            ("198.51.100.9 ,\t203.0.113.5 ,, ", "203.0.113.5"),
        ];
        for (value, want) in cases {
            assert_eq!(
                client(&proxied(), "127.0.0.1", &[value]),
                ip(want),
                "{value}"
            );
        }
    }

    #[test]
    fn an_unparseable_or_missing_value_falls_back_to_the_peer() {
        for value in [
            "",
            " , ",
            "unknown",
            "_hidden",
            "203.0.113.5 garbage",
            "203.0.113.5, 300.1.2.3",
            "by=203.0.113.5",
            "[203.0.113.5]",
            "203.0.113.5:99999",
        ] {
            assert_eq!(
                client(&proxied(), "127.0.0.1", &[value]),
                ip("127.0.0.1"),
                "{value:?}"
            );
        }
        assert_eq!(client(&proxied(), "127.0.0.1", &[]), ip("127.0.0.1"));
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static(XFF),
            HeaderValue::from_bytes("203.0.113.5, 东".as_bytes()).unwrap(),
        );
        assert_eq!(proxied().client_addr(ip("127.0.0.1"), &h), ip("127.0.0.1"));
    }

    #[test]
    fn what_the_client_wrote_left_of_its_address_cannot_spoil_it() {
        assert_eq!(
            client(&proxied(), "127.0.0.1", &["garbage, 203.0.113.5"]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_count_as_their_ipv4_address() {
        let p = proxied();
        assert_eq!(
            client(&p, "::ffff:127.0.0.1", &["203.0.113.5"]),
            ip("203.0.113.5"),
            "a mapped loopback peer is a trusted proxy"
        );
        assert_eq!(
            client(&p, "::ffff:198.51.100.1", &[]),
            ip("198.51.100.1"),
            "the peer itself is reported as IPv4"
        );
        let allowed = SourcePolicy::new(Some(nets(&["203.0.113.0/24"])), None, loopback());
        assert!(allowed.allows(ip("::ffff:203.0.113.5")));
    }

    #[test]
    fn every_address_is_allowed_when_no_sources_are_configured() {
        let p = SourcePolicy::new(None, None, loopback());
        assert!(p.allows(ip("198.51.100.1")));
        assert!(p.allows(ip("2001:db8::1")));
        let j = p.judge(None, &HeaderMap::new());
        assert_eq!(j.refusal, None);
    }

    #[test]
    fn only_addresses_in_the_configured_ranges_are_allowed() {
        let p = SourcePolicy::new(
            Some(nets(&[
                "203.0.113.0/24",
                "198.51.100.7/32",
                "2001:db8::/32",
            ])),
            None,
            loopback(),
        );
        assert!(p.allows(ip("203.0.113.200")));
        assert!(p.allows(ip("198.51.100.7")));
        assert!(p.allows(ip("2001:db8:1::5")));
        assert!(!p.allows(ip("198.51.100.8")));
        assert!(!p.allows(ip("127.0.0.1")));
        assert!(!p.allows(ip("2001:db9::1")));
    }

    #[test]
    fn a_refusal_names_the_judged_address() {
        let p = SourcePolicy::new(
            Some(nets(&["203.0.113.0/24"])),
            Some(HeaderName::from_static(XFF)),
            loopback(),
        );
        let j = p.judge(Some(ip("127.0.0.1")), &headers(&["198.51.100.1"]));
        assert_eq!(j.addr, Some(ip("198.51.100.1")));
        assert_eq!(
            j.refusal.as_deref(),
            Some("source address 198.51.100.1 is not in CALLBACK_ALLOWED_SOURCES")
        );
        let j = p.judge(Some(ip("127.0.0.1")), &headers(&["203.0.113.5"]));
        assert_eq!((j.addr, j.refusal), (Some(ip("203.0.113.5")), None));
        let j = p.judge(None, &headers(&["203.0.113.5"]));
        assert_eq!(j.addr, None);
        assert!(j.refusal.is_some(), "no peer, nothing to judge: refused");
    }

    /// Addresses, some trusted proxies, in the forms proxies write them.
    fn element() -> impl Strategy<Value = String> {
        let addr = prop::sample::select(vec![
            "127.0.0.1",
            "127.9.8.7",
            "::1",
            "::ffff:127.0.0.1",
            "10.0.0.1",
            "203.0.113.5",
            "198.51.100.1",
            "2001:db8::1",
            "::ffff:203.0.113.9",
        ]);
        let garbage = prop::sample::select(vec!["unknown", "_x", "300.1.1.1", "[1.2.3.4]", ""]);
        prop_oneof![
            4 => (addr, 0..5u8, 0..3u8).prop_map(|(a, form, space)| {
                let v6 = a.contains(':');
                let s = match form {
                    1 if v6 => format!("[{a}]"),
                    2 if v6 => format!("[{a}]:443"),
                    2 => format!("{a}:443"),
                    3 => format!("for=\"{}\"", if v6 { format!("[{a}]") } else { a.to_owned() }),
                    4 => format!("for={a};proto=https"),
                    _ => a.to_owned(),
                };
                format!("{}{s}{}", " ".repeat(space.into()), " ".repeat(space.into()))
            }),
            1 => garbage.prop_map(str::to_owned),
        ]
    }

    fn peer() -> impl Strategy<Value = IpAddr> {
        prop::sample::select(vec![
            ip("127.0.0.1"),
            ip("::1"),
            ip("::ffff:127.0.0.1"),
            ip("198.51.100.200"),
            ip("2001:db8::9"),
        ])
    }

    /// Whether `addr` is written somewhere in `value`, by the standard
    /// parser alone: independent of the code under test.
    fn appears_in(addr: IpAddr, value: &str) -> bool {
        let chars: Vec<char> = value.chars().collect();
        (0..chars.len()).any(|i| {
            (i + 1..=chars.len().min(i + 48)).any(|j| {
                let s: String = chars[i..j].iter().collect();
                s.parse::<IpAddr>().is_ok_and(|a| a.to_canonical() == addr)
            })
        })
    }

    fn policy_with(trusted: &[&str]) -> SourcePolicy {
        SourcePolicy::new(None, Some(HeaderName::from_static(XFF)), nets(trusted))
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(256))]

        #[test]
        fn any_header_yields_the_peer_or_an_address_written_in_it(
            parts in prop::collection::vec(element(), 0..6),
            noise in "[0-9a-f:.\\[\\]\" ,;=for]{0,40}",
            with_noise in any::<bool>(),
            peer in peer(),
        ) {
            let value = if with_noise { noise } else { parts.join(",") };
            let Ok(v) = HeaderValue::from_str(&value) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(XFF), v);
            let p = policy_with(&["127.0.0.0/8", "::1/128", "10.0.0.0/8"]);
            let got = p.client_addr(peer, &h);
            prop_assert!(
                got == peer.to_canonical() || appears_in(got, &value),
                "{got} from peer {peer} and {value:?}"
            );
            if got != peer.to_canonical() {
                prop_assert!(p.is_trusted_proxy(peer.to_canonical()));
            }
        }

        #[test]
        fn any_bytes_in_the_header_never_panic_and_never_beat_an_untrusted_peer(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            last in element(),
        ) {
            let mut raw = bytes;
            raw.extend_from_slice(format!(",{last}").as_bytes());
            let Ok(v) = HeaderValue::from_bytes(&raw) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(XFF), v);
            let p = policy_with(&["127.0.0.0/8", "::1/128"]);
            let _ = p.client_addr(ip("127.0.0.1"), &h);
            prop_assert_eq!(p.client_addr(ip("198.51.100.200"), &h), ip("198.51.100.200"));
            prop_assert_eq!(p.client_addr(ip("::ffff:198.51.100.200"), &h), ip("198.51.100.200"));
        }
    }
}
