//! Authentication, kept once for the gates and the workers: the Authorization header's
//! secret, the token it names (looked up by its SHA-256, never stored in clear), its
//! expiry, and a cache of resolved headers that is dropped whenever the tokens collection
//! moves, so a revoked token is refused at once. The gates ask [`Tokens::caller`]; the
//! workers ask [`Tokens::resolve`] through `_core.authenticate`, which also says why a
//! token is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use sha2::{Digest, Sha256};

use crate::core::model::TOKENS;
use crate::core::store::StoreError;
use crate::registry::Registry;

const MAX_CACHED_HEADERS: usize = 4096;
/// Every registry token starts with it (the proxy never forwards one: `forward.rs`).
pub(crate) const SECRET_PREFIX: &str = "rsv_";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (`tok_...`), never its secret.
    pub id: String,
    pub role: String,
    pub slug: Option<String>,
    /// Unix ms after which the token is refused; None: it does not expire.
    pub expires_ms: Option<u64>,
    /// `expiresAt` as stored, for the message that says it expired.
    expires_at: Option<String>,
}

impl Caller {
    fn expired(&self) -> bool {
        self.expires_ms.is_some_and(|at| at <= unix_now_ms())
    }

    pub(crate) fn sees_every_slug(&self) -> bool {
        crate::roles::sees_every_slug(&self.role)
    }

    /// Whether the caller's role grants `permission` (`roles.rs`).
    pub(crate) fn allows(&self, permission: &str) -> bool {
        crate::roles::allows(&self.role, permission)
    }
}

/// Why a header names no caller: each is a 401 with this message.
#[derive(Debug)]
pub enum Refused {
    Malformed,
    Unknown,
    Expired {
        id: String,
        at: String,
    },
    /// The tokens could not be read.
    Store(StoreError),
}

impl Refused {
    pub fn message(&self) -> String {
        match self {
            Refused::Malformed => "malformed Authorization header (expected 'Bearer <token>')".to_owned(),
            Refused::Unknown => "unknown or revoked token".to_owned(),
            Refused::Expired { id, at } => format!("token {id} expired at {at}"),
            Refused::Store(e) => e.to_string(),
        }
    }
}

/// Resolved tokens by Authorization header, dropped whenever the tokens collection moves.
/// The epoch and the map are one value: a lookup that raced a revocation is cached under
/// the epoch it read, never under the next one. `seen` is the store's write count at which
/// the epoch was last confirmed: while no write began since, the epoch is not read again.
#[derive(Default)]
pub struct Tokens {
    cache: RwLock<Cached>,
}

struct Cached {
    epoch: u64,
    seen: AtomicU64,
    callers: HashMap<String, Caller>,
}

impl Default for Cached {
    fn default() -> Self {
        Cached {
            epoch: 0,
            seen: AtomicU64::new(u64::MAX), // never confirmed
            callers: HashMap::new(),
        }
    }
}

impl Tokens {
    /// The caller behind an Authorization header, or None (no caller: the workers answer
    /// such a request and say why).
    pub fn caller(&self, registry: &Registry, header: &str) -> Option<Caller> {
        self.resolve(registry, header).ok()
    }

    /// The caller behind an Authorization header, or why there is none.
    pub fn resolve(&self, registry: &Registry, header: &str) -> Result<Caller, Refused> {
        let counts = registry.store.write_counts();
        let settled = counts.settled();
        if let Ok(cache) = self.cache.read() {
            if settled.is_some_and(|s| s == cache.seen.load(Ordering::Acquire)) {
                if let Some(caller) = cache.callers.get(header) {
                    return checked(caller.clone());
                }
            }
        }
        let epoch = registry.store.collection_index(&TOKENS).map_err(Refused::Store)?;
        if let Ok(cache) = self.cache.read() {
            if cache.epoch == epoch {
                // Read after `settled` was taken: the epoch holds at that count.
                if let Some(s) = settled {
                    cache.seen.store(s, Ordering::Release);
                }
                if let Some(caller) = cache.callers.get(header) {
                    return checked(caller.clone());
                }
            }
        }
        let caller = lookup(registry, bearer_secret(header).ok_or(Refused::Malformed)?)?;
        if let Ok(mut cache) = self.cache.write() {
            if cache.epoch != epoch || cache.callers.len() >= MAX_CACHED_HEADERS {
                *cache = Cached {
                    epoch,
                    seen: AtomicU64::new(settled.unwrap_or(u64::MAX)),
                    callers: HashMap::new(),
                };
            }
            cache.callers.insert(header.to_owned(), caller.clone());
        }
        checked(caller)
    }
}

fn checked(caller: Caller) -> Result<Caller, Refused> {
    if caller.expired() {
        return Err(Refused::Expired {
            at: caller.expires_at.clone().unwrap_or_default(),
            id: caller.id,
        });
    }
    Ok(caller)
}

/// `Bearer <secret>`, or a bare `rsv_...` secret (1Backend's clients send it so).
fn bearer_secret(header: &str) -> Option<&str> {
    let text = header.trim();
    if text.starts_with(SECRET_PREFIX) && !text.contains(' ') {
        return Some(text);
    }
    let (scheme, secret) = text.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

fn lookup(registry: &Registry, secret: &str) -> Result<Caller, Refused> {
    let digest: String = Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ids = registry
        .store
        .ids_by(&TOKENS, "secretHash", &digest)
        .map_err(Refused::Store)?;
    let id = ids.into_iter().next().ok_or(Refused::Unknown)?;
    let record = registry
        .store
        .get(&TOKENS, &id)
        .map_err(Refused::Store)?
        .ok_or(Refused::Unknown)?;
    let value: serde_json::Value = serde_json::from_slice(&record.json).map_err(|_| Refused::Unknown)?;
    let text = |name: &str| value.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
    let expires_at = text("expiresAt");
    Ok(Caller {
        id: text("id").unwrap_or(id),
        role: text("role").ok_or(Refused::Unknown)?,
        slug: text("slug"),
        // An expiry we cannot read counts as passed.
        expires_ms: expires_at.as_deref().map(|at| unix_ms(at).unwrap_or(0)),
        expires_at,
    })
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix ms of a timestamp in the API's one format (`2026-12-04T19:15:22.123Z`, as
/// `clock.format_time` writes it), or None for anything else.
pub fn unix_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let shape_ok = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    if !shape_ok {
        return None;
    }
    let num = |from: usize, to: usize| text.get(from..to)?.parse::<u64>().ok();
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second, milli) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), years from 1970 on.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_api_format_read_as_unix_ms() {
        assert_eq!(unix_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(unix_ms("2026-12-04T19:15:22.123Z"), Some(1_796_411_722_123));
        assert_eq!(unix_ms("2000-02-29T12:00:00.000Z"), Some(951_825_600_000));
        assert_eq!(unix_ms("2100-03-01T00:00:00.999Z"), Some(4_107_542_400_999));
        for bad in [
            "",
            "2026-12-04T19:15:22Z",
            "2026-13-04T19:15:22.123Z",
            "2026-12-04 19:15:22.123Z",
            "x",
        ] {
            assert_eq!(unix_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn bearer_and_bare_secrets() {
        assert_eq!(bearer_secret("Bearer rsv_x"), Some("rsv_x"));
        assert_eq!(bearer_secret("bearer   rsv_x "), Some("rsv_x"));
        assert_eq!(bearer_secret("rsv_x"), Some("rsv_x"));
        assert_eq!(bearer_secret("Basic abc"), None);
        assert_eq!(bearer_secret("Bearer"), None);
        assert_eq!(bearer_secret(""), None);
    }
}
