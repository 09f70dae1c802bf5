//! registry-abuse: each attack of the registry hardening review, run in bounded form (a few
//! hundred requests, a few seconds) against the real server. The assertions are about
//! liveness and bounds, never speed: a legitimate request still gets its answer (with a
//! generous timeout), memory, `/metrics` and descriptors stay under fixed caps, and the
//! protocol answers are the right ones.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use archway_oci::{Descriptor, Digest, ImageManifest, media_type};
use reqwest::Method;

use crate::support::{
    Raw, RegistryProcess, bearer, body, config_json, error_code, header, run, token,
};

/// Generous: today's server answers in milliseconds; a starved one never does.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Resident memory the server must stay under during any of these attacks.
const RSS_CAP_KIB: u64 = 512 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn assert_rss_bounded(reg: &RegistryProcess) {
    let rss = rss_kib(reg.pid());
    assert!(rss < RSS_CAP_KIB, "server RSS {rss} KiB is over the cap");
}

/// A client with the liveness timeout.
fn patient(reg: &RegistryProcess) -> Raw {
    let mut raw = Raw::new(reg);
    raw.http = reqwest::blocking::Client::builder()
        .timeout(LIVENESS_TIMEOUT)
        .build()
        .unwrap();
    raw
}

/// Polls `cond` (no timing assertion: a deadline only so that a failure ends).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Item 1: invented method names must not become metric labels.
#[test]
fn invented_methods_do_not_grow_metrics() {
    let reg = RegistryProcess::start();
    let raw = patient(&reg);
    for i in 0..300 {
        let m = Method::from_bytes(format!("ABUSE{i:04}X").as_bytes()).unwrap();
        let _ = raw.req(m, "/v2/").send().unwrap();
    }
    let text = raw.get("/metrics").text().unwrap();
    assert!(!text.contains("ABUSE"), "client methods became labels");
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
    assert!(text.contains(r#"method="other""#), "{text}");
    assert_rss_bounded(&reg);
}

/// Item 2: clients that stop reading a blob or stop sending an upload hold no thread the
/// rest of the registry needs, and are dropped after the progress timeouts.
#[test]
fn slow_clients_do_not_starve_storage() {
    let reg = RegistryProcess::start_with(&["--read-timeout", "3s", "--write-timeout", "3s"]);
    let raw = patient(&reg);
    let blob: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let d = raw.push_blob("slow/x", &blob);
    let baseline = open_fds(reg.pid());

    // 80 readers that never read a 16 MiB blob, 80 uploads that stall mid-body.
    let mut stalled = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(reg.host()).unwrap();
        write!(
            s,
            "GET /v2/slow/x/blobs/{d} HTTP/1.1\r\nHost: {}\r\n\r\n",
            reg.host()
        )
        .unwrap();
        stalled.push(s);
    }
    for _ in 0..80 {
        let location = raw.start_upload("slow/up");
        let mut s = TcpStream::connect(reg.host()).unwrap();
        write!(
            s,
            "PATCH {location} HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\npartial",
            reg.host()
        )
        .unwrap();
        stalled.push(s);
    }
    // Meanwhile, every kind of storage operation still gets its answer.
    let other = raw.push_blob("slow/y", b"a small blob");
    assert_eq!(
        raw.head(&format!("/v2/slow/x/blobs/{d}")).status().as_u16(),
        200
    );
    assert_eq!(
        body(raw.get(&format!("/v2/slow/y/blobs/{other}"))),
        b"a small blob"
    );
    raw.push_image("slow/app", "v1", b"layer", None);
    assert_eq!(raw.get("/v2/slow/app/manifests/v1").status().as_u16(), 200);
    assert_rss_bounded(&reg);

    // The stalled clients are dropped: their descriptors go (ours stay open until then).
    eventually("stalled connections dropped", || {
        open_fds(reg.pid()) <= baseline + 5
    });
    drop(stalled);
}

/// Item 3: abandoned uploads hold no descriptor, the soft open-file limit is raised, sessions
/// purged by `registry gc` or by the server's own expiry answer BLOB_UPLOAD_UNKNOWN.
#[test]
fn abandoned_uploads_hold_no_descriptors_and_expire() {
    // A low soft limit, as many systems have: the server raises it to the hard limit.
    let reg = RegistryProcess::start_limited(&["--upload-expiry", "4s"], Some(256));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", reg.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft limit not raised: {line}");

    let raw = patient(&reg);
    let baseline = open_fds(reg.pid());
    let mut sessions = Vec::new();
    for i in 0..300 {
        let location = raw.start_upload("abandon");
        let r = raw
            .req(Method::PATCH, &location)
            .body(format!("chunk {i}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        sessions.push(location);
    }
    let fds = open_fds(reg.pid());
    assert!(
        fds <= baseline + 10,
        "{} descriptors after 300 abandoned uploads",
        fds - baseline
    );
    assert_eq!(raw.get("/v2/").status().as_u16(), 200);

    // `registry gc` (another process) purges a session: the server no longer accepts it.
    let victim = &raw.start_upload("abandon");
    assert_eq!(
        raw.req(Method::PATCH, victim)
            .body("data")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    run(crate::support::archway()
        .args([
            "registry",
            "gc",
            "--grace",
            "0s",
            "--upload-max-age",
            "0s",
            "--root",
        ])
        .arg(&reg.root));
    for method in [Method::PATCH, Method::GET, Method::PUT] {
        let mut b = raw.req(method.clone(), victim);
        if method == Method::PUT {
            b = raw.req(
                method.clone(),
                &format!("{victim}?digest={}", Digest::sha256(b"x")),
            );
        }
        let (status, code) = error_code(b.body("more").send().unwrap());
        assert_eq!(
            (status, code.as_str()),
            (404, "BLOB_UPLOAD_UNKNOWN"),
            "{method}"
        );
    }

    // The server expires idle sessions itself.
    let location = raw.start_upload("abandon");
    raw.req(Method::PATCH, &location).body("x").send().unwrap();
    eventually("expired sessions removed", || {
        std::fs::read_dir(reg.root.join("uploads")).unwrap().count() == 0
    });
    let (status, code) = error_code(raw.req(Method::PATCH, &location).body("y").send().unwrap());
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let text = raw.get("/metrics").text().unwrap();
    assert_eq!(
        metric(&text, "archway_registry_uploads_in_progress"),
        Some(0.0)
    );
    assert!(open_fds(reg.pid()) <= baseline + 10);
    assert_rss_bounded(&reg);
}

/// Items 4 and 5: password guessing is rate-limited per user and per address, successes are
/// cached (no bcrypt), unknown users cost a bcrypt comparison like known ones, and guessing
/// on several connections does not keep others from being served.
#[test]
fn password_guessing_is_limited_and_unknown_users_cost_the_same() {
    let reg = RegistryProcess::start_with_users(8, None, &[]);
    let raw = patient(&reg);
    let checks = || {
        let text = raw
            .http
            .get(format!("{}/metrics", raw.base))
            .basic_auth("alice", Some("pw"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric(&text, "archway_registry_password_checks_total").unwrap()
    };
    let base = |user: &str, pass: &str| {
        raw.http
            .get(format!("{}/v2/", raw.base))
            .basic_auth(user, Some(pass))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(base("alice", "pw"), 200);
    let after_login = checks();
    // A cached success costs nothing.
    assert_eq!(base("alice", "pw"), 200);
    assert_eq!(checks(), after_login);
    // An unknown user costs one comparison, like a known user's wrong password.
    assert_eq!(base("nobody", "pw"), 401);
    assert_eq!(checks(), after_login + 1.0);
    assert_eq!(base("bob", "wrong"), 401);
    assert_eq!(checks(), after_login + 2.0);

    // Guessing alice's password: 10 failures, then 429 without a comparison.
    let statuses: Vec<u16> = (0..15).map(|_| base("alice", "guess")).collect();
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10..], [429; 5]);
    assert_eq!(checks(), after_login + 12.0);
    // alice herself (cached) still gets in.
    assert_eq!(base("alice", "pw"), 200);

    // Guessing from several connections at once, over many names, while a token holder
    // keeps being served.
    let tok = bearer(token(&raw, Some(("admin", "pw")), &["repository:x:pull"]));
    let guessers: Vec<_> = (0..4)
        .map(|t| {
            let base_url = raw.base.clone();
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                (0..25)
                    .map(|i| {
                        c.get(format!("{base_url}/v2/"))
                            .basic_auth(format!("user{t}-{i}"), Some("x"))
                            .send()
                            .unwrap()
                            .status()
                            .as_u16()
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for _ in 0..20 {
        let r = raw
            .req(Method::GET, "/v2/x/tags/list")
            .header("authorization", &tok)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404); // allowed, just empty
    }
    let all: Vec<u16> = guessers
        .into_iter()
        .flat_map(|g| g.join().unwrap())
        .collect();
    // Past the per-address budget, everything from this address is refused.
    assert!(all.iter().all(|s| *s == 401 || *s == 429), "{all:?}");
    assert!(all.contains(&429), "{all:?}");
    assert_rss_bounded(&reg);
}

/// Item 6: the catalog lists only repositories the caller may pull, paginated after filtering.
#[test]
fn catalog_lists_only_what_the_caller_may_pull() {
    let rules = "admin * *\nalice team/* pull,push\n* public/* pull\nanonymous public/* pull\n";
    let reg = RegistryProcess::start_with_users(5, Some(rules), &[]);
    let mut raw = patient(&reg);
    for repo in ["team/a", "team/b", "team/c", "secret/x", "public/p"] {
        raw.auth = Some(bearer(token(
            &raw,
            Some(("admin", "pw")),
            &[&format!("repository:{repo}:push,pull")],
        )));
        raw.push_blob(repo, repo.as_bytes());
    }
    let list = |raw: &Raw, q: &str| -> (Vec<String>, String) {
        let r = raw.get(&format!("/v2/_catalog{q}"));
        assert_eq!(r.status().as_u16(), 200);
        let link = header(r.headers(), "link");
        let v: serde_json::Value = r.json().unwrap();
        let names = v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        (names, link)
    };
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &["registry:catalog:*"],
    )));
    assert_eq!(list(&raw, "").0, ["public/p", "team/a", "team/b", "team/c"]);
    let (page, link) = list(&raw, "?n=2");
    assert_eq!(page, ["public/p", "team/a"]);
    assert_eq!(link, "</v2/_catalog?n=2&last=team%2Fa>; rel=\"next\"");
    let (page, link) = list(&raw, "?n=2&last=team%2Fa");
    assert_eq!(page, ["team/b", "team/c"]);
    assert_eq!(link, "");
    // Basic credentials and anonymous callers get the same filtering.
    raw.auth = None;
    let r = raw
        .req(Method::GET, "/v2/_catalog")
        .basic_auth("bob", Some("pw"))
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["public/p"]));
    assert_eq!(list(&raw, "").0, ["public/p"]);
}

/// Item 7: with --htpasswd, /metrics needs credentials; --metrics-listen moves it to its own
/// listener.
#[test]
fn metrics_need_credentials_or_their_own_listener() {
    let reg = RegistryProcess::start_with_users(5, None, &[]);
    let raw = patient(&reg);
    let r = raw.get("/metrics");
    assert_eq!(r.status().as_u16(), 401);
    assert!(!body(r).starts_with(b"# HELP"));
    let r = raw
        .req(Method::GET, "/metrics")
        .basic_auth("alice", Some("pw"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // An anonymous token (which opens /v2/) does not open the metrics.
    let anonymous = bearer(token(&raw, None, &[]));
    let r = raw
        .req(Method::GET, "/metrics")
        .header("authorization", &anonymous)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let reg = RegistryProcess::start_with_users(5, None, &["--metrics-listen", "127.0.0.1:0"]);
    let raw = patient(&reg);
    let (status, _) = error_code(
        raw.req(Method::GET, "/metrics")
            .basic_auth("alice", Some("pw"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404); // not served on this listener
    let log = reg.log_text();
    let addr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in:\n{log}"));
    let text = raw
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains("archway_registry_http_requests_total"),
        "{text}"
    );
}

/// Item 8: a 500 says "internal server error" with a request id, never a server path; the
/// log has the details under the same id.
#[test]
fn internal_errors_do_not_reveal_paths() {
    let reg = RegistryProcess::start();
    let raw = patient(&reg);
    raw.push_image("broken", "v1", b"layer", None);
    let tag = reg.root.join("repositories/broken/_manifests/tags/v1");
    std::fs::remove_file(&tag).unwrap();
    std::fs::create_dir(&tag).unwrap();
    let r = raw.get("/v2/broken/manifests/v1");
    assert_eq!(r.status().as_u16(), 500);
    let id = header(r.headers(), "x-request-id");
    let text = r.text().unwrap();
    let root = reg.root.to_str().unwrap();
    assert!(!text.contains(root) && !text.contains("/tags/"), "{text}");
    assert!(text.contains(&id), "{text}");
    let log = reg.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("tags/v1")),
        "{log}"
    );
}

/// Item 9: a tag push racing a DELETE of its manifest ends consistent: the tag with its
/// manifest, or neither.
#[test]
fn tag_push_racing_manifest_delete_ends_consistent() {
    let reg = RegistryProcess::start();
    let raw = patient(&reg);
    let (manifest, digest) = raw.push_image("race", "base", b"race layer", None);
    for round in 0..100 {
        let r = raw.put_manifest(
            "race",
            &digest.to_string(),
            media_type::OCI_MANIFEST,
            &manifest,
        );
        assert_eq!(r.status().as_u16(), 201);
        let tag = format!("t{round}");
        std::thread::scope(|s| {
            let put =
                s.spawn(|| raw.put_manifest("race", &tag, media_type::OCI_MANIFEST, &manifest));
            let del = s.spawn(|| {
                raw.req(Method::DELETE, &format!("/v2/race/manifests/{digest}"))
                    .send()
                    .unwrap()
            });
            put.join().unwrap();
            del.join().unwrap();
        });
        let tags: serde_json::Value = raw.get("/v2/race/tags/list").json().unwrap();
        let tagged = tags["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == tag.as_str());
        let present = raw
            .get(&format!("/v2/race/manifests/{digest}"))
            .status()
            .as_u16()
            == 200;
        assert!(
            !tagged || present,
            "round {round}: tag {tag} names a deleted manifest"
        );
        if tagged {
            raw.req(Method::DELETE, &format!("/v2/race/manifests/{tag}"))
                .send()
                .unwrap();
        }
    }
}

fn manifest_with_layer(config: &[u8], layer: Descriptor) -> Vec<u8> {
    ImageManifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        artifact_type: None,
        config: Descriptor::for_bytes(media_type::OCI_CONFIG, config),
        layers: vec![layer],
        subject: None,
        annotations: None,
    }
    .to_json()
}

/// Item 10: layers with foreign `urls` need a non-distributable media type and an allowed URL.
#[test]
fn foreign_layers_need_an_allowed_url() {
    let reg = RegistryProcess::start();
    let raw = patient(&reg);
    let config = config_json(None);
    raw.push_blob("f", &config);
    let foreign = |mt: &str, url: &str| {
        let mut d = Descriptor::for_bytes(mt, b"never pushed");
        d.urls = Some(vec![url.to_owned()]);
        manifest_with_layer(&config, d)
    };
    for m in [
        foreign(media_type::OCI_LAYER_GZIP, "https://evil.example/x"),
        foreign(media_type::OCI_LAYER_NONDIST_GZIP, "https://evil.example/x"),
    ] {
        let (status, code) = error_code(raw.put_manifest("f", "v1", media_type::OCI_MANIFEST, &m));
        assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"));
    }

    let reg = RegistryProcess::start_with(&["--foreign-layer-url", r"^https://mirror\.example/"]);
    let raw = patient(&reg);
    raw.push_blob("f", &config);
    let ok = foreign(
        media_type::OCI_LAYER_NONDIST_GZIP,
        "https://mirror.example/l.tgz",
    );
    assert_eq!(
        raw.put_manifest("f", "v1", media_type::OCI_MANIFEST, &ok)
            .status()
            .as_u16(),
        201
    );
    for m in [
        foreign(
            media_type::OCI_LAYER_NONDIST_GZIP,
            "https://other.example/l.tgz",
        ),
        foreign(
            media_type::OCI_LAYER_NONDIST_GZIP,
            "https://mirror.example/l.tgz#x",
        ),
        foreign(media_type::OCI_LAYER_GZIP, "https://mirror.example/l.tgz"),
    ] {
        let (status, code) = error_code(raw.put_manifest("f", "v2", media_type::OCI_MANIFEST, &m));
        assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"));
    }
}

/// Item 11: the challenge's realm uses no unvalidated request value and quotes what it says.
#[test]
fn challenge_realm_ignores_untrusted_forwarded_headers() {
    // The challenge a client gets when it claims (in vain, or through a proxy) to use https.
    let challenge_via_https = |reg: &RegistryProcess| {
        let r = patient(reg)
            .req(Method::GET, "/v2/")
            .header("x-forwarded-proto", "https")
            .send()
            .unwrap();
        header(r.headers(), "www-authenticate")
    };
    let reg = RegistryProcess::start_with_users(5, None, &[]);
    assert_eq!(
        challenge_via_https(&reg),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"archway-registry\"",
            reg.host()
        )
    );
    // A Host that would break out of the quoted realm is not used.
    let mut s = TcpStream::connect(reg.host()).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\",error=\"y\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let challenge = resp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or("");
    assert!(!challenge.contains("error=\"y"), "{resp}");

    // From a trusted proxy, X-Forwarded-Proto is believed.
    let reg = RegistryProcess::start_with_users(5, None, &["--trusted-proxy", "127.0.0.1"]);
    let challenge = challenge_via_https(&reg);
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"https://{}/token\"", reg.host())),
        "{challenge}"
    );
}

/// Item 12: the small protocol holes.
#[test]
fn protocol_edge_cases() {
    let reg = RegistryProcess::start();
    let raw = patient(&reg);
    let config = config_json(None);
    let c = raw.push_blob("edge/app", &config);
    let layer = b"edge layer".to_vec();
    let l = raw.push_blob("edge/app", &layer);

    // A descriptor whose size is not the stored blob's.
    let wrong_size = manifest_with_layer(
        &config,
        Descriptor::new(media_type::OCI_LAYER_TAR, l.clone(), 999),
    );
    let (status, code) =
        error_code(raw.put_manifest("edge/app", "v1", media_type::OCI_MANIFEST, &wrong_size));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"));

    // A chunked PATCH body longer than its Content-Range.
    let location = raw.start_upload("edge/app");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![1u8; 60]), Ok(vec![2u8; 60])];
    let chunked = reqwest::blocking::Body::new(ChunkedReader(chunks.into_iter(), Vec::new()));
    let r = raw
        .req(Method::PATCH, &location)
        .header("content-range", "0-99")
        .body(chunked)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = raw.get(&location);
    let range = header(r.headers(), "range");
    let end: u64 = range.split('-').nth(1).unwrap().parse().unwrap();
    assert!(
        end < 100,
        "upload holds more than the declared range: {range}"
    );

    // `end - start + 1` overflowing.
    let location = raw.start_upload("edge/app");
    let (status, _) = error_code(
        raw.req(Method::PATCH, &location)
            .header("content-range", "0-18446744073709551615")
            .body("x")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 416);

    // tags/list on a name that is only a path prefix.
    raw.push_image("pre/fix/app", "v1", b"p", None);
    let (status, code) = error_code(raw.get("/v2/pre/tags/list"));
    assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"));
    let (status, code) = error_code(raw.get("/v2/pre/fix/tags/list"));
    assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"));

    // An invalid Range is ignored: the whole blob.
    let r = raw
        .req(Method::GET, &format!("/v2/edge/app/blobs/{l}"))
        .header("range", "bytes=2-1")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(body(r), layer);

    // A malformed digest inside a manifest is named.
    let bad = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{c}","size":{}}},"layers":[{{"mediaType":"{}","digest":"sha256:0123nothex","size":1}}]}}"#,
        media_type::OCI_MANIFEST,
        media_type::OCI_CONFIG,
        config.len(),
        media_type::OCI_LAYER_TAR
    );
    let r = raw.put_manifest("edge/app", "v2", media_type::OCI_MANIFEST, bad.as_bytes());
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().unwrap();
    assert!(text.contains("sha256:0123nothex"), "{text}");
    assert!(!text.contains("not valid JSON"), "{text}");

    // JSON nesting depth is bounded.
    let deep = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{c}","size":{}}},"layers":[],"x":{}0{}}}"#,
        media_type::OCI_MANIFEST,
        media_type::OCI_CONFIG,
        config.len(),
        "[".repeat(40),
        "]".repeat(40)
    );
    let (status, code) =
        error_code(raw.put_manifest("edge/app", "v3", media_type::OCI_MANIFEST, deep.as_bytes()));
    assert_eq!((status, code.as_str()), (400, "MANIFEST_INVALID"));
}

/// Item 12, auth part: scheme names are case-insensitive, and an invalid or expired token is
/// 401 even where anonymous clients may pull.
#[test]
fn auth_schemes_and_invalid_tokens() {
    let reg = RegistryProcess::start_with_users(5, None, &["--anonymous-pull"]);
    let raw = patient(&reg);
    let basic = base64_encode("alice:pw");
    for scheme in ["Basic", "BASIC", "basic"] {
        let r = raw
            .req(Method::GET, "/v2/")
            .header("authorization", format!("{scheme} {basic}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }
    let tok = bearer(token(&raw, Some(("alice", "pw")), &["repository:x:pull"]));
    let bare = tok.trim_start_matches("Bearer ");
    for scheme in ["Bearer", "BEARER", "bearer"] {
        let r = raw
            .req(Method::GET, "/v2/x/tags/list")
            .header("authorization", format!("{scheme} {bare}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{scheme}"); // allowed, just empty
    }
    // Anonymous may pull, but a forged token is not anonymous.
    assert_eq!(raw.get("/v2/x/tags/list").status().as_u16(), 404);
    let mut forged = bare.to_owned();
    forged.pop();
    forged.push(if bare.ends_with('A') { 'B' } else { 'A' });
    let r = raw
        .req(Method::GET, "/v2/x/tags/list")
        .header("authorization", format!("Bearer {forged}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(header(r.headers(), "www-authenticate").contains("error=\"invalid_token\""));
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A body of unknown length (sent chunked) from a list of chunks.
struct ChunkedReader(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>, Vec<u8>);

impl Read for ChunkedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1.is_empty() {
            match self.0.next() {
                Some(chunk) => self.1 = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.1.len());
        buf[..n].copy_from_slice(&self.1[..n]);
        self.1.drain(..n);
        Ok(n)
    }
}
