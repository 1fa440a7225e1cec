//! Answers per client over UDP, bounded so the server cannot be used to amplify traffic
//! toward a forged source address (the idea of BIND's response rate limiting). A client
//! over its rate gets every second answer as an empty truncated one (TC set: a real client
//! asks again over TCP, which proves its address) and no answer otherwise. TCP is not
//! limited: its handshake already proves the address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::netguard::{unmapped, Net};

/// Clients tracked at most; past it, idle ones are forgotten, and while it stays full a
/// new client's answers are truncated (it can still ask over TCP).
const MAX_CLIENTS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// An empty answer with TC set.
    Truncate,
    Drop,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct Limiter {
    /// Answers per second per client (IPv4 address, IPv6 /64); 0: no limit.
    rate: u32,
    exempt: Vec<Net>,
    clients: Mutex<HashMap<u128, Bucket>>,
    refused: AtomicU64,
}

impl Limiter {
    pub fn new(rate: u32, exempt: &[String]) -> Result<Limiter, String> {
        let exempt = exempt
            .iter()
            .map(|cidr| {
                Net::parse(cidr).ok_or_else(|| format!("--dns-rate-exempt: '{cidr}' is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Limiter {
            rate,
            exempt,
            clients: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// The verdict on one more answer to `ip`; `now` is read only for a counted client.
    pub fn check(&self, ip: IpAddr, now: impl FnOnce() -> Instant) -> Verdict {
        let ip = unmapped(ip);
        if self.rate == 0 || self.exempt.iter().any(|net| net.contains(ip)) {
            return Verdict::Answer;
        }
        let now = now();
        let key = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) << 64 | 1,
        };
        let rate = f64::from(self.rate);
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&key) {
            clients.retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate + b.tokens < rate);
            if clients.len() >= MAX_CLIENTS {
                return self.over();
            }
        }
        let bucket = clients.entry(key).or_insert(Bucket { tokens: rate, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Answer;
        }
        drop(clients);
        self.over()
    }

    fn over(&self) -> Verdict {
        if self.refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
            Verdict::Truncate
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_client_past_its_rate_gets_truncated_or_nothing_until_time_refills_it() {
        let limiter = Limiter::new(10, &[]).unwrap();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..10).all(|_| limiter.check(ip, || now) == Verdict::Answer));
        let over: Vec<Verdict> = (0..4).map(|_| limiter.check(ip, || now)).collect();
        assert_eq!(
            over,
            [Verdict::Truncate, Verdict::Drop, Verdict::Truncate, Verdict::Drop]
        );
        // Another client is not affected; a tenth of a second later one more answer.
        assert_eq!(limiter.check("192.0.2.2".parse().unwrap(), || now), Verdict::Answer);
        let later = now + Duration::from_millis(100);
        assert_eq!(limiter.check(ip, || later), Verdict::Answer);
        assert_ne!(limiter.check(ip, || later), Verdict::Answer);
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_exempt_networks_are_not_counted() {
        let limiter = Limiter::new(1, &["127.0.0.0/8".into()]).unwrap();
        let now = Instant::now();
        assert_eq!(limiter.check("2001:db8::1".parse().unwrap(), || now), Verdict::Answer);
        assert_ne!(limiter.check("2001:db8::2".parse().unwrap(), || now), Verdict::Answer);
        assert!((0..100).all(|_| limiter.check("127.0.0.1".parse().unwrap(), || now) == Verdict::Answer));
        assert!(Limiter::new(1, &["nope".into()]).is_err());
    }
}
