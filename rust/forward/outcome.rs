//! Phase 5, the outcome: why an attempt failed, in words for the client's 502.

use super::*;

/// The fence's refusal behind a connect error, if that is what it was.
pub(crate) fn refusal<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if let Some(refused) = io.get_ref().and_then(|inner| inner.downcast_ref::<Refused>()) {
                return Some(refused);
            }
        }
        cause = error.source();
    }
    None
}

/// The innermost cause of a client error, for messages ("Connection refused (os error 111)").
pub(crate) fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// How an attempt ended.
pub(crate) enum Tried {
    /// The upstream answered: relay it.
    Answered(hyper::Response<hyper::body::Incoming>),
    /// Not contacted, or no connection: another instance may be tried (why, for the 502).
    NextInstance(String),
    /// Over for this request: the answer for the client.
    Failed(Failed),
}

/// One attempt on one instance, which tells the selector (in flight, ejection) and the
/// counters how it went.
pub(crate) struct Attempt<'a> {
    pub registry: &'a Registry,
    pub stats: &'a ProxyStats,
    pub slug: &'a str,
    pub id: &'a str,
    pub url: &'a str,
    /// Where its requests go (None: its stored URL is not in canonical form).
    pub target: Option<&'a Target>,
}

impl Attempt<'_> {
    /// Ends the attempt's in-flight count with `outcome` and counts it in `counter`.
    pub(crate) fn record(&self, outcome: Outcome, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.release(outcome);
    }

    /// Ends it without a verdict on the instance (the request could not be built).
    pub(crate) fn abandon(&self) {
        self.release(Outcome::Abandoned);
    }

    fn release(&self, outcome: Outcome) {
        let ejected = self
            .registry
            .selector
            .release(&self.registry.store, self.slug, self.id, outcome);
        if ejected.unwrap_or(false) {
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the upstream's answer (None: none in time) makes of the attempt.
    pub(crate) fn judge(
        &self,
        answered: Option<Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>>,
        timeout: Duration,
    ) -> Tried {
        let (url, slug, stats) = (self.url, self.slug, self.stats);
        let answer = match answered {
            Some(Ok(answer)) => answer,
            Some(Err(e)) if e.is_connect() => {
                return Tried::NextInstance(match refusal(&e) {
                    Some(refused) => {
                        self.record(Outcome::Failure, &stats.not_contacted);
                        format!("upstream {url} of '{slug}' not contacted: {refused}")
                    }
                    None => {
                        self.record(Outcome::Failure, &stats.connect_error);
                        format!("upstream {url} of '{slug}' failed to connect: {}", source_text(&e))
                    }
                });
            }
            Some(Err(e)) => {
                self.record(Outcome::Failure, &stats.error);
                let message = format!("upstream {url} of '{slug}' failed: {}", source_text(&e));
                return Tried::Failed(Failed(502, message));
            }
            None => {
                self.record(Outcome::Failure, &stats.timeout);
                let message = format!(
                    "upstream {url} of '{slug}' did not answer within {}s",
                    timeout.as_secs_f64()
                );
                return Tried::Failed(Failed(504, message));
            }
        };
        let status = answer.status().as_u16();
        if status == 101 {
            // Upgrade is hop-by-hop and never forwarded, so this switch was not asked
            // for: relayed, the connection would change protocols under the client (and
            // under a front proxy that saw the client's own Upgrade) while the gate goes
            // on reading HTTP.
            self.record(Outcome::Failure, &stats.error);
            return Tried::Failed(Failed(
                502,
                format!("upstream {url} of '{slug}' answered 101 Switching Protocols to a request that asked for no upgrade"),
            ));
        }
        if status >= 500 {
            self.record(Outcome::Failure, &stats.server_error);
        } else {
            self.record(Outcome::Success, &stats.success);
        }
        Tried::Answered(answer)
    }
}
