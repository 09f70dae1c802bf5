//! Crash safety: many concurrent pushes, `kill -9` mid-way, restart, then everything served
//! is intact, nothing references a missing blob, acknowledged pushes survived, and clients'
//! retries (resuming their uploads) succeed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archway_oci::{Digest, ParsedManifest, media_type};
use reqwest::Method;

use crate::support::{Raw, RegistryProcess, body, config_json, header, image_manifest};

struct Pushed {
    repo: String,
    tag: String,
    manifest: Digest,
}

/// One push: a chunked upload of the layer (resumed from the server's status after errors),
/// a monolithic config upload, then the manifest. Any error is returned to the caller.
fn push(
    raw: &Raw,
    repo: &str,
    tag: &str,
    layer: &[u8],
    resume: &mut Option<String>,
) -> Result<Digest, String> {
    let err = |e: reqwest::Error| e.to_string();
    let d = Digest::sha256(layer);
    // Resume an upload session if we have one, else start a new one.
    let (location, mut offset) = match resume.take() {
        Some(loc) => {
            let r = raw.get(&loc);
            if r.status().as_u16() == 204 {
                let range = header(r.headers(), "range");
                let end: u64 = range.split('-').nth(1).unwrap().parse().unwrap();
                let size = if range == "0-0" { 0 } else { end + 1 };
                (loc, size as usize)
            } else {
                let r = raw
                    .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                    .send()
                    .map_err(err)?;
                (header(r.headers(), "location"), 0)
            }
        }
        None => {
            let r = raw
                .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .send()
                .map_err(err)?;
            if r.status().as_u16() != 202 {
                return Err(format!("POST upload: {}", r.status()));
            }
            (header(r.headers(), "location"), 0)
        }
    };
    *resume = Some(location.clone());
    while offset < layer.len() {
        let end = (offset + 64 * 1024).min(layer.len());
        let r = raw
            .req(Method::PATCH, &location)
            .header("content-range", format!("{offset}-{}", end - 1))
            .body(layer[offset..end].to_vec())
            .send()
            .map_err(err)?;
        if r.status().as_u16() != 202 {
            return Err(format!("PATCH: {}", r.status()));
        }
        offset = end;
    }
    let r = raw
        .req(Method::PUT, &format!("{location}?digest={d}"))
        .send()
        .map_err(err)?;
    if r.status().as_u16() != 201 {
        return Err(format!("PUT upload: {}", r.status()));
    }
    *resume = None;
    let config = config_json(None);
    let r = raw
        .req(
            Method::POST,
            &format!(
                "/v2/{repo}/blobs/uploads/?digest={}",
                Digest::sha256(&config)
            ),
        )
        .body(config)
        .send()
        .map_err(err)?;
    if r.status().as_u16() != 201 {
        return Err(format!("config: {}", r.status()));
    }
    let (manifest, _) = image_manifest(layer, None);
    let r = raw
        .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
        .header("content-type", media_type::OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .map_err(err)?;
    if r.status().as_u16() != 201 {
        return Err(format!("manifest: {}", r.status()));
    }
    Ok(Digest::sha256(&manifest))
}

#[test]
fn kill_9_during_concurrent_pushes_loses_nothing_acknowledged() {
    let mut reg = RegistryProcess::start();
    let base = reg.url("");
    let acknowledged: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    let restarted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Pushes that failed (the server was down), and pushers that completed one after the restart.
    let failed = Arc::new(AtomicUsize::new(0));
    let back = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let acknowledged = acknowledged.clone();
            let restarted = restarted.clone();
            let stop = stop.clone();
            let (failed, back) = (failed.clone(), back.clone());
            let base = base.clone();
            std::thread::spawn(move || {
                let raw = Raw {
                    http: reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap(),
                    base,
                    auth: None,
                };
                let repo = format!("crash/r{}", t % 4);
                let mut failures_after_restart = 0;
                let mut retried = 0;
                let mut counted_back = false;
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let tag = format!("t{t}-{i}");
                    let size = 100_000 + (t * 37_000 + i * 11_000) % 900_000;
                    let layer: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
                    let mut resume = None;
                    loop {
                        match push(&raw, &repo, &tag, &layer, &mut resume) {
                            Ok(manifest) => {
                                acknowledged.lock().unwrap().push(Pushed {
                                    repo: repo.clone(),
                                    tag: tag.clone(),
                                    manifest,
                                });
                                if restarted.load(Ordering::SeqCst) && !counted_back {
                                    counted_back = true;
                                    back.fetch_add(1, Ordering::SeqCst);
                                }
                                break;
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                // The server is down: wait for it, then retry (resuming).
                                while !restarted.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                retried += 1;
                                if restarted.load(Ordering::SeqCst) {
                                    failures_after_restart += 1;
                                    assert!(
                                        failures_after_restart < 20,
                                        "retries keep failing: {e}"
                                    );
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                            }
                        }
                    }
                    if restarted.load(Ordering::SeqCst) && retried > 0 && i > 0 {
                        // One completed push after the restart is enough for this thread.
                        break;
                    }
                }
                retried
            })
        })
        .collect();

    // Let pushes pile up (at least two per pusher), then pull the plug mid-way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 32 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = acknowledged.lock().unwrap().len();
    reg.kill9();
    // Wait until pushes have hit the dead server, then bring it back.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while failed.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no push failed after kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.restart();
    restarted.store(true, Ordering::SeqCst);
    // Every pusher completes a push against the restarted server before we stop them.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while back.load(Ordering::SeqCst) < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 16 pushers got through after the restart",
            back.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let mut retried_total = 0;
    for t in threads {
        retried_total += t.join().expect("pusher thread");
    }
    assert!(
        before >= 16,
        "too few pushes before the kill ({before}) for a meaningful test"
    );
    assert!(retried_total > 0, "no push was interrupted by the kill");

    // 1. Every blob on disk matches its name.
    let blobs_dir = reg.root.join("blobs/sha256");
    let mut on_disk = 0;
    for prefix in std::fs::read_dir(&blobs_dir).unwrap() {
        for f in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with('.'),
                "temporary file visible as a blob: {name}"
            );
            let data = std::fs::read(f.path()).unwrap();
            assert_eq!(Digest::sha256(&data).hex(), name, "corrupt blob");
            on_disk += 1;
        }
    }
    assert!(on_disk > before);

    // 2. Every tag resolves to a manifest whose every blob is served intact.
    let raw = Raw::new(&reg);
    let catalog: serde_json::Value = raw.get("/v2/_catalog").json().unwrap();
    let mut tags_checked = 0;
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: serde_json::Value = raw.get(&format!("/v2/{repo}/tags/list")).json().unwrap();
        for tag in tags["tags"].as_array().unwrap() {
            let r = raw.get(&format!("/v2/{repo}/manifests/{}", tag.as_str().unwrap()));
            assert_eq!(r.status().as_u16(), 200, "{repo}:{tag}");
            let digest: Digest = header(r.headers(), "docker-content-digest")
                .parse()
                .unwrap();
            let bytes = body(r);
            digest.verify(&bytes).unwrap();
            let parsed = ParsedManifest::parse(&bytes, None).unwrap();
            for blob in parsed.blobs() {
                let data = body(raw.get(&format!("/v2/{repo}/blobs/{}", blob.digest)));
                blob.digest
                    .verify(&data)
                    .unwrap_or_else(|e| panic!("{repo}:{tag}: {e}"));
            }
            tags_checked += 1;
        }
    }

    // 3. Every acknowledged push is there, with the acknowledged digest (including retries).
    let all = acknowledged.lock().unwrap();
    for p in all.iter() {
        let r = raw.head(&format!("/v2/{}/manifests/{}", p.repo, p.tag));
        assert_eq!(r.status().as_u16(), 200, "{}:{} lost", p.repo, p.tag);
        assert_eq!(
            header(r.headers(), "docker-content-digest"),
            p.manifest.to_string()
        );
    }
    assert!(tags_checked >= all.len());
    eprintln!(
        "crash test: {before} pushes acknowledged before kill -9, {} in all; {retried_total} retries; {on_disk} blobs verified on disk; {tags_checked} tags verified",
        all.len()
    );
}
