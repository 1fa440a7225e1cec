//! One question in, one message out (or none): the policy around hickory's messages, the
//! same for UDP (`udp.rs`) and TCP (hickory-server's listener).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use super::answer::{self, Found, Reply, Zone};
use super::limit::{Limiter, Verdict};
use super::DnsStats;
use crate::registry::Registry;

/// The largest UDP answer we send, whatever a client's EDNS offers (the DNS flag day 2020
/// size: no IP fragmentation); without EDNS, 512 bytes.
const MAX_UDP_PAYLOAD: u16 = 1232;
/// The size of an OPT record without options (EDNS's own place in an answer).
const OPT_RECORD_SIZE: u16 = 11;

pub struct Handler {
    pub registry: Arc<Registry>,
    pub zone: Zone,
    pub ttl: u32,
    pub limiter: Limiter,
    pub stats: Arc<DnsStats>,
}

/// A message ready to send: its parts, and the room a UDP answer has.
pub struct Prepared {
    metadata: Metadata,
    edns: Option<Edns>,
    answers: Vec<Record>,
    soa: Option<Record>,
    additionals: Vec<Record>,
    room: u16,
}

impl Prepared {
    fn code(metadata: Metadata, code: ResponseCode, edns: Option<Edns>) -> Prepared {
        let mut metadata = metadata;
        metadata.response_code = code;
        Prepared {
            metadata,
            edns,
            answers: Vec::new(),
            soa: None,
            additionals: Vec::new(),
            room: 512,
        }
    }

    fn message<'q>(
        &'q self,
        request: &'q Request,
    ) -> MessageResponse<
        'q,
        'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
    > {
        MessageResponseBuilder::new(&request.queries, self.edns.as_ref()).build(
            self.metadata,
            &self.answers,
            [],
            &self.soa,
            &self.additionals,
        )
    }

    /// The message as bytes for UDP: within the room, whole records only, TC set when an
    /// answer had to be left out (additional records may simply go: RFC 2181, 9).
    /// hickory's own truncation is not used: it leaves the bytes of the record that did not
    /// fit after the message, which strict parsers reject.
    pub fn encode_udp(mut self, request: &Request) -> Option<Vec<u8>> {
        let mut bytes = Vec::with_capacity(512);
        self.message(request)
            .destructive_emit(&mut BinEncoder::new(&mut bytes))
            .ok()?;
        let room = usize::from(self.room)
            + if self.edns.is_some() {
                usize::from(OPT_RECORD_SIZE)
            } else {
                0
            };
        if bytes.len() <= room {
            return Some(bytes);
        }
        let (answers, additionals) = self.fitting(request);
        self.metadata.truncation = answers < self.answers.len();
        self.answers.truncate(answers);
        self.additionals
            .truncate(if self.metadata.truncation { 0 } else { additionals });
        bytes.clear();
        self.message(request)
            .destructive_emit(&mut BinEncoder::new(&mut bytes))
            .ok()?;
        Some(bytes)
    }

    /// How many answers and additional records fit in the room (a trial encoding, without
    /// EDNS, whose place the room already leaves).
    fn fitting(&self, request: &Request) -> (usize, usize) {
        let trial = MessageResponseBuilder::new(&request.queries, None).build(
            self.metadata,
            &self.answers,
            [],
            &self.soa,
            &self.additionals,
        );
        let mut bytes = Vec::with_capacity(usize::from(self.room));
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.room);
        match trial.destructive_emit(&mut encoder) {
            Ok(info) => (
                usize::from(info.counts().answers).min(self.answers.len()),
                usize::from(info.counts().additionals).min(self.additionals.len()),
            ),
            Err(_) => (0, 0),
        }
    }
}

impl Handler {
    /// What to send for `request`, or None to send nothing (a response sent to us, or a UDP
    /// client over its rate).
    pub fn prepare(&self, request: &Request) -> Option<Prepared> {
        if request.metadata.message_type != MessageType::Query {
            return None; // a response sent to us: answering could loop
        }
        let metadata = Metadata::response_from_request(&request.metadata);
        if request.protocol() == Protocol::Udp {
            match self.limiter.check(request.src().ip(), Instant::now) {
                Verdict::Answer => {}
                Verdict::Drop => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Verdict::Truncate => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let mut empty = Prepared::code(metadata, ResponseCode::NoError, None);
                    empty.metadata.truncation = true;
                    return Some(empty);
                }
            }
        }
        let mut room = 512;
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            room = edns.max_payload() - OPT_RECORD_SIZE;
            edns
        });
        if request.edns.as_ref().is_some_and(|asked| asked.version() > 0) {
            return Some(Prepared::code(metadata, ResponseCode::BADVERS, edns));
        }
        let reply = match self.decide(request) {
            Ok(reply) => reply,
            Err(code) => {
                self.count(code, None);
                return Some(Prepared::code(metadata, code, edns));
            }
        };
        self.count(ResponseCode::NoError, Some(reply.found));
        let mut metadata = metadata;
        metadata.authoritative = true;
        if reply.found == Found::NxDomain {
            metadata.response_code = ResponseCode::NXDomain;
        }
        // A negative answer carries the zone's SOA (RFC 2308).
        let soa = (reply.found != Found::Records)
            .then(|| self.zone.soa(self.registry.store.index().unwrap_or(0), self.ttl()));
        Some(Prepared {
            metadata,
            edns,
            answers: reply.answers,
            soa,
            additionals: reply.additionals,
            room,
        })
    }

    fn decide(&self, request: &Request) -> Result<Reply, ResponseCode> {
        match request.metadata.op_code {
            OpCode::Query => {}
            OpCode::Update => return Err(ResponseCode::Refused),
            _ => return Err(ResponseCode::NotImp),
        }
        let query = request.request_info().map_err(|_| ResponseCode::FormErr)?.query;
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) || query.query_class() != DNSClass::IN {
            return Err(ResponseCode::Refused);
        }
        let qname = Name::from(query.name());
        if !self.zone.domain.zone_of(&qname) {
            return Err(ResponseCode::Refused); // not ours, and we do not recurse
        }
        let below = usize::from(qname.num_labels() - self.zone.domain.num_labels());
        let labels: Option<Vec<&str>> = qname.iter().take(below).map(|l| std::str::from_utf8(l).ok()).collect();
        let Some(labels) = labels else {
            return Ok(Reply::nothing(Found::NxDomain));
        };
        answer::reply(&self.registry, &self.zone, &labels, &qname, qtype, self.ttl())
            .map_err(|_| ResponseCode::ServFail)
    }

    /// The TTL: 0 while a cluster replica has not heard from etcd lately (the data port's
    /// staleness rule), so that nobody caches what may be out of date.
    fn ttl(&self) -> u32 {
        if crate::reads::replica_is_stale(&self.registry) {
            0
        } else {
            self.ttl
        }
    }

    fn count(&self, code: ResponseCode, found: Option<Found>) {
        let counter = match (code, found) {
            (_, Some(Found::Records)) => &self.stats.answered,
            (_, Some(Found::NoData)) => &self.stats.nodata,
            (_, Some(Found::NxDomain)) => &self.stats.nxdomain,
            (ResponseCode::Refused | ResponseCode::NotImp, None) => &self.stats.refused,
            _ => &self.stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The header of a message we did not send.
fn unsent(request: &Request) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: Metadata::response_from_request(&request.metadata),
        counts: HeaderCounts::default(),
    })
}

/// TCP, through hickory-server's listener (framing, idle timeout); no truncation there.
#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let Some(prepared) = self.prepare(request) else {
            return unsent(request);
        };
        let sent = response.send_response(prepared.message(request)).await;
        sent.unwrap_or_else(|_| unsent(request))
    }
}
