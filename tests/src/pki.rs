//! Certificates and keys for a test cluster: a CA, the apiserver's serving
//! certificate, an admin client certificate in `system:masters`, the
//! apiserver's client certificate for kubelets, the service-account signing
//! key, and (through [`Pki::client`] and [`Pki::server`]) whatever else the
//! node needs: the kubelet's client and serving certificates, kube-proxy's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// PEM files written for one cluster, and the CA that signed them.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The cluster CA certificate (also the client CA of the apiserver and
    /// the kubelet).
    pub ca_cert: PathBuf,
    /// The CA's certificate in PEM, for kubeconfigs.
    pub ca_pem: String,
    /// Serving certificate of kube-apiserver.
    pub apiserver_cert: PathBuf,
    /// Key of the serving certificate.
    pub apiserver_key: PathBuf,
    /// Admin client certificate in PEM (`O=system:masters`).
    pub admin_cert_pem: String,
    /// Admin client key in PEM.
    pub admin_key_pem: String,
    /// The apiserver's client certificate towards kubelets (exec, logs,
    /// port-forward), and its key.
    pub kubelet_client: (PathBuf, PathBuf),
    /// The CA of the aggregation layer's front proxy (a CA of its own, as
    /// Kubernetes advises: a cluster client certificate must not pass as
    /// the proxy).
    pub front_proxy_ca: PathBuf,
    /// The apiserver's client certificate towards aggregated APIses
    /// (metrics-server), `CN=front-proxy-client`, and its key.
    pub front_proxy_client: (PathBuf, PathBuf),
    /// Service-account token signing key (EC P-256, PKCS#8).
    pub service_account_key: PathBuf,
    /// Its public half, which verifies tokens.
    pub service_account_pub: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

fn pki_err(e: rcgen::Error) -> Error {
    Error::Setup(format!("generating certificates: {e}"))
}

impl Pki {
    /// Generates everything into `dir`. `ips` and `names` are the apiserver's
    /// subject alternative names.
    pub fn generate(dir: &Path, ips: &[IpAddr], names: &[&str]) -> Result<Pki, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ca = ca_issuer("sluice-test-ca")?;
        let ca_pem = ca.pem();
        let front_proxy = ca_issuer("sluice-test-front-proxy-ca")?;
        let ca_cert = write(dir, "ca.crt", &ca_pem)?;
        let sa_key = KeyPair::generate().map_err(pki_err)?;
        let service_account_key = write(dir, "sa.key", &sa_key.serialize_pem())?;
        let service_account_pub = write(dir, "sa.pub", &sa_key.public_key_pem())?;
        let mut pki = Pki {
            dir: dir.to_owned(),
            ca,
            ca_cert,
            ca_pem,
            apiserver_cert: PathBuf::new(),
            apiserver_key: PathBuf::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
            kubelet_client: (PathBuf::new(), PathBuf::new()),
            front_proxy_ca: write(dir, "front-proxy-ca.crt", &front_proxy.pem())?,
            front_proxy_client: (PathBuf::new(), PathBuf::new()),
            service_account_key,
            service_account_pub,
        };
        (pki.apiserver_cert, pki.apiserver_key) =
            pki.server("apiserver", "kube-apiserver", names, ips)?;
        let (admin_cert, admin_key) = pki.client("admin", "sluice-admin", &["system:masters"])?;
        pki.admin_cert_pem = read(&admin_cert)?;
        pki.admin_key_pem = read(&admin_key)?;
        pki.kubelet_client = pki.client(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, FRONT_PROXY_CLIENT);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        pki.front_proxy_client = pki.issue_by(&front_proxy, "front-proxy-client", params)?;
        Ok(pki)
    }

    /// Issues a client certificate for `common_name` in `organizations`
    /// (Kubernetes' user and groups), written as `<file>.crt`/`.key`.
    pub fn client(
        &self,
        file: &str,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<(PathBuf, PathBuf), Error> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for o in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(file, params)
    }

    /// Issues a serving certificate for `names` and `ips`.
    pub fn server(
        &self,
        file: &str,
        common_name: &str,
        names: &[&str],
        ips: &[IpAddr],
    ) -> Result<(PathBuf, PathBuf), Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(pki_err)?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(file, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Result<(PathBuf, PathBuf), Error> {
        self.issue_by(&self.ca, file, params)
    }

    fn issue_by(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        file: &str,
        params: CertificateParams,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.signed_by(&key, ca).map_err(pki_err)?;
        Ok((
            write(&self.dir, &format!("{file}.crt"), &cert.pem())?,
            write(&self.dir, &format!("{file}.key"), &key.serialize_pem())?,
        ))
    }

    /// A kubeconfig for `server` authenticating with `cert` and `key`,
    /// written to `path`.
    pub fn kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        (cert, key): (&Path, &Path),
    ) -> Result<(), Error> {
        let body = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: sluice
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: sluice
  context:
    cluster: sluice
    user: {user}
current-context: sluice
",
            ca = self.ca_cert.display(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(path, body).map_err(|e| Error::io(path, e))
    }
}

/// The common name the apiserver's front-proxy client certificate has, and
/// the one aggregated APIs accept.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// A self-signed CA named `name`.
fn ca_issuer(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, Error> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, key).map_err(pki_err)
}

fn write(dir: &Path, name: &str, body: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, body).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
