//! Envoy's external processor as the Gateway API Inference Extension's endpoint picker
//! (`--epp-port`): Envoy's `ext_proc` filter streams each request's headers and body here;
//! we choose the instance with the same selection as `pick` and the proxy (the slug's
//! policy, `least_load` and `prefix` included, the body's `model` and prompt) and answer
//! with `x-gateway-destination-endpoint`: the header carries the chosen `ip:port` (what
//! Envoy's `ORIGINAL_DST` cluster routes by: it takes one address), and the `envoy.lb`
//! dynamic metadata the ordered list `ip:port,ip:port,...` (the choice first, then
//! fallbacks for a gateway's retries). Every instance saturated: an
//! immediate 429 (`Retry-After: 1`); none routable: 503; an unknown slug or model: 404.
//!
//! The slug is the request's `x-registry-slug` header, else the first segment of its path.
//! The stream's gRPC metadata carries a registry token (`authorization`, as on the data
//! port), which must allow viewing the slug's instances. gRPC health
//! (`grpc.health.v1.Health/Check`) answers SERVING.
//!
//! Protocol: request headers answered at once (CONTINUE) when a body follows; the body
//! read whole (`request_body_mode: BUFFERED`), and the decision sent in the body's answer,
//! whose header mutation Envoy applies before the headers go upstream. Everything else
//! (response headers, trailers) is answered CONTINUE. tonic does the gRPC framing over
//! hyper's HTTP/2 server; the messages are in `messages.rs`.

pub mod messages;
mod server;

use std::sync::Arc;

use prost_types::{value::Kind, Struct, Value};

use crate::core::select::{PickRequest, Picked};
use crate::forward::inference::{inference_of, PREFIX_HEADER};
use crate::registry::Registry;
use messages::*;

pub use server::Epp;

/// The header Envoy's `ORIGINAL_DST` cluster routes by (and the dynamic-metadata key).
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// The dynamic-metadata namespace the endpoint goes in.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// The header naming the slug, when the path does not start with it.
pub const SLUG_HEADER: &str = "x-registry-slug";
/// Endpoints offered per request: the choice and fallbacks for Envoy's retries.
const ENDPOINTS: usize = 3;
/// The most of a request body read for its prompt and model.
pub const MAX_BODY: usize = 16 << 20;

/// One request's stream: what its headers said, and its body so far.
#[derive(Default)]
pub struct Exchange {
    slug: String,
    prefix_key: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl Exchange {
    /// Reads the request headers; true when no body follows (decide now).
    pub fn headers(&mut self, headers: &HttpHeaders) -> bool {
        let mut path = "";
        for header in headers.headers.iter().flat_map(|h| h.headers.iter()) {
            match header.key.as_str() {
                ":path" => path = std::str::from_utf8(header.bytes()).unwrap_or(""),
                SLUG_HEADER => self.slug = String::from_utf8_lossy(header.bytes()).into_owned(),
                PREFIX_HEADER => self.prefix_key = Some(header.bytes().to_vec()),
                _ => {}
            }
        }
        if self.slug.is_empty() {
            self.slug = crate::edge::proxied_slug(path).unwrap_or_default().to_owned();
        }
        headers.end_of_stream
    }

    /// Takes a piece of the body; true once it is whole.
    pub fn body(&mut self, piece: &HttpBody) -> bool {
        let room = MAX_BODY.saturating_sub(self.body.len());
        self.body.extend_from_slice(&piece.body[..piece.body.len().min(room)]);
        piece.end_of_stream
    }

    /// The decision for the request as read so far.
    pub fn decide(&self, registry: &Registry) -> Decision {
        let facts = inference_of(&self.body);
        let request = PickRequest {
            slug: &self.slug,
            model: facts.model.as_deref(),
            prefix: self.prefix_key.as_deref().or(facts.prompt),
            ..PickRequest::default()
        };
        let slug = &self.slug;
        match registry.pick(&request) {
            Ok(Picked::Instance(chosen)) => match endpoints(registry, slug, &chosen) {
                Some(list) => Decision::Route(list),
                None => Decision::Refuse(503, format!("instance {} of '{slug}' has no IP address", chosen.id)),
            },
            Ok(Picked::UnknownSlug) => Decision::Refuse(404, format!("no instances are registered for slug '{slug}'")),
            Ok(Picked::NoModel) => Decision::Refuse(
                404,
                format!(
                    "no instance of '{slug}' serves model '{}'",
                    facts.model.unwrap_or_default()
                ),
            ),
            Ok(Picked::NoneRoutable) => Decision::Refuse(503, format!("no healthy instance of '{slug}'")),
            Ok(Picked::Saturated) => Decision::Refuse(429, crate::core::least_load::saturated(slug)),
            Err(e) => Decision::Refuse(503, format!("the registry cannot be read: {e}")),
        }
    }
}

/// What the picker answers for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// `ip:port` endpoints, the chosen one first.
    Route(Vec<String>),
    Refuse(u16, String),
}

/// `ip:port` of an instance (IPv6 in brackets), or None for one registered by host name.
fn endpoint(c: &crate::core::select::Candidate) -> Option<String> {
    match &c.host {
        Some(crate::core::select::Host::Ip(std::net::IpAddr::V6(ip))) => Some(format!("[{ip}]:{}", c.port)),
        Some(crate::core::select::Host::Ip(ip)) => Some(format!("{ip}:{}", c.port)),
        _ => None,
    }
}

/// The chosen instance's endpoint, then other usable instances' (in id order) for retries.
fn endpoints(registry: &Registry, slug: &str, chosen: &crate::core::select::Candidate) -> Option<Vec<String>> {
    let mut out = vec![endpoint(chosen)?];
    if let Ok(candidates) = registry.selector.candidates(&registry.store, slug) {
        let usable = registry.selector.usable(&candidates.all, std::time::Instant::now());
        for c in usable.iter().filter(|c| c.id != chosen.id) {
            if out.len() >= ENDPOINTS {
                break;
            }
            if let Some(e) = endpoint(c) {
                out.push(e);
            }
        }
    }
    Some(out)
}

impl Decision {
    /// The answer to the message that completed the request (`on_body`: the body's
    /// answer, else the headers').
    pub fn response(&self, on_body: bool) -> ProcessingResponse {
        match self {
            Decision::Route(list) => {
                let joined = list.join(",");
                let common = CommonHolder {
                    response: Some(CommonResponse {
                        status: 0,
                        header_mutation: Some(HeaderMutation {
                            set_headers: vec![set_header(DESTINATION_HEADER, &list[0])],
                        }),
                        clear_route_cache: false,
                    }),
                };
                let endpoint = Value {
                    kind: Some(Kind::StringValue(joined)),
                };
                let lb = Struct {
                    fields: [(DESTINATION_HEADER.to_owned(), endpoint)].into(),
                };
                let lb = Value {
                    kind: Some(Kind::StructValue(lb)),
                };
                ProcessingResponse {
                    response: Some(if on_body {
                        Response::RequestBody(common)
                    } else {
                        Response::RequestHeaders(common)
                    }),
                    dynamic_metadata: Some(Struct {
                        fields: [(LB_NAMESPACE.to_owned(), lb)].into(),
                    }),
                }
            }
            Decision::Refuse(status, message) => {
                let mut headers = vec![set_header("content-type", "application/json")];
                if *status == 429 {
                    headers.push(set_header("retry-after", "1"));
                }
                ProcessingResponse {
                    response: Some(Response::ImmediateResponse(ImmediateResponse {
                        status: Some(HttpStatus {
                            code: i32::from(*status),
                        }),
                        headers: Some(HeaderMutation { set_headers: headers }),
                        body: serde_json::json!({ "error": message }).to_string().into_bytes(),
                        details: "registry_svc_endpoint_picker".to_owned(),
                    })),
                    dynamic_metadata: None,
                }
            }
        }
    }
}

/// CONTINUE, for a message the picker does not act on.
pub fn carry_on(request: &Request) -> ProcessingResponse {
    let common = CommonHolder {
        response: Some(CommonResponse::default()),
    };
    let response = match request {
        Request::RequestHeaders(_) => Response::RequestHeaders(common),
        Request::ResponseHeaders(_) => Response::ResponseHeaders(common),
        Request::RequestBody(_) => Response::RequestBody(common),
        Request::ResponseBody(_) => Response::ResponseBody(common),
        Request::RequestTrailers(_) => Response::RequestTrailers(Empty {}),
        Request::ResponseTrailers(_) => Response::ResponseTrailers(Empty {}),
    };
    ProcessingResponse {
        response: Some(response),
        dynamic_metadata: None,
    }
}

/// The registry the picker answers from, with its token check.
pub struct Picker {
    pub registry: Arc<Registry>,
}

impl Picker {
    /// Whether `authorization` may view the instances of `slug`.
    pub fn allows(&self, authorization: Option<&str>, slug: &str) -> bool {
        let Some(caller) = authorization.and_then(|a| self.registry.tokens.caller(&self.registry, a)) else {
            return false;
        };
        caller.allows(crate::roles::INSTANCE_VIEW) && (caller.sees_every_slug() || caller.slug.as_deref() == Some(slug))
    }
}
