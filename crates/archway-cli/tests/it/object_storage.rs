//! The registry on an object store (the test S3 server): replicas sharing one bucket behave as
//! one, uploads survive a replica's `kill -9`, blob reads redirect to the store, and the
//! store's failures are retried or surface as the spec's error codes, never as half-written
//! content; `archway server --storage` shares its registry and snapshots through the bucket
//! and answers 503 when the store stays down. (The conformance, GC and interop suites also
//! run on the object store; coordinator.rs runs a pipeline through two servers on one bucket.)

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

use archway_oci::{Digest, media_type};
use reqwest::Method;

use crate::support::{
    Backend, Fault, FaultRule, FaultyS3, MotoProcess, Raw, RegistryProcess, body, error_code,
    header, image_manifest,
};

const MIB: usize = 1024 * 1024;

/// Deterministic bytes that do not compress or repeat.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn patch(raw: &Raw, location: &str, start: usize, chunk: &[u8]) -> reqwest::blocking::Response {
    raw.req(Method::PATCH, location)
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .unwrap()
}

fn finish(raw: &Raw, location: &str, digest: &Digest) -> reqwest::blocking::Response {
    raw.req(Method::PUT, &format!("{location}?digest={digest}"))
        .send()
        .unwrap()
}

#[test]
fn what_one_replica_stores_the_other_serves_at_once() {
    let Some(backend) = Backend::s3() else { return };
    let a = RegistryProcess::start_on(&backend, &[]);
    let b = a.replica();
    let (ra, rb) = (Raw::new(&a), Raw::new(&b));

    let layer = data(3 * MIB, 1);
    let (manifest, digest) = ra.push_image("team/app", "v1", &layer, None);
    let r = rb.get("/v2/team/app/manifests/v1");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(r.headers(), "docker-content-digest"),
        digest.to_string()
    );
    assert_eq!(body(r), manifest);
    assert_eq!(
        body(rb.get(&format!("/v2/team/app/blobs/{}", Digest::sha256(&layer)))),
        layer
    );

    // The other way round, with a multi-arch index.
    let (index, index_digest, children) = rb.push_multiarch("team/multi", "latest");
    assert_eq!(body(ra.get("/v2/team/multi/manifests/latest")), index);
    for child in children {
        assert_eq!(
            ra.get(&format!("/v2/team/multi/manifests/{child}"))
                .status()
                .as_u16(),
            200
        );
    }
    let catalog: serde_json::Value = ra.get("/v2/_catalog").json().unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!(["team/app", "team/multi"])
    );
    let tags: serde_json::Value = ra.get("/v2/team/multi/tags/list").json().unwrap();
    assert_eq!(
        tags["tags"],
        serde_json::json!(["latest", "only-amd64", "only-arm64"])
    );

    // A delete through one is seen by the other.
    let r = rb
        .req(
            Method::DELETE,
            &format!("/v2/team/multi/manifests/{index_digest}"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let (status, code) = error_code(ra.get("/v2/team/multi/manifests/latest"));
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
}

#[test]
fn a_chunked_upload_started_on_one_replica_continues_on_the_other() {
    let Some(backend) = Backend::s3() else { return };
    let a = RegistryProcess::start_on(&backend, &[]);
    let b = a.replica();
    let (ra, rb) = (Raw::new(&a), Raw::new(&b));
    // Chunks that end inside a part, cross part boundaries, and finish with a short tail.
    let blob = data(19 * MIB + 12_345, 2);
    let digest = Digest::sha256(&blob);
    let location = ra.start_upload("big");
    let cuts = [0, 6 * MIB, 14 * MIB, 17 * MIB + 1, blob.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let raw = if i % 2 == 0 { &ra } else { &rb };
        let r = patch(raw, &location, w[0], &blob[w[0]..w[1]]);
        assert_eq!(r.status().as_u16(), 202, "chunk {i}: {:?}", r.text());
        assert_eq!(header(r.headers(), "range"), format!("0-{}", w[1] - 1));
        // Each replica knows where the upload stands.
        let other = if i % 2 == 0 { &rb } else { &ra };
        let r = other.get(&location);
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(header(r.headers(), "range"), format!("0-{}", w[1] - 1));
    }
    // Nothing is visible before the commit.
    assert_eq!(
        ra.head(&format!("/v2/big/blobs/{digest}"))
            .status()
            .as_u16(),
        404
    );
    let r = finish(&rb, &location, &digest);
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    assert_eq!(body(ra.get(&format!("/v2/big/blobs/{digest}"))), blob);
    // The session is over for both.
    let (status, code) = error_code(ra.get(&location));
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
}

#[test]
fn concurrent_pushes_of_one_tag_through_two_replicas_leave_exactly_one_winner() {
    let Some(backend) = Backend::s3() else { return };
    let a = RegistryProcess::start_on(&backend, &[]);
    let b = a.replica();
    let raws = Arc::new([Raw::new(&a), Raw::new(&b)]);
    for round in 0..3 {
        // Distinct images whose blobs are all pushed first, then every manifest at once.
        let images: Vec<(Vec<u8>, Digest, Vec<u8>)> = (0..8)
            .map(|i| {
                let layer = format!("round {round} image {i}").into_bytes();
                let raw = &raws[i % 2];
                raw.push_blob("race", &layer);
                raw.push_blob("race", &crate::support::config_json(None));
                let (m, _) = image_manifest(&layer, None);
                let d = Digest::sha256(&m);
                (m, d, layer)
            })
            .collect();
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, (m, _, _))| {
                let (raws, m) = (raws.clone(), m.clone());
                std::thread::spawn(move || {
                    raws[i % 2]
                        .put_manifest("race", "latest", media_type::OCI_MANIFEST, &m)
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 201);
        }
        // Both replicas name the same winner, one of the pushed images, whole.
        let via_a = header(
            raws[0].head("/v2/race/manifests/latest").headers(),
            "docker-content-digest",
        );
        let via_b = header(
            raws[1].head("/v2/race/manifests/latest").headers(),
            "docker-content-digest",
        );
        assert_eq!(via_a, via_b);
        let (m, _, layer) = images
            .iter()
            .find(|(_, d, _)| d.to_string() == via_a)
            .expect("the tag names one of the pushed manifests");
        for raw in raws.iter() {
            assert_eq!(&body(raw.get("/v2/race/manifests/latest")), m);
            assert_eq!(
                &body(raw.get(&format!("/v2/race/blobs/{}", Digest::sha256(layer)))),
                layer
            );
        }
    }
}

#[test]
fn a_replica_killed_mid_upload_loses_nothing_and_the_client_resumes_on_the_other() {
    let Some(backend) = Backend::s3() else { return };
    let mut a = RegistryProcess::start_on(&backend, &[]);
    let b = a.replica();
    let (ra, rb) = (Raw::new(&a), Raw::new(&b));
    let blob = data(26 * MIB, 3);
    let digest = Digest::sha256(&blob);
    let location = ra.start_upload("k9");
    let r = patch(&ra, &location, 0, &blob[..10 * MIB]);
    assert_eq!(r.status().as_u16(), 202);

    // The next chunk is on its way to `a` (a part's worth and more of it sent) when `a` dies.
    let mut stream = TcpStream::connect(&a.addr).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Range: {}-{}\r\nContent-Length: {}\r\n\r\n",
        a.addr,
        10 * MIB,
        blob.len() - 1,
        blob.len() - 10 * MIB
    )
    .unwrap();
    stream.write_all(&blob[10 * MIB..20 * MIB]).unwrap();
    stream.flush().unwrap();
    a.kill9();

    // The client asks the other replica where the upload stands: where the last finished
    // request left it. Nothing is visible, nothing half-written is served.
    let r = rb.get(&location);
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(header(r.headers(), "range"), format!("0-{}", 10 * MIB - 1));
    assert_eq!(
        rb.head(&format!("/v2/k9/blobs/{digest}")).status().as_u16(),
        404
    );
    let r = patch(&rb, &location, 10 * MIB, &blob[10 * MIB..]);
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text());
    let r = finish(&rb, &location, &digest);
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    assert_eq!(body(rb.get(&format!("/v2/k9/blobs/{digest}"))), blob);

    // A client that starts over instead (docker does) succeeds too, and the killed replica,
    // restarted, serves the same bytes.
    assert_eq!(rb.push_blob("k9", &blob), digest);
    a.restart();
    assert_eq!(
        body(Raw::new(&a).get(&format!("/v2/k9/blobs/{digest}"))),
        blob
    );
}

#[test]
fn blob_reads_redirect_to_the_store_with_storage_redirect() {
    let Some(backend) = Backend::s3() else { return };
    let reg = RegistryProcess::start_on(&backend, &["--storage-redirect"]);
    let raw = Raw::new(&reg);
    let blob = data(3 * MIB, 4);
    let digest = raw.push_blob("r", &blob);
    let direct = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = direct
        .get(reg.url(&format!("/v2/r/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 307);
    assert_eq!(
        header(r.headers(), "docker-content-digest"),
        digest.to_string()
    );
    let url = header(r.headers(), "location");
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    assert!(url.starts_with(&endpoint), "{url} is not on {endpoint}");
    assert!(url.contains("X-Amz-Signature="), "{url} is not presigned");
    // The presigned URL serves the bytes without credentials, ranges included.
    assert_eq!(body(direct.get(&url).send().unwrap()), blob);
    let r = direct
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(body(r), blob[10..20].to_vec());
    // A client that follows redirects gets the blob; HEAD is answered by the registry.
    assert_eq!(body(raw.get(&format!("/v2/r/blobs/{digest}"))), blob);
    let r = raw.head(&format!("/v2/r/blobs/{digest}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "content-length"), (3 * MIB).to_string());
    // Unknown blobs are still the registry's answer.
    let (status, code) = error_code(raw.get(&format!("/v2/r/blobs/{}", Digest::sha256(b"none"))));
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
}

#[test]
fn store_throttling_errors_and_cut_responses_are_retried() {
    let Some(proxy) = FaultyS3::start() else {
        return;
    };
    let Some(backend) = Backend::s3() else { return };
    let reg = RegistryProcess::start_on_env(&backend, &[], &proxy.envs());
    let raw = Raw::new(&reg);
    for (method, path, fault) in [
        ("PUT", "/data/", Fault::Status(503, "SlowDown")),
        ("PUT", "/blobs/", Fault::Status(500, "InternalError")),
        ("POST", "uploadId", Fault::Status(503, "ServiceUnavailable")),
        ("GET", "/uploads/", Fault::Status(503, "SlowDown")),
        ("GET", "/data/", Fault::CutAfter(MIB)),
    ] {
        proxy.add(FaultRule {
            method,
            path_contains: path,
            fault,
            times: 2,
        });
    }
    // A monolithic push, a chunked one (multipart), a manifest, and reads.
    let small = data(3 * MIB, 5);
    let (manifest, _) = raw.push_image("flaky", "v1", &small, None);
    let big = data(17 * MIB, 6);
    let digest = Digest::sha256(&big);
    let location = raw.start_upload("flaky");
    assert_eq!(patch(&raw, &location, 0, &big).status().as_u16(), 202);
    let r = finish(&raw, &location, &digest);
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    assert_eq!(body(raw.get("/v2/flaky/manifests/v1")), manifest);
    assert_eq!(body(raw.get(&format!("/v2/flaky/blobs/{digest}"))), big);
    assert_eq!(
        body(raw.get(&format!("/v2/flaky/blobs/{}", Digest::sha256(&small)))),
        small
    );
    assert!(
        proxy.injected() >= 8,
        "only {} faults were injected",
        proxy.injected()
    );
}

#[test]
fn a_store_that_keeps_failing_is_a_503_and_leaves_nothing_half_written() {
    let Some(proxy) = FaultyS3::start() else {
        return;
    };
    let Some(backend) = Backend::s3() else { return };
    let reg = RegistryProcess::start_on_env(&backend, &[], &proxy.envs());
    let raw = Raw::new(&reg);
    let small = data(3 * MIB, 8);
    let small_digest = Digest::sha256(&small);
    let blob = data(12 * MIB, 7);
    let digest = Digest::sha256(&blob);

    // Every write fails: the monolithic push is refused with the spec's envelope, and a
    // Retry-After; the 500-style detail names no server path, only a request id.
    proxy.add(FaultRule {
        method: "PUT",
        path_contains: "",
        fault: Fault::Status(503, "SlowDown"),
        times: usize::MAX,
    });
    let r = raw
        .req(
            Method::POST,
            &format!("/v2/down/blobs/uploads/?digest={small_digest}"),
        )
        .body(small.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(header(r.headers(), "retry-after"), "1");
    let text = r.text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
    assert!(v["errors"][0]["detail"]["request_id"].is_string(), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    proxy.clear();
    assert_eq!(
        raw.head(&format!("/v2/down/blobs/{small_digest}"))
            .status()
            .as_u16(),
        404
    );
    assert_eq!(raw.push_blob("down", &small), small_digest);

    // A chunked upload whose session cannot be saved keeps its last good state.
    let location = raw.start_upload("down");
    assert_eq!(
        patch(&raw, &location, 0, &blob[..5 * MIB])
            .status()
            .as_u16(),
        202
    );
    proxy.add(FaultRule {
        method: "PUT",
        path_contains: "/uploads/",
        fault: Fault::Status(500, "InternalError"),
        times: usize::MAX,
    });
    let r = patch(&raw, &location, 5 * MIB, &blob[5 * MIB..]);
    assert_eq!(r.status().as_u16(), 503);
    proxy.clear();
    let r = raw.get(&location);
    assert_eq!(header(r.headers(), "range"), format!("0-{}", 5 * MIB - 1));
    assert_eq!(
        patch(&raw, &location, 5 * MIB, &blob[5 * MIB..])
            .status()
            .as_u16(),
        202
    );
    assert_eq!(finish(&raw, &location, &digest).status().as_u16(), 201);
    assert_eq!(body(raw.get(&format!("/v2/down/blobs/{digest}"))), blob);
}

/// Pushes an image as clients do (HEAD each blob, upload the missing ones, then the
/// manifest) and starts over when the registry says a blob went missing meanwhile (garbage
/// collection may remove unreferenced content between the HEAD and the manifest). Returns
/// the manifest and how many attempts it took.
fn push_like_a_client(raw: &Raw, repo: &str, tag: &str, layers: &[Vec<u8>]) -> (Vec<u8>, usize) {
    let config = crate::support::config_json(None);
    let manifest = archway_oci::ImageManifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: archway_oci::Descriptor::for_bytes(media_type::OCI_CONFIG, &config),
        layers: layers
            .iter()
            .map(|l| archway_oci::Descriptor::for_bytes(media_type::OCI_LAYER_TAR, l))
            .collect(),
        subject: None,
        annotations: None,
    }
    .to_json();
    for attempt in 1..=5 {
        for blob in layers.iter().chain([&config]) {
            let d = Digest::sha256(blob);
            if raw.head(&format!("/v2/{repo}/blobs/{d}")).status().as_u16() != 200 {
                raw.push_blob(repo, blob);
            }
        }
        let r = raw.put_manifest(repo, tag, media_type::OCI_MANIFEST, &manifest);
        match error_code(r) {
            (201, _) => return (manifest, attempt),
            (400, code) if code == "MANIFEST_BLOB_UNKNOWN" => continue,
            other => panic!("pushing {repo}:{tag}: {other:?}"),
        }
    }
    panic!("pushing {repo}:{tag} kept failing");
}

#[test]
fn garbage_collection_from_another_process_is_safe_while_a_replica_serves_pushes() {
    let Some(moto) = MotoProcess::start() else {
        return;
    };
    let backend = moto.backend();
    let envs = moto.envs();

    // Three hours ago (by the store's clock): a kept image, an image whose tag then went,
    // and layers pushed but never referenced — garbage, unless someone uses them again.
    moto.set_clock("-3h");
    let a = RegistryProcess::start_on_env(&backend, &[], &envs);
    let ra = Raw::new(&a);
    let (kept, _) = ra.push_image("app", "keep", b"kept layer", None);
    let (_, gone) = ra.push_image("app", "old", b"old layer", None);
    let r = ra
        .req(Method::DELETE, "/v2/app/manifests/old")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let old_layers: Vec<Vec<u8>> = (0..6).map(|i| data(64 * 1024, 100 + i)).collect();
    for l in &old_layers {
        ra.push_blob("app", l);
    }
    moto.set_clock("+0");

    // Now: replica `b` serves pushes that re-use those old layers while `registry gc`, a
    // third process on the same bucket, collects with the default grace period.
    let b = a.replica();
    let pusher = {
        let rb = Raw::new(&b);
        let old_layers = old_layers.clone();
        std::thread::spawn(move || {
            old_layers
                .iter()
                .enumerate()
                .map(|(i, old)| {
                    let own = data(32 * 1024, 200 + i as u64);
                    let tag = format!("new-{i}");
                    let (m, attempts) =
                        push_like_a_client(&rb, "app", &tag, &[old.clone(), own.clone()]);
                    (tag, m, vec![old.clone(), own], attempts)
                })
                .collect::<Vec<_>>()
        })
    };
    let mut removed = Vec::new();
    for _ in 0..3 {
        let out = crate::support::run(
            crate::support::archway()
                .args(["registry", "gc", "--format", "json"])
                .args(backend.args(std::path::Path::new("unused")))
                .envs(envs),
        );
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        for d in report["blobs_removed"].as_array().unwrap() {
            removed.push(d.as_str().unwrap().to_owned());
        }
    }
    let pushed = pusher.join().unwrap();

    // The collector removed the untagged image ...
    assert!(removed.contains(&gone.to_string()), "{removed:?}");
    assert!(
        removed.contains(&Digest::sha256(b"old layer").to_string()),
        "{removed:?}"
    );
    // ... and every tag, through either replica, names a whole image.
    for raw in [&ra, &Raw::new(&b)] {
        assert_eq!(body(raw.get("/v2/app/manifests/keep")), kept);
        for (tag, manifest, layers, _) in &pushed {
            assert_eq!(
                &body(raw.get(&format!("/v2/app/manifests/{tag}"))),
                manifest
            );
            for l in layers {
                let r = raw.get(&format!("/v2/app/blobs/{}", Digest::sha256(l)));
                assert_eq!(r.status().as_u16(), 200, "{tag}");
                assert_eq!(&body(r), l);
            }
        }
    }
    // A last collection with nothing in flight removes nothing a tag reaches.
    let out = crate::support::run(
        crate::support::archway()
            .args(["registry", "gc", "--format", "json"])
            .args(backend.args(std::path::Path::new("unused")))
            .envs(envs),
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    for (_, _, layers, _) in &pushed {
        for l in layers {
            let d = Digest::sha256(l).to_string();
            assert!(
                !report["blobs_removed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == &d),
                "{report}"
            );
        }
    }
    let retried: usize = pushed.iter().map(|p| p.3 - 1).sum();
    eprintln!("pushes that had to start over because the collector won a race: {retried}");
}

/// `archway server --storage`: its registry and its source snapshots on the bucket.
struct ServerOnS3 {
    child: std::process::Child,
    addr: String,
    admin: String,
    _data: tempfile::TempDir,
}

impl ServerOnS3 {
    fn start(location: &str) -> ServerOnS3 {
        Self::start_with_env(location, &[])
    }

    fn start_with_env(location: &str, envs: &[(&str, &str)]) -> ServerOnS3 {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("server.log");
        let child = crate::support::archway()
            .envs(envs.iter().copied())
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--storage",
                location,
                "--data",
            ])
            .arg(data.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on http://") {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not start:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let after = |marker: &str| {
            text.split(marker)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_else(|| panic!("no `{marker}` in:\n{text}"))
                .to_owned()
        };
        ServerOnS3 {
            child,
            addr: after("listening on http://"),
            admin: after("admin token:"),
            _data: data,
        }
    }

    /// A registry client with the admin token (the server's registry needs credentials).
    fn raw(&self) -> Raw {
        use base64::Engine as _;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", self.admin));
        Raw {
            http: reqwest::blocking::Client::new(),
            base: format!("http://{}", self.addr),
            auth: Some(format!("Basic {basic}")),
        }
    }
}

impl Drop for ServerOnS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn servers_on_one_bucket_share_their_registry_and_source_snapshots() {
    let Some(Backend::S3(location)) = Backend::s3() else {
        return;
    };
    // Two coordinators with databases of their own: what they share is the bucket.
    let (a, b) = (ServerOnS3::start(&location), ServerOnS3::start(&location));
    let snapshot = data(9 * MIB + 7, 11);
    let digest = Digest::sha256(&snapshot);
    let source = |s: &ServerOnS3, method: Method| {
        reqwest::blocking::Client::new()
            .request(method, format!("http://{}/api/v1/sources/{digest}", s.addr))
            .header("authorization", format!("Bearer {}", s.admin))
    };
    assert_eq!(
        source(&b, Method::HEAD).send().unwrap().status().as_u16(),
        404
    );
    // Bytes that do not match the digest are refused and leave nothing behind.
    let r = source(&a, Method::PUT)
        .body(snapshot[1..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        source(&b, Method::HEAD).send().unwrap().status().as_u16(),
        404
    );
    let r = source(&a, Method::PUT)
        .body(snapshot.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    assert_eq!(
        source(&b, Method::HEAD).send().unwrap().status().as_u16(),
        200
    );

    // The built-in registries are one registry.
    let (ra, rb) = (a.raw(), b.raw());
    let (manifest, _) = ra.push_image("ci/app", "v1", &data(2 * MIB, 12), None);
    assert_eq!(body(rb.get("/v2/ci/app/manifests/v1")), manifest);
}

#[test]
fn a_server_whose_store_keeps_failing_answers_503_and_stores_nothing() {
    let Some(proxy) = FaultyS3::start() else {
        return;
    };
    let Some(Backend::S3(location)) = Backend::s3() else {
        return;
    };
    let server = ServerOnS3::start_with_env(&location, &proxy.envs());
    let snapshot = data(4096, 21);
    let digest = Digest::sha256(&snapshot);
    let source = |method: Method| {
        reqwest::blocking::Client::new()
            .request(
                method,
                format!("http://{}/api/v1/sources/{digest}", server.addr),
            )
            .header("authorization", format!("Bearer {}", server.admin))
    };
    // Every write of a snapshot fails, also after the client's retries: 503 UNAVAILABLE with
    // Retry-After, the store's address only in the server's log.
    for method in ["PUT", "POST"] {
        proxy.add(FaultRule {
            method,
            path_contains: "/sources/",
            fault: Fault::Status(503, "SlowDown"),
            times: usize::MAX,
        });
    }
    let r = source(Method::PUT).body(snapshot.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(header(r.headers(), "retry-after"), "1");
    let text = r.text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "UNAVAILABLE", "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert!(proxy.injected() > 1, "the store was not retried");
    proxy.clear();
    assert_eq!(source(Method::HEAD).send().unwrap().status().as_u16(), 404);
    let r = source(Method::PUT).body(snapshot).send().unwrap();
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    assert_eq!(source(Method::HEAD).send().unwrap().status().as_u16(), 200);
}
