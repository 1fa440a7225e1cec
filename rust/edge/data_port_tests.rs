//! The data port's gate: its shared port, and what it serves and refuses.

use super::*;

#[test]
fn data_ports_share_their_port_and_refuse_what_they_do_not_serve() {
    let up = upstream();
    let first = gate_on("127.0.0.1:0".parse().unwrap(), &up, Role::Data).unwrap();
    // A second data gate (another process of the same server) joins the port.
    let second = gate_on(first.local_addr(), &up, Role::Data).unwrap();
    // The API port's gate does not share.
    assert!(gate_on(first.local_addr(), &up, Role::Api).is_err());
    let (out, closed) = exchange(&second, b"GET /registry-svc/tokens HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 404 ") && closed, "{out}");
    assert!(out.contains("not served on the data port"), "{out}");
    // Reads the gate declines go on to the workers, as on the API port.
    let (out, _) = exchange(
        &first,
        b"GET /registry-svc/instances?slug=a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
}

#[test]
fn the_data_port_serves_reads_health_and_the_proxy_only() {
    assert_eq!(data_port_refusal("GET", "/registry-svc/instances?slug=a", 0), None);
    assert_eq!(data_port_refusal("HEAD", "/registry-svc/instance/i-1", 0), None);
    assert_eq!(data_port_refusal("GET", "/registry-svc/instance/pick?slug=a", 0), None);
    assert_eq!(data_port_refusal("GET", "/health", 0), None);
    assert_eq!(data_port_refusal("POST", "/orders/new", 0), None); // the proxy
    assert_eq!(
        data_port_refusal("DELETE", "/registry-svc/instance/i-1", 0)
            .unwrap()
            .status,
        405
    );
    for path in [
        "/registry-svc/definitions",
        "/registry-svc/instance/i-1/heartbeat",
        "/metrics",
        "/v3/discovery:clusters",
    ] {
        assert_eq!(data_port_refusal("GET", path, 0).unwrap().status, 404, "{path}");
    }
    // A write is a 405 wherever it goes, naming the API port.
    let write = data_port_refusal("POST", "/registry-svc/tokens", 11337).unwrap();
    assert_eq!(write.status, 405);
    assert!(write.message.ends_with("use the API port (11337)"), "{}", write.message);
}
