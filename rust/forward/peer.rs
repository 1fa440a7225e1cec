//! Phase 2, the upstream peer: the instance the selector picks (never one already tried),
//! its URL in parts, and the network fence on the way to it (the connector's resolver).

use super::*;

/// Why the fence did not let a connection be made (its message is the reason).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The connector's resolver: a host name becomes the addresses the network fence allows,
/// and the connection goes to exactly those (never to a second resolution of the name).
#[derive(Clone)]
pub(crate) struct Fenced(pub(crate) Arc<NetPolicy>);

impl tower_service::Service<Name> for Fenced {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            // The port is set by the connector from the URL.
            match policy.resolve(name.as_str(), 0).await {
                Ok(address) => Ok(vec![address].into_iter()),
                Err(why) => Err(io::Error::new(io::ErrorKind::PermissionDenied, Refused(why))),
            }
        })
    }
}

pub type Connector = HttpsConnector<HttpConnector<Fenced>>;

/// TLS to upstreams: rustls with ring, the system's CA certificates as roots.
pub(crate) fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert); // one unreadable certificate does not spoil the others
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The instance for the next attempt (tracked as in flight), never one already `tried`;
/// the answer for the client when there is none.
pub(crate) fn choose(
    registry: &Registry,
    request: &Outgoing<'_>,
    tried: &[String],
    last_error: &str,
) -> Result<Arc<Candidate>, Failed> {
    let slug = request.slug;
    let pick = PickRequest {
        slug,
        track: true,
        exclude: tried,
        model: request.model,
        prefix: request.prompt,
        ..PickRequest::default()
    };
    match registry.pick(&pick) {
        Ok(Picked::Instance(chosen)) => Ok(chosen),
        Ok(Picked::UnknownSlug) if tried.is_empty() => {
            let path = request.target.split('?').next().unwrap_or_default();
            Err(Failed(
                404,
                format!(
                    "no route for {} {path}, and no registered service '{slug}'",
                    request.method
                ),
            ))
        }
        Ok(Picked::UnknownSlug) => Err(Failed(502, last_error.to_owned())),
        Ok(Picked::NoneRoutable) => Err(Failed(503, format!("no healthy instance of '{slug}'"))),
        Ok(Picked::NoModel) => Err(Failed(
            404,
            format!(
                "no instance of '{slug}' serves model '{}'",
                request.model.unwrap_or_default()
            ),
        )),
        Ok(Picked::Saturated) => Err(Failed(429, crate::core::least_load::saturated(slug))),
        Err(e) => Err(Failed(503, format!("the registry cannot be read: {e}"))),
    }
}
