//! `requireSNI`: a connection that only `toFQDNs` rules requiring SNI allow must name, in
//! its TLS ClientHello's server name, a name the rule allows and the pod resolved to the
//! address (many names share a CDN's addresses; the address alone says little). Plain
//! HTTP must do the same in each request's `Host` ([`crate::http`] checks those). The
//! ClientHello is read with tls-parser, across as many records as it spans, and replayed
//! to the destination unchanged once the name passes.

use bytes::{Bytes, BytesMut};
use palisade_policy::fqdn;
use palisade_policy::verdict::{decide, Action};
use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, SNIType, TlsExtension,
    TlsMessage, TlsMessageHandshake,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::detect::{detect, Detected};
use crate::flowlog::{Extra, SniEntry};
use crate::http::{self, Version};
use crate::judge::{FlowInfo, Judge};
use crate::metrics;
use crate::splice::reset_on_close;
use crate::tcp;

/// A TLS record's header: type, version, length.
const RECORD_HEADER: usize = 5;
/// The handshake record type.
const HANDSHAKE: u8 = 22;
/// The largest ClientHello read (a handshake message may span records; real ones, with
/// post-quantum key shares, stay under 8 KiB).
const MAX_HELLO: usize = 64 * 1024;

/// Why a ClientHello names no usable server name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The bytes are not a ClientHello.
    #[error("not a TLS ClientHello")]
    NotAClientHello,
    /// The ClientHello is larger than the proxy reads.
    #[error("a ClientHello over {MAX_HELLO} bytes")]
    TooLarge,
    /// It carries no server name.
    #[error("a ClientHello without a server name")]
    Missing,
    /// It carries several, or one that is not a DNS name.
    #[error("a ClientHello whose server name is ambiguous or not a DNS name")]
    Invalid,
}

/// The server name of a ClientHello handshake message (its type, length and body),
/// normalized (see [`fqdn::normalize`]).
pub fn server_name(handshake: &[u8]) -> Result<String, SniError> {
    let (_, message) =
        parse_tls_message_handshake(handshake).map_err(|_| SniError::NotAClientHello)?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = message else {
        return Err(SniError::NotAClientHello);
    };
    let ext = hello.ext.ok_or(SniError::Missing)?;
    let (_, extensions) =
        parse_tls_client_hello_extensions(ext).map_err(|_| SniError::NotAClientHello)?;
    let mut names = extensions.iter().filter_map(|e| match e {
        TlsExtension::SNI(list) => Some(list),
        _ => None,
    });
    let list = names.next().ok_or(SniError::Missing)?;
    if names.next().is_some() {
        return Err(SniError::Invalid);
    }
    let [(SNIType::HostName, name)] = list[..] else {
        return Err(if list.is_empty() {
            SniError::Missing
        } else {
            SniError::Invalid
        });
    };
    let name = std::str::from_utf8(name).map_err(|_| SniError::Invalid)?;
    fqdn::NamePattern::name(name).map_err(|_| SniError::Invalid)?;
    Ok(fqdn::normalize(name))
}

/// Reads the whole ClientHello handshake message from `read` (bytes already read) and
/// `stream`: the message, and every byte read, to replay to the destination.
async fn read_hello(read: Bytes, stream: &mut TcpStream) -> Result<(Vec<u8>, BytesMut), SniError> {
    let mut buf = BytesMut::from(&read[..]);
    let mut handshake = Vec::new();
    let mut at = 0;
    loop {
        // Each complete record's payload joins the handshake message.
        while buf.len() >= at + RECORD_HEADER {
            let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
            if buf[at] != HANDSHAKE || buf.len() < at + RECORD_HEADER + len {
                break;
            }
            handshake.extend_from_slice(&buf[at + RECORD_HEADER..at + RECORD_HEADER + len]);
            at += RECORD_HEADER + len;
        }
        if handshake.len() >= 4 {
            let want = 4
                + ((usize::from(handshake[1]) << 16)
                    | (usize::from(handshake[2]) << 8)
                    | usize::from(handshake[3]));
            if want > MAX_HELLO {
                return Err(SniError::TooLarge);
            }
            if handshake.len() >= want {
                handshake.truncate(want);
                return Ok((handshake, buf));
            }
        }
        if buf.len() >= at + RECORD_HEADER && buf[at] != HANDSHAKE {
            return Err(SniError::NotAClientHello);
        }
        if buf.len() > MAX_HELLO + RECORD_HEADER * 16 {
            return Err(SniError::TooLarge);
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(SniError::NotAClientHello),
            Ok(_) => {}
        }
    }
}

/// Serves a connection that only rules requiring SNI allow: a ClientHello naming an
/// allowed name resolved to the address is relayed; plain HTTP is inspected request by
/// request for its `Host`; anything else is refused.
pub async fn serve(judge: &Judge, flow: FlowInfo, client: TcpStream) {
    let limits = &judge.config().http;
    let (detected, stream) = match detect(client, limits.detect_timeout).await {
        Ok(d) => d,
        Err(e) => {
            refuse(judge, &flow, None, &format!("it sent no ClientHello ({e})"));
            return;
        }
    };
    let (hello, client) = match detected {
        Detected::Tls(hello) => (hello, stream),
        Detected::Http1 => {
            return http::serve_detected(judge, flow, Version::Http1, stream, true).await
        }
        Detected::Http2 => {
            return http::serve_detected(judge, flow, Version::Http2, stream, true).await
        }
        Detected::Other => {
            let (_, client) = stream.into_parts();
            refuse(
                judge,
                &flow,
                None,
                "it sent neither a TLS ClientHello nor HTTP",
            );
            reset_on_close(&client);
            return;
        }
    };
    drop(hello);
    let (read, mut inner) = client.into_parts();
    let (handshake, replay) =
        match tokio::time::timeout(limits.detect_timeout, read_hello(read, &mut inner)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                refuse(judge, &flow, None, &e.to_string());
                reset_on_close(&inner);
                return;
            }
            Err(_) => {
                refuse(
                    judge,
                    &flow,
                    None,
                    "its ClientHello did not arrive within the wait",
                );
                reset_on_close(&inner);
                return;
            }
        };
    let name = match server_name(&handshake) {
        Ok(n) => n,
        Err(e) => {
            refuse(judge, &flow, None, &e.to_string());
            reset_on_close(&inner);
            return;
        }
    };
    let Some(snapshot) = judge.state().current() else {
        reset_on_close(&inner);
        return;
    };
    let named = flow.as_flow().only_name(&name);
    let verdict = decide(&snapshot.policy, &named);
    if verdict.action == Action::Deny {
        let resolved = flow.as_flow().names.iter().any(|n| **n == *name);
        refuse(
            judge,
            &flow,
            Some(&name),
            &if resolved {
                format!(
                    "its server name {} is not a name the rule allows",
                    fqdn::display(&name)
                )
            } else {
                format!(
                    "its server name {} was not resolved to {} by the pod",
                    fqdn::display(&name),
                    flow.dst.ip()
                )
            },
        );
        reset_on_close(&inner);
        return;
    }
    ::metrics::counter!(metrics::SNI_CHECKS, "action" => verdict.action.as_str()).increment(1);
    let mut upstream = match tcp::connect(judge, flow.dst).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(dst = %flow.dst, error = %e, "cannot reach the destination");
            reset_on_close(&inner);
            return;
        }
    };
    if let Err(e) = upstream.write_all(&replay).await {
        tracing::debug!(dst = %flow.dst, error = %e, "cannot replay the ClientHello");
        reset_on_close(&inner);
        return;
    }
    // From here on the connection is judged as naming `name` only.
    let flow = flow.with_only_name(&name);
    tcp::relay(judge, &flow, verdict.action, true, inner, upstream).await;
}

/// Logs and counts a connection refused for its server name.
fn refuse(judge: &Judge, flow: &FlowInfo, sni: Option<&str>, why: &str) {
    ::metrics::counter!(metrics::SNI_CHECKS, "action" => "deny").increment(1);
    judge.log_refusal(
        flow,
        if sni.is_some() {
            "sni-not-allowed"
        } else {
            "no-sni"
        },
        format!(
            "only rules requiring SNI allow connections to {} through the names it was resolved \
             from, and {why}; refused",
            flow.dst.ip()
        ),
        Some(Extra::Sni(SniEntry {
            sni: sni.map(fqdn::display),
        })),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message with these extensions (type, data).
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut ext = Vec::new();
        for (t, data) in extensions {
            ext.extend(t.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn sni(names: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for n in names {
            list.push(0);
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (0, data)
    }

    #[test]
    fn the_server_name_is_read_and_normalized() {
        let h = hello(&[(10, vec![0, 2, 0, 29]), sni(&["API.Example.com"])]);
        assert_eq!(server_name(&h), Ok("api.example.com.".to_owned()));
    }

    #[test]
    fn missing_several_or_bad_names_are_refused() {
        assert_eq!(server_name(&hello(&[])), Err(SniError::Missing));
        assert_eq!(server_name(&hello(&[sni(&[])])), Err(SniError::Missing));
        assert_eq!(
            server_name(&hello(&[sni(&["a.example", "b.example"])])),
            Err(SniError::Invalid)
        );
        assert_eq!(
            server_name(&hello(&[sni(&["a.example"]), sni(&["b.example"])])),
            Err(SniError::Invalid)
        );
        assert_eq!(
            server_name(&hello(&[sni(&["a b.example"])])),
            Err(SniError::Invalid)
        );
        assert_eq!(
            server_name(b"\x02\x00\x00\x00"),
            Err(SniError::NotAClientHello)
        );
        assert_eq!(server_name(b""), Err(SniError::NotAClientHello));
    }

    #[tokio::test]
    async fn a_hello_split_across_records_is_read_whole() {
        let h = hello(&[sni(&["split.example"])]);
        let (a, b) = h.split_at(20);
        let mut wire = Vec::new();
        for part in [a, b] {
            wire.extend([HANDSHAKE, 3, 1]);
            wire.extend((part.len() as u16).to_be_bytes());
            wire.extend(part);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (first, rest) = wire.split_at(30);
        let rest = rest.to_vec();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&rest).await.unwrap();
            s
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let (got, replay) = read_hello(Bytes::copy_from_slice(first), &mut server)
            .await
            .unwrap();
        assert_eq!(got, h);
        assert_eq!(&replay[..], &wire[..]);
        assert_eq!(server_name(&got), Ok("split.example.".to_owned()));
        drop(writer.await);
    }
}
