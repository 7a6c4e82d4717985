//! The cluster's public key infrastructure: who a manager or a node is, proven by a
//! certificate of the cluster's own CA.
//!
//! - [`Authority`]: the CA (ECDSA P-256, 10 years), created by the first manager and kept in
//!   its store, so every manager of a highly available cluster signs with the same one. It
//!   signs a node's CSR taking **only the public key** from it: the names, role and lifetime
//!   are the manager's decision, so no CSR can ask for a manager's certificate.
//! - [`Identity`]: what a certificate says its holder is. Managers carry the DNS name
//!   [`MANAGER_NAME`], nodes [`NODE_NAME`]; peers verify the chain and that name instead of
//!   an address (a node's address is its own to advertise, and a manager is reached at many).
//! - [`JoinToken`]: `CUBE-1-<CA digest>-<secret>`, Swarm's idea: the digest pins the CA a
//!   joining worker must find, the secret admits it.
//! - [`renewal_at`]: when a certificate is renewed, a random point between 50 % and 80 % of
//!   its life, so workers joined together do not renew together.
//!
//! No clock is read here: the caller passes `now`. Keys and secrets come from the OS's random
//! generator (through rcgen's and ring's).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The DNS name in every manager's certificate, which nodes verify.
pub const MANAGER_NAME: &str = "manager.cube";
/// The DNS name in every node's certificate, which managers verify.
pub const NODE_NAME: &str = "node.cube";

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are issued, so a peer whose clock is a little
/// behind accepts them at once.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// The version of the join token's format.
const TOKEN_PREFIX: &str = "CUBE-1-";
/// Bytes of a join secret: 160 bits.
const SECRET_BYTES: usize = 20;

/// What went wrong with a certificate, key, request or token.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not make, sign or parse something.
    #[error("cannot {what}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM text holds no certificate.
    #[error("no certificate in the PEM text")]
    NoCertificate,
    /// A PEM text could not be read.
    #[error("cannot read the PEM text")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// A certificate could not be parsed.
    #[error("cannot parse the certificate")]
    Parse,
    /// A certificate names neither a manager nor a node of a Cube cluster.
    #[error("the certificate names no Cube manager or node")]
    NoIdentity,
    /// A join token is not `CUBE-1-<digest>-<secret>`.
    #[error("not a Cube join token (expected CUBE-1-<CA digest>-<secret>)")]
    BadToken,
    /// The OS's random generator failed.
    #[error("the random generator failed")]
    Random,
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A manager, by its name.
    Manager(String),
    /// A node, by its id.
    Node(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Manager(name) => write!(f, "manager {name}"),
            Self::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// The SHA-256 digest of a CA certificate (its DER form): what a join token pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaDigest([u8; 32]);

impl CaDigest {
    /// The digest of the certificate `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

impl CaDigest {
    /// The digest of the first certificate of a PEM text, if it holds one.
    pub fn of_pem(pem: &str) -> Option<Self> {
        CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|der| Self::of(&der))
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

/// A certificate with its private key, in PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedCert(<key redacted>)")
    }
}

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
    /// The SHA-256 digest of the public key it certifies (hex): a node keeps its key, so a
    /// manager can tell that a re-enrolling node is the one that held the id before.
    pub key_digest: String,
}

/// The cluster's certificate authority.
pub struct Authority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    cluster: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

fn serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
    // A positive integer: DER serials are signed.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

impl Authority {
    /// A new CA for `cluster`, valid from `now` for ten years.
    pub fn create(cluster: &str, now: SystemTime) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen("generate the CA's key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("Cube CA ({cluster})"));
        name.push(DnType::OrganizationName, cluster);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key).map_err(rcgen("sign the CA's certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
            cluster: cluster.to_owned(),
        })
    }

    /// The CA as stored: its certificate and key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(PkiError::Pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(rcgen("read the CA's key"))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|_| PkiError::Parse)?;
        let cluster = parsed
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Self { cert_pem: cert_pem.to_owned(), cert_der, key, cluster })
    }

    /// The CA's certificate (PEM): what every peer trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM), to store.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The digest a join token pins.
    pub fn digest(&self) -> CaDigest {
        CaDigest::of(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(rcgen("read the CA"))
    }

    fn params(
        &self,
        identity: &Identity,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        let (cn, unit, dns) = match identity {
            Identity::Manager(n) => (n.as_str(), "manager", MANAGER_NAME),
            Identity::Node(id) => (id.as_str(), "node", NODE_NAME),
        };
        name.push(DnType::CommonName, cn);
        name.push(DnType::OrganizationalUnitName, unit);
        name.push(DnType::OrganizationName, self.cluster.as_str());
        params.distinguished_name = name;
        params.subject_alt_names =
            vec![SanType::DnsName(dns.try_into().map_err(rcgen("name the certificate"))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(serial()?);
        Ok(params)
    }

    /// Signs a certificate for `identity` valid for `lifetime` from `now`, for the public key
    /// of `csr_pem` (whose signature is checked). Nothing else of the request is used.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rcgen("read the certificate request"))?;
        let key_digest = key_digest(request.public_key.der_bytes());
        let params = self.params(identity, now, lifetime)?;
        let signed = CertificateSigningRequestParams { params, public_key: request.public_key }
            .signed_by(&self.issuer()?)
            .map_err(rcgen("sign the certificate"))?;
        Ok(Issued { cert_pem: signed.pem(), not_after: now + lifetime, key_digest })
    }

    /// A new key and a certificate for it (a manager's own).
    pub fn issue(
        &self,
        identity: &Identity,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<KeyedCert, PkiError> {
        let key = new_key()?;
        let cert = self
            .params(identity, now, lifetime)?
            .signed_by(&key, &self.issuer()?)
            .map_err(rcgen("sign the certificate"))?;
        Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The digest of the key a certificate request (PEM) is for, its signature checked, as
/// [`Issued::key_digest`] has it.
pub fn request_key_digest(csr_pem: &str) -> Result<String, PkiError> {
    let request = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(rcgen("read the certificate request"))?;
    Ok(key_digest(request.public_key.der_bytes()))
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen("generate a key"))
}

fn key_digest(public_key: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, public_key).as_ref())
}

/// A node's key, kept for the node's life (its certificates change, its key does not), and
/// the certificate requests made with it.
pub struct NodeKey(KeyPair);

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// A new key.
    pub fn generate() -> Result<Self, PkiError> {
        new_key().map(Self)
    }

    /// The key as stored (PKCS#8 PEM).
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        KeyPair::from_pem(pem).map(Self).map_err(rcgen("read the node's key"))
    }

    /// The key to store (PKCS#8 PEM).
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// A certificate request for this key (PEM); the CA decides what it certifies.
    pub fn request(&self) -> Result<String, PkiError> {
        CertificateParams::default()
            .serialize_request(&self.0)
            .and_then(|csr| csr.pem())
            .map_err(rcgen("make a certificate request"))
    }

    /// The digest of its public key, as [`Issued::key_digest`] has it.
    pub fn digest(&self) -> String {
        key_digest(self.0.der_bytes())
    }
}

/// What a certificate (DER) says: who holds it, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Its holder.
    pub identity: Identity,
    /// When it became valid.
    pub not_before: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

/// Reads the identity and validity of a certificate the cluster's CA issued. It does not
/// verify the signature: call it on a certificate a TLS handshake already verified, or on
/// one's own.
pub fn inspect(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::Parse)?;
    let dns: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or(PkiError::NoIdentity)?
        .to_owned();
    let identity = if dns.contains(&MANAGER_NAME) {
        Identity::Manager(cn)
    } else if dns.contains(&NODE_NAME) {
        Identity::Node(cn)
    } else {
        return Err(PkiError::NoIdentity);
    };
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(CertInfo {
        identity,
        not_before: at(cert.validity().not_before),
        not_after: at(cert.validity().not_after),
    })
}

/// [`inspect`] on the first certificate of a PEM text.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PkiError::NoCertificate,
        e => PkiError::Pem(e),
    })?;
    inspect(&der)
}

/// When a certificate of this CA valid from `not_before` to `not_after` is renewed: at
/// `fraction` of its life, `fraction` drawn by the caller and clamped to 50–80 % (Swarm's
/// window: late enough not to renew needlessly, early enough to survive a manager outage of
/// a fifth of the lifetime). The life counts from the issue, [`BACKDATE`] after `not_before`.
pub fn renewal_at(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let issued = not_before + BACKDATE;
    let life = not_after.duration_since(issued).unwrap_or_default();
    issued + life.mul_f64(fraction.clamp(0.5, 0.8))
}

/// A worker join token: the CA it must find and the secret that admits it. Its `Debug` form
/// never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The CA's digest.
    pub ca: CaDigest,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken(ca {}, <secret redacted>)", self.ca)
    }
}

impl JoinToken {
    /// A token with a new secret for the CA of `ca`.
    pub fn generate(ca: CaDigest) -> Result<Self, PkiError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; SECRET_BYTES];
        ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
        Ok(Self { ca, secret: data_encoding::BASE32_NOPAD.encode(&bytes) })
    }

    /// The secret, to send with a certificate request.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The digest of the secret, which is all a manager stores.
    pub fn secret_digest(&self) -> String {
        secret_digest(&self.secret)
    }
}

/// The digest a manager stores of a join secret (hex SHA-256).
pub fn secret_digest(secret: &str) -> String {
    key_digest(secret.as_bytes())
}

/// Whether `presented` is the secret of `digest`, compared in constant time.
pub fn secret_matches(digest: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    secret_digest(presented).as_bytes().ct_eq(digest.as_bytes()).into()
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.ca, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(TOKEN_PREFIX).ok_or(PkiError::BadToken)?;
        let (digest, secret) = rest.split_once('-').ok_or(PkiError::BadToken)?;
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(digest.as_bytes())
            .map_err(|_| PkiError::BadToken)?;
        let ca = CaDigest(bytes.try_into().map_err(|_| PkiError::BadToken)?);
        let decoded = data_encoding::BASE32_NOPAD
            .decode(secret.as_bytes())
            .map_err(|_| PkiError::BadToken)?;
        if decoded.len() != SECRET_BYTES {
            return Err(PkiError::BadToken);
        }
        Ok(Self { ca, secret: secret.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_node_certificate_names_the_node_whatever_its_request_asked_for() {
        let ca = Authority::create("prod", now()).unwrap();
        // A request asking to be a manager gets a node's certificate all the same.
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec![MANAGER_NAME.to_owned()]).unwrap();
        asked.distinguished_name.push(DnType::CommonName, "manager");
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let node = Identity::Node("0193-node".into());
        let issued = ca.sign_request(&csr, &node, now(), Duration::from_secs(120)).unwrap();
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.identity, node);
        assert_eq!(info.not_after, now() + Duration::from_secs(120));
        assert_eq!(info.not_before, now() - BACKDATE);
        assert_eq!(issued.key_digest, key_digest(key.der_bytes()));
    }

    #[test]
    fn a_stored_authority_signs_as_the_one_that_made_it() {
        let ca = Authority::create("prod", now()).unwrap();
        let again = Authority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        assert_eq!(again.cluster, "prod");
        let manager = again.issue(&Identity::Manager("m1".into()), now(), CA_LIFETIME).unwrap();
        assert_eq!(
            inspect_pem(&manager.cert_pem).unwrap().identity,
            Identity::Manager("m1".into())
        );
    }

    #[test]
    fn node_keys_survive_storage_and_prove_the_same_node() {
        let ca = Authority::create("prod", now()).unwrap();
        let key = NodeKey::generate().unwrap();
        let stored = NodeKey::from_pem(&key.to_pem()).unwrap();
        let node = Identity::Node("n".into());
        let first = ca
            .sign_request(&key.request().unwrap(), &node, now(), Duration::from_secs(60))
            .unwrap();
        let second = ca
            .sign_request(&stored.request().unwrap(), &node, now(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(first.key_digest, second.key_digest);
        assert_eq!(first.key_digest, key.digest());
        assert_eq!(request_key_digest(&key.request().unwrap()).unwrap(), key.digest());
        assert_ne!(first.key_digest, NodeKey::generate().unwrap().digest());
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let ca = Authority::create("prod", now()).unwrap();
        let csr = NodeKey::generate().unwrap().request().unwrap();
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x55;
        let pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            data_encoding::BASE64.encode(&bytes)
        );
        let node = Identity::Node("n".into());
        assert!(matches!(
            ca.sign_request(&pem, &node, now(), Duration::from_secs(60)),
            Err(PkiError::Rcgen { .. })
        ));
    }

    #[test]
    fn join_tokens_round_trip_and_pin_the_ca() {
        let ca = Authority::create("prod", now()).unwrap();
        let token = JoinToken::generate(ca.digest()).unwrap();
        let text = token.to_string();
        assert!(text.starts_with("CUBE-1-"), "{text}");
        assert_eq!(text.len(), 7 + 64 + 1 + 32, "{text}");
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.ca, ca.digest());
        assert_eq!(CaDigest::of_pem(ca.cert_pem()), Some(ca.digest()));
        assert_eq!(CaDigest::of_pem("no certificate"), None);
        assert!(secret_matches(&token.secret_digest(), parsed.secret()));
        assert!(!secret_matches(&token.secret_digest(), "AAAA"));
        assert!(!format!("{token:?}").contains(token.secret()));
        for bad in ["", "CUBE-2-aa-bb", "CUBE-1-zz-AAAA", &text[..text.len() - 1], "SWMTKN-1-a-b"] {
            assert!(matches!(bad.parse::<JoinToken>(), Err(PkiError::BadToken)), "{bad}");
        }
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_life_since_the_issue() {
        let (issued, to) = (now(), now() + Duration::from_secs(100));
        let from = issued - BACKDATE;
        assert_eq!(renewal_at(from, to, 0.0), issued + Duration::from_secs(50));
        assert_eq!(renewal_at(from, to, 0.65), issued + Duration::from_secs(65));
        assert_eq!(renewal_at(from, to, 1.0), issued + Duration::from_secs(80));
        let ended = renewal_at(to - BACKDATE, from, 0.7);
        assert_eq!(ended, to, "a certificate past its end renews at once");
    }

    #[test]
    fn a_certificate_of_no_cube_role_has_no_identity() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(inspect(cert.der()), Err(PkiError::NoIdentity)));
        assert!(matches!(inspect_pem("nothing"), Err(PkiError::NoCertificate)));
    }
}
