//! The webhooks' and policy stream's TLS material when no cert-manager issues it: a CA of
//! the installation's own and a serving certificate for the controller's Service, signed
//! by it. The CA goes into the webhook configurations' `caBundle`.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long the generated CA and certificate are valid: rotating them means running
/// `palisade install` again (or using cert-manager).
const VALIDITY: Duration = Duration::days(3650);

/// PEM texts of a generated installation.
pub struct Material {
    /// The CA certificate.
    pub ca: String,
    /// The serving certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

fn params(names: Vec<String>, common_name: &str) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "palisade");
    p.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks behind ours.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + VALIDITY;
    Ok(p)
}

/// The DNS names the controller's Service answers to.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Generates a CA and a serving certificate for `names`.
pub fn generate(names: Vec<String>) -> anyhow::Result<Material> {
    let mut ca_params = params(Vec::new(), "palisade CA")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().context("generating the CA's key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the CA")?;

    let first = names.first().cloned().unwrap_or_default();
    let mut leaf = params(names, &first)?;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().context("generating the serving key")?;
    let cert = leaf
        .signed_by(&key, &ca)
        .context("signing the serving certificate")?;
    Ok(Material {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
