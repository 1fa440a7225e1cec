//! The UDP side: threads blocking on a socket each (SO_REUSEPORT), answering in place (no task per
//! question, no channel to a sending task), questions and answers moved in batches. The
//! question is parsed and the answer encoded by hickory; the policy is `handler.rs`'s.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;

use super::handler::Handler;

/// The largest question answered; a longer datagram gets FORMERR.
const MAX_QUESTION: usize = 4096;
/// How often a blocked thread looks whether the server is stopping.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// A thread answering on each of `sockets` until `stop` is set.
pub fn serve(
    sockets: Vec<UdpSocket>,
    handler: &Arc<Handler>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    sockets
        .into_iter()
        .map(|socket| {
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(STOP_CHECK))?;
            let (handler, stop) = (Arc::clone(handler), Arc::clone(stop));
            std::thread::Builder::new()
                .name("registry-dns-udp".into())
                .spawn(move || answer_loop(&socket, &handler, &stop))
        })
        .collect()
}

/// Questions read and answers sent per system call (recvmmsg, sendmmsg, as NSD does):
/// on loopback the calls, not the answering, are most of the cost.
const BATCH: usize = 32;

fn answer_loop(socket: &UdpSocket, handler: &Handler, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let mut answers: Vec<(usize, Vec<u8>)> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        // The stop check's timeout, or an ICMP error from an earlier send: read again.
        let Some(count) = batch.receive(fd) else { continue };
        answers.clear();
        for i in 0..count {
            let (question, source) = batch.question(i);
            let Some(source) = source else { continue };
            // A bug that panics costs its question, not the socket: this thread is the
            // only reader of its share of the clients.
            let answered = std::panic::catch_unwind(AssertUnwindSafe(|| match question {
                Some(question) => answer(handler, question, source),
                None => malformed(&batch.buffers[i]), // over the size limit
            }));
            match answered {
                Ok(Some(bytes)) => answers.push((i, bytes)),
                Ok(None) => {}
                Err(_) => {
                    handler.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        batch.send(fd, &answers);
    }
}

/// The buffers of one batch: questions, their sources, and the kernel's headers for both
/// directions. Each header points into these vectors, which never grow after `new`.
struct Batch {
    buffers: Vec<[u8; MAX_QUESTION]>,
    sources: Vec<libc::sockaddr_storage>,
    lengths: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        Batch {
            buffers: vec![[0u8; MAX_QUESTION]; BATCH],
            sources: vec![zero_storage; BATCH],
            lengths: vec![0; BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            headers: vec![zero_header; BATCH],
        }
    }

    /// Blocks for at least one question; how many arrived, None on a timeout or error.
    fn receive(&mut self, fd: i32) -> Option<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i].as_mut_ptr().cast(),
                iov_len: MAX_QUESTION,
            };
            let header = &mut self.headers[i];
            // SAFETY: as in `new`.
            header.msg_hdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = (&raw mut self.sources[i]).cast();
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &raw mut self.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_len = 0;
        }
        // SAFETY: every header points at a buffer, iovec and address of this batch, alive
        // and not moved for the call; the kernel writes within the lengths given.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let count = usize::try_from(count).ok().filter(|n| *n > 0)?;
        for i in 0..count {
            self.lengths[i] = self.headers[i].msg_hdr.msg_namelen;
        }
        Some(count)
    }

    /// The `i`th question received (None when it was longer than `MAX_QUESTION`), and
    /// where it came from.
    fn question(&self, i: usize) -> (Option<&[u8]>, Option<SocketAddr>) {
        let header = &self.headers[i];
        let length = (header.msg_len as usize).min(MAX_QUESTION);
        let whole = header.msg_hdr.msg_flags & libc::MSG_TRUNC == 0;
        (whole.then(|| &self.buffers[i][..length]), socket_addr(&self.sources[i]))
    }

    /// Sends each answer to the source of its question.
    fn send(&mut self, fd: i32, answers: &[(usize, Vec<u8>)]) {
        for (k, (i, bytes)) in answers.iter().enumerate() {
            self.iovecs[k] = libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            };
            let header = &mut self.headers[k];
            // SAFETY: as in `new`.
            header.msg_hdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = (&raw mut self.sources[*i]).cast();
            header.msg_hdr.msg_namelen = self.lengths[*i];
            header.msg_hdr.msg_iov = &raw mut self.iovecs[k];
            header.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < answers.len() {
            // SAFETY: the headers point at the answers' bytes (alive for the call, only
            // read) and at this batch's addresses.
            let done =
                unsafe { libc::sendmmsg(fd, self.headers[sent..].as_mut_ptr(), (answers.len() - sent) as u32, 0) };
            // An error belongs to the first unsent answer: skip it, send the rest.
            sent += usize::try_from(done).ok().filter(|n| *n > 0).unwrap_or(1);
        }
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let v4 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let v6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn answer(handler: &Handler, raw: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    let ip = source.ip();
    if source.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
        return None; // nowhere to answer to
    }
    match Request::from_bytes(raw.to_vec(), source, Protocol::Udp) {
        Ok(request) => handler.prepare(&request)?.encode_udp(&request),
        Err(_) => malformed(raw),
    }
}

/// FORMERR for a question whose header reads but whose rest does not (as hickory-server
/// answers on TCP); nothing for what has no header, or is itself a response.
fn malformed(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return None;
    }
    let mut answer = vec![0u8; 12];
    answer[..2].copy_from_slice(&raw[..2]);
    answer[2] = 0x80 | (raw[2] & 0x79); // QR, the opcode and RD kept
    answer[3] = 1; // FORMERR
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_question_gets_formerr_with_its_id_and_a_response_nothing() {
        let answer = malformed(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab").unwrap();
        assert_eq!(answer, b"\x12\x34\x81\x01\x00\x00\x00\x00\x00\x00\x00\x00");
        assert!(malformed(b"\x12\x34\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab").is_none());
        assert!(malformed(b"\x12\x34").is_none());
    }
}
