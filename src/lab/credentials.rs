//! The lab's secrets, made fresh for every lab: a CA and the controller's certificate for
//! the node's address, and one token per injected pod, written as the controller's static
//! token file and as each pod's token file, so that the lab's streams are TLS and
//! authenticated as they are in a cluster.

use std::fmt::Write as _;
use std::io::{self, Read as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where the lab's secrets are.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The CA proxies verify the controller against.
    pub ca: PathBuf,
    /// The controller's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The controller's token file: `token,namespace/pod` lines.
    pub tokens: PathBuf,
    dir: PathBuf,
}

/// A token nobody can guess: 32 hexadecimal digits from the kernel's random source.
fn token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

impl Credentials {
    /// Makes the CA, the controller's certificate for the node's addresses, and a token for
    /// each pod, under `dir`.
    pub fn create(
        dir: &Path,
        node_ips: &[IpAddr],
        pods: impl IntoIterator<Item = String>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("tokens"))?;
        let generated =
            palisade_controller::tls::generate(node_ips.iter().map(IpAddr::to_string).collect())
                .map_err(io::Error::other)?;
        let c = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("controller.pem"),
            key: dir.join("controller-key.pem"),
            tokens: dir.join("tokens.csv"),
            dir: dir.to_owned(),
        };
        std::fs::write(&c.ca, generated.ca)?;
        std::fs::write(&c.cert, generated.cert)?;
        std::fs::write(&c.key, generated.key)?;
        let mut lines = String::from("# token,namespace/pod\n");
        for pod in pods {
            let t = token()?;
            std::fs::write(c.token_file(&pod), &t)?;
            let _ = writeln!(lines, "{t},{pod}");
        }
        std::fs::write(&c.tokens, lines)?;
        Ok(c)
    }

    /// The CA as PEM text (what the injector puts in the proxy's environment).
    pub fn ca_pem(&self) -> io::Result<String> {
        std::fs::read_to_string(&self.ca)
    }

    /// Where a pod's token is (what the proxy reads as its projected token).
    pub fn token_file(&self, pod: &str) -> PathBuf {
        self.dir.join("tokens").join(pod.replace('/', "_"))
    }
}
