//! Source addresses for the connections of `connect` and `idle` (`--sources`): every socket is
//! bound to one of them (port 0) before it connects, connection `i` to `addrs[i % n]`.
//!
//! Why: the kernel keeps a connection's 4-tuple unique, and the ephemeral range (here
//! 32768-60999, 28,232 ports) is per (source, destination) pair. One source address caps a run at
//! ~28 k connections open or in TIME_WAIT towards the gate's one port; `n` sources lift that to
//! `n` x 28 k. All of 127.0.0.0/8 reaches the loopback interface, so no setup is needed.
//!
//! Owns the parsed list only (sans-IO); the sockets are opened by [`crate::link`].

use std::net::Ipv4Addr;

/// Most source addresses accepted (127.0.0.1 to 127.0.0.254 and more, if listed).
pub const MAX_SOURCES: usize = 1024;

/// A non-empty list of IPv4 loopback addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    addrs: Vec<Ipv4Addr>,
}

impl Sources {
    /// `8` (127.0.0.1 to 127.0.0.8), `127.0.0.1,127.0.0.5`, `127.0.0.1-127.0.0.16`, or a mix of
    /// lists and ranges. Loopback (127.0.0.0/8) only.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("--sources {spec:?}: {why}");
        if let Ok(n) = spec.trim().parse::<usize>() {
            if !(1..=254).contains(&n) {
                return Err(bad("a count is 1 to 254"));
            }
            let addrs = (1..=n)
                // n <= 254 was checked: the last octet fits.
                .map(|i| Ipv4Addr::new(127, 0, 0, i as u8))
                .collect();
            return Ok(Self { addrs });
        }
        let mut addrs = Vec::new();
        for part in spec.split(',').map(str::trim) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |text: &str| -> Result<u32, String> {
                let ip: Ipv4Addr = text
                    .parse()
                    .map_err(|_| bad("expected a count, addresses or ranges"))?;
                if !ip.is_loopback() {
                    return Err(bad("source addresses must be in 127.0.0.0/8"));
                }
                Ok(u32::from(ip))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if first > last {
                return Err(bad("a range goes upwards"));
            }
            if (last - first) as usize >= MAX_SOURCES || addrs.len() > MAX_SOURCES {
                return Err(bad("too many addresses"));
            }
            addrs.extend((first..=last).map(Ipv4Addr::from));
        }
        addrs.dedup();
        if addrs.is_empty() || addrs.len() > MAX_SOURCES {
            return Err(bad("1 to 1024 addresses"));
        }
        Ok(Self { addrs })
    }

    /// The address connection number `i` binds to.
    pub fn for_index(&self, i: u64) -> Ipv4Addr {
        // The remainder is below `len()`, which is a usize.
        self.addrs[(i % self.addrs.len() as u64) as usize]
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, d)
    }

    #[test]
    fn a_count_means_the_first_addresses_of_127_0_0_0() {
        let s = Sources::parse("8").expect("count");
        assert_eq!(s.len(), 8);
        assert_eq!(s.for_index(0), ip(1));
        assert_eq!(s.for_index(7), ip(8));
        assert!(Sources::parse("0").is_err());
        assert!(Sources::parse("255").is_err());
    }

    #[test]
    fn connections_rotate_over_the_sources() {
        let s = Sources::parse("3").expect("count");
        let picked: Vec<_> = (0..7).map(|i| s.for_index(i)).collect();
        assert_eq!(picked, [ip(1), ip(2), ip(3), ip(1), ip(2), ip(3), ip(1)]);
        assert_eq!(s.for_index(u64::MAX), ip(1), "u64::MAX % 3 == 0");
    }

    #[test]
    fn lists_and_ranges_parse_and_mix() {
        let s = Sources::parse("127.0.0.1, 127.0.0.5").expect("list");
        assert_eq!(s.addrs, [ip(1), ip(5)]);
        let s = Sources::parse("127.0.0.2-127.0.0.4,127.0.1.9").expect("mix");
        assert_eq!(s.addrs, [ip(2), ip(3), ip(4), Ipv4Addr::new(127, 0, 1, 9)]);
        // A range may cross an octet.
        let s = Sources::parse("127.0.0.255-127.0.1.0").expect("crossing");
        assert_eq!(s.addrs, [ip(255), Ipv4Addr::new(127, 0, 1, 0)]);
    }

    #[test]
    fn non_loopback_and_malformed_specs_are_refused() {
        assert!(Sources::parse("10.0.0.1").is_err());
        assert!(Sources::parse("127.0.0.1-10.0.0.1").is_err());
        assert!(Sources::parse("127.0.0.9-127.0.0.1").is_err());
        assert!(Sources::parse("127.0.0.1-127.1.0.0").is_err(), "too many");
        assert!(Sources::parse("").is_err());
        assert!(Sources::parse("x").is_err());
    }
}
