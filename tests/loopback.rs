//! The relay on real loopback sockets with real TLS handshakes.

mod support;

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use support::client::{Client, send_data, tls_session};
use support::harness::{Harness, TLS_SECTION};
use support::message::{message_of_size, strip_received};
use support::pki::HOSTNAME;

const FROM: &str = "sender@tenant.example";
const TO: &str = "rcpt@partner.example";

#[tokio::test]
async fn plaintext_mail_is_refused_then_starttls_delivers_to_the_spool() {
    let h = Harness::new("");
    let relay = h.start().await;
    let mut c = relay.connect().await;
    c.hello().await;
    c.cmd(&format!("MAIL FROM:<{FROM}>"), "530 5.7.0").await;
    let mut c = c.starttls(&h.ca).await;
    let body = b"From: <sender@tenant.example>\r\nTo: <rcpt@partner.example>\r\nSubject: loopback\r\n\r\n.a line with a dot\r\n\xe2\x82\xac 8-bit\r\n";
    // Dot-stuffed on the wire (RFC 5321 §4.5.2), unstuffed in the spool.
    let stuffed = std::str::from_utf8(body)
        .unwrap()
        .replace("\r\n.", "\r\n..");
    let r = send_data(&mut c, FROM, &[TO], stuffed.as_bytes()).await;
    assert_eq!(r.status(), "250 2.0.0");
    c.cmd("QUIT", "221").await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    assert_eq!(strip_received(&spooled[0].1), body);
    let received = &spooled[0].1[..spooled[0].1.len() - body.len()];
    assert_eq!(
        String::from_utf8_lossy(received)
            .matches("Received:")
            .count(),
        1
    );
    relay.stop().await;
}

#[tokio::test]
async fn bdat_in_several_chunks_over_tls() {
    let h = Harness::new("");
    let relay = h.start().await;
    let c = relay.connect().await;
    let mut c = tls_session(c, &h.ca).await;
    let message = message_of_size(200_000);
    c.cmd(&format!("MAIL FROM:<{FROM}> SIZE={}", message.len()), "250")
        .await;
    c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
    let chunks: Vec<&[u8]> = message.chunks(65_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        c.send(format!("BDAT {}{last}\r\n", chunk.len())).await;
        c.send(chunk).await;
        c.expect("250 2.0.0").await;
    }
    assert_eq!(strip_received(&h.spooled()[0].1), &message[..]);
    relay.stop().await;
}

#[tokio::test]
async fn smuggled_end_of_data_variants_stay_one_message() {
    let h = Harness::new("");
    let relay = h.start().await;
    let c = relay.connect().await;
    let mut c = tls_session(c, &h.ca).await;
    let variants: [&[u8]; 6] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r\n.\r\r\n",
        b"\r\n\x00.\r\n",
        b"\r\n.\n",
    ];
    for v in variants {
        // The smuggled transaction is sent in the same write as the real end.
        let mut body = b"Subject: outer\r\n\r\ntext".to_vec();
        body.extend_from_slice(v);
        body.extend_from_slice(
            b"MAIL FROM:<ceo@tenant.example>\r\nRCPT TO:<victim@partner.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nhi\r\n.\r\n",
        );
        c.cmd(&format!("MAIL FROM:<{FROM}>"), "250").await;
        c.cmd(&format!("RCPT TO:<{TO}>"), "250").await;
        c.cmd("DATA", "354").await;
        c.send(&body).await;
        // One 250 for the whole thing (the smuggled "." ended it), and nothing more.
        c.expect("250 2.0.0").await;
        c.cmd("NOOP", "250 2.0.0 Ok").await;
    }
    let spooled = h.spooled();
    assert_eq!(spooled.len(), variants.len());
    for (env, _) in &spooled {
        assert_eq!(env.sender, FROM);
        assert_eq!(env.recipients[0].address, TO);
    }
    relay.stop().await;
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_never_runs() {
    let h = Harness::plain("");
    let relay = h.start().await;
    let mut c = relay.connect().await;
    c.hello().await;
    c.send(format!(
        "STARTTLS\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\nDATA\r\nSubject: injected\r\n\r\n.\r\n"
    ))
    .await;
    c.expect("554 5.5.0").await;
    assert!(c.closed().await);
    assert_eq!(h.spool_files(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn implicit_tls_listener_greets_inside_tls() {
    let h = Harness::with_listeners(
        "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
        "",
    );
    let relay = h.start().await;
    let tcp = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(h.ca.client_config())
        .connect(ServerName::try_from("relay.test").unwrap(), tcp)
        .await
        .unwrap();
    let mut c = Client::new(tls);
    let ehlo = c.hello().await;
    assert!(!ehlo.text().contains("STARTTLS"));
    let r = send_data(&mut c, FROM, &[TO], b"Subject: 465\r\n\r\nx\r\n").await;
    assert_eq!(r.status(), "250 2.0.0");
    relay.stop().await;
}

/// A client-side verifier that records the server's chain and offers only
/// the signature schemes it is given (to play an RSA-only or ECDSA client).
#[derive(Debug)]
struct Recorder {
    schemes: Vec<SignatureScheme>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap() = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &smarthost::tls::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &smarthost::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Handshakes with the given provider, versions and schemes; returns the chain seen.
async fn handshake(
    addr: std::net::SocketAddr,
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
    schemes: Vec<SignatureScheme>,
    name: ServerName<'static>,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    let recorder = Arc::new(Recorder {
        schemes,
        chain: Mutex::new(Vec::new()),
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let mut c = Client::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    c.hello().await;
    c.cmd("STARTTLS", "220").await;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, c.stream)
        .await?;
    let mut c = Client::new(tls);
    c.cmd("EHLO client.test", "250").await;
    c.cmd("QUIT", "221").await;
    Ok(recorder.chain.lock().unwrap().clone())
}

const ECDSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
];
const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

fn pem_chain(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

#[tokio::test]
async fn windows_2012_r2_style_tls12_ecdsa_p256_without_sni() {
    let h = Harness::new("");
    let relay = h.start().await;
    // Exchange on Windows Server 2012 R2: TLS 1.2, ECDHE-ECDSA-AES128-GCM-SHA256,
    // P-256 only (X25519 disabled), and it connects by IP (no SNI).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP256R1];
    let chain = handshake(
        relay.addr(),
        provider,
        &[&rustls::version::TLS12],
        ECDSA_SCHEMES.to_vec(),
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .await
    .expect("TLS 1.2 ECDHE-ECDSA handshake");
    // The full chain is sent: leaf and CA.
    let expected = pem_chain(&format!("{}{}", h.ca.cert_pem, h.ca.ca_pem));
    assert_eq!(chain, expected);
    // P-384 alone works too.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP384R1];
    handshake(
        relay.addr(),
        provider,
        &[&rustls::version::TLS13],
        ECDSA_SCHEMES.to_vec(),
        ServerName::try_from("relay.test").unwrap(),
    )
    .await
    .expect("TLS 1.3 with P-384");
    relay.stop().await;
}

#[tokio::test]
async fn rsa_and_ecdsa_certificates_are_chosen_per_client_hello() {
    let h = Harness::new("");
    let (rsa_cert, rsa_key) = h.ca.rsa_certificate(h.dir.path());
    h.edit_config(
        "private_key = \"server.key\"\n",
        &format!(
            "private_key = \"server.key\"\n\n[[tls.additional]]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            rsa_cert.display(),
            rsa_key.display()
        ),
    );
    let relay = h.start().await;
    let default = rustls::crypto::ring::default_provider;
    let name = || ServerName::try_from("relay.test").unwrap();
    let both = [ECDSA_SCHEMES, RSA_SCHEMES].concat();
    let ecdsa_leaf = pem_chain(&h.ca.cert_pem)[0].clone();
    let rsa_leaf = pem_chain(&std::fs::read_to_string(&rsa_cert).unwrap())[0].clone();
    let tls13 = [&rustls::version::TLS13];
    let chain = handshake(relay.addr(), default(), &tls13, both.clone(), name()).await;
    assert_eq!(chain.unwrap()[0], ecdsa_leaf, "ECDSA preferred");
    let chain = handshake(
        relay.addr(),
        default(),
        &tls13,
        RSA_SCHEMES.to_vec(),
        name(),
    )
    .await;
    assert_eq!(chain.unwrap()[0], rsa_leaf, "RSA-only client gets RSA");
    let tls12 = [&rustls::version::TLS12];
    let chain = handshake(
        relay.addr(),
        default(),
        &tls12,
        RSA_SCHEMES.to_vec(),
        name(),
    )
    .await;
    assert_eq!(chain.unwrap()[0], rsa_leaf, "TLS 1.2 RSA");
    relay.stop().await;
}

#[tokio::test]
async fn without_a_tls_section_a_self_signed_ecdsa_certificate_is_made() {
    let h = Harness::new("");
    h.edit_config(TLS_SECTION, "");
    assert!(h.config().tls.is_none());
    let relay = h.start().await;
    let chain = handshake(
        relay.addr(),
        rustls::crypto::ring::default_provider(),
        &[&rustls::version::TLS12],
        ECDSA_SCHEMES.to_vec(),
        ServerName::try_from("relay.test").unwrap(),
    )
    .await
    .expect("handshake with the self-signed certificate");
    assert_eq!(chain.len(), 1);
    // An ECDSA-only client succeeded, so the key is ECDSA; and it names us.
    assert!(
        chain[0]
            .windows(HOSTNAME.len())
            .any(|w| w == HOSTNAME.as_bytes())
    );
    relay.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_get_421() {
    let h = Harness::new("[limits]\nmax_connections = 2\n");
    let relay = h.start().await;
    let mut a = relay.connect().await;
    a.hello().await;
    let mut b = relay.connect().await;
    b.hello().await;
    let mut c = relay.connect().await;
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
    a.cmd("QUIT", "221").await;
    assert!(a.closed().await);
    // The slot is free again once the first session has ended.
    let mut d = None;
    for _ in 0..50 {
        let mut c = relay.connect().await;
        if c.reply().await.code == 220 {
            d = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    d.expect("a slot frees up")
        .cmd("EHLO x.example", "250")
        .await;
    b.cmd("NOOP", "250").await;
    relay.stop().await;
}

#[tokio::test]
async fn stopping_sends_421_to_idle_sessions_and_returns() {
    let h = Harness::new("");
    let relay = h.start().await;
    let mut c = relay.connect().await;
    c.hello().await;
    let addr = relay.addr();
    relay.shutdown.cancel();
    c.expect("421 4.3.2").await;
    assert!(c.closed().await);
    tokio::time::timeout(std::time::Duration::from_secs(10), relay.task)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
