//! HTTPS with `--tls-cert/--tls-key` (rustls, HTTP/2 through ALPN, certificate reloaded on
//! `SIGHUP`): the registry on a non-loopback address with docker, podman and skopeo trusting
//! a CA this test makes, and the coordinator's API with the archway client trusting it
//! through `SSL_CERT_FILE` (the client reads the system store, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` instead of it).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    Dockerd, RegistryProcess, archway, busybox_layout, containers_tool, htpasswd, require, run,
    skip,
};

/// A CA and what it signs, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "archway test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A server certificate for `ips` (and `localhost`), written as `<name>.crt/.key`;
    /// returns (cert, key, DER of the certificate).
    fn server(&self, name: &str, ips: &[IpAddr]) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    /// A directory with `ca.crt`, as containers/image's `--cert-dir` wants.
    fn cert_dir(&self) -> PathBuf {
        let d = self.dir.path().join("certs.d");
        fs::create_dir_all(&d).unwrap();
        fs::copy(self.ca(), d.join("ca.crt")).unwrap();
        d
    }

    /// A blocking client that trusts only this CA and reports the peer's certificate.
    fn client(&self) -> reqwest::blocking::Client {
        let ca = reqwest::Certificate::from_pem(&fs::read(self.ca()).unwrap()).unwrap();
        reqwest::blocking::Client::builder()
            .tls_certs_only([ca])
            .tls_info(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }
}

/// This machine's first global IPv4 address (docker treats every loopback registry as
/// insecure and would not check the certificate there).
fn non_loopback_ip() -> Option<IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

fn peer_cert(r: &reqwest::blocking::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

fn docker_certs(host: &str) -> PathBuf {
    Path::new("/etc/docker/certs.d").join(host)
}

/// Removes a docker certs.d entry when dropped.
struct DockerCa(PathBuf);

impl Drop for DockerCa {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn registry_over_tls_with_docker_podman_and_skopeo() {
    if !require("skopeo") || !require("podman") {
        return;
    }
    let Some(ip) = non_loopback_ip() else {
        skip("no non-loopback IPv4 address to listen on");
        return;
    };
    let pki = Pki::new();
    let (cert, key, _) = pki.server("registry", &[ip, "127.0.0.1".parse().unwrap()]);
    let users = tempfile::tempdir().unwrap();
    let users = htpasswd(users.path(), 5);
    let reg = RegistryProcess::start_listening(
        &format!("{ip}:0"),
        &[
            "--htpasswd",
            users.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        reg.log_text().contains("listening on https://"),
        "{}",
        reg.log_text()
    );
    let host = reg.host().to_owned();

    // Over HTTP/2 (ALPN), and the token realm is https.
    let r = pki
        .client()
        .get(format!("https://{host}/v2/"))
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(&format!("realm=\"https://{host}/token\"")),
        "{challenge}"
    );

    // skopeo refuses the certificate without the CA, and pushes with it (TLS verified).
    let src = format!("oci:{}:1.35", busybox_layout().display());
    let dest = format!("docker://{host}/tls/busybox:1.35");
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-creds",
            "alice:pw",
        ])
        .args([&src, &dest])
        .output()
        .unwrap();
    assert!(!out.status.success(), "skopeo trusted an unknown CA");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = pki.cert_dir();
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-creds",
            "alice:pw",
        ])
        .arg("--dest-cert-dir")
        .arg(&certs)
        .args([&src, &dest]));

    // podman pulls it, checking the certificate against the CA.
    let pod = tempfile::tempdir().unwrap();
    run(containers_tool("podman", pod.path())
        .args(["pull", "--creds", "alice:pw", "--cert-dir"])
        .arg(&certs)
        .arg(format!("{host}/tls/busybox:1.35")));

    // docker (through its daemon, which reads /etc/docker/certs.d/<host>/ca.crt) logs in,
    // pulls, tags and pushes over TLS.
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let ca_dir = DockerCa(docker_certs(&host));
    fs::create_dir_all(&ca_dir.0).unwrap();
    fs::copy(pki.ca(), ca_dir.0.join("ca.crt")).unwrap();
    let login = run(dockerd
        .docker()
        .args(["login", &host, "-u", "alice", "-p", "pw"]));
    assert!(login.contains("Login Succeeded"), "{login}");
    run(dockerd
        .docker()
        .args(["pull", &format!("{host}/tls/busybox:1.35")]));
    run(dockerd.docker().args([
        "tag",
        &format!("{host}/tls/busybox:1.35"),
        &format!("{host}/tls/retagged:1"),
    ]));
    let push = run(dockerd
        .docker()
        .args(["push", &format!("{host}/tls/retagged:1")]));
    assert!(push.contains("digest: sha256:"), "{push}");
}

#[test]
fn certificate_reload_on_sighup_keeps_connections() {
    let pki = Pki::new();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let (cert, key, first) = pki.server("first", &[loopback]);
    let (next_cert, next_key, second) = pki.server("second", &[loopback]);
    let reg = RegistryProcess::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = format!("https://{}/v2/", reg.host());
    let kept = pki.client();
    let r = kept.get(&url).send().unwrap();
    assert_eq!((r.status().as_u16(), peer_cert(&r)), (200, first.clone()));

    // New files, then SIGHUP: new handshakes get the new certificate...
    fs::copy(&next_cert, &cert).unwrap();
    fs::copy(&next_key, &key).unwrap();
    run(Command::new("kill").args(["-HUP", &reg.pid().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = pki.client().get(&url).send().unwrap();
        if peer_cert(&r) == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and the connection opened before it still works (HTTP/2: the same connection).
    let r = kept.get(&url).send().unwrap();
    assert_eq!((r.status().as_u16(), peer_cert(&r)), (200, first));

    // A broken pair is refused and the certificate in use stays.
    fs::write(&key, "not a key").unwrap();
    run(Command::new("kill").args(["-HUP", &reg.pid().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reg
        .log_text()
        .contains("the TLS certificate was not reloaded")
    {
        assert!(Instant::now() < deadline, "{}", reg.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = pki.client().get(&url).send().unwrap();
    assert_eq!(peer_cert(&r), second);
    // Plain HTTP/1.1 clients are served too.
    let r = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&fs::read(pki.ca()).unwrap()).unwrap()])
        .http1_only()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
}

#[test]
fn coordinator_api_over_tls_with_the_archway_client() {
    let Some(ip) = non_loopback_ip() else {
        skip("no non-loopback IPv4 address to listen on");
        return;
    };
    let pki = Pki::new();
    let (cert, key, _) = pki.server("coordinator", &[ip]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tokens: serde_json::Value = serde_json::from_str(&run(archway()
        .args(["server", "init", "--format", "json", "--data"])
        .arg(&data)))
    .unwrap();
    let admin = tokens["admin_token"].as_str().unwrap().to_owned();
    // Plain HTTP on a non-loopback address is refused; with TLS it is served.
    let out = archway()
        .args(["server", "--listen", &format!("{ip}:0"), "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-cert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = dir.path().join("server.log");
    let mut server = archway()
        .args(["server", "--listen", &format!("{ip}:0"), "--data"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split("listening on https://").nth(1)
            && rest.contains('\n')
            && let Some(addr) = rest.split_whitespace().next()
        {
            assert!(text.contains("public URL https://"), "{text}");
            break addr.to_owned();
        }
        if let Some(st) = server.try_wait().unwrap() {
            panic!("archway server exited with {st}:\n{text}");
        }
        assert!(Instant::now() < deadline, "server did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let url = format!("https://{addr}");
    let login = |ca: Option<&Path>| {
        let mut c = archway();
        c.args(["server", "login", &url, "--token-stdin"])
            .env("HOME", dir.path())
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = ca {
            c.env("SSL_CERT_FILE", ca);
        }
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{admin}").unwrap();
        child.wait_with_output().unwrap()
    };
    // The system store does not know this CA: the client refuses the server.
    let out = login(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Trusting it through SSL_CERT_FILE, the client logs in and uses the API.
    let out = login(Some(&pki.ca()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (`server login` checked the token with an API call over that connection.)
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("logged in to {url}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = server.kill();
    let _ = server.wait();
}
