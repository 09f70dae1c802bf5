//! `archway registry gc`: what is reachable stays, what is not goes, young content is safe.

use archway_oci::{Descriptor, Digest, ImageManifest, Index, Platform, media_type};
use reqwest::Method;

use crate::support::{
    Backend, Raw, RegistryProcess, archway, body, config_json, image_manifest, run,
};

/// Pushes a one-layer image by digest only (no tag), as multi-arch pushes do for children.
fn push_untagged(raw: &Raw, repo: &str, layer: &[u8], platform: &Platform) -> Descriptor {
    let (m, _) = image_manifest(layer, Some(platform));
    raw.push_blob(repo, layer);
    raw.push_blob(repo, &config_json(Some(platform)));
    let d = Digest::sha256(&m);
    let r = raw.put_manifest(repo, &d.to_string(), media_type::OCI_MANIFEST, &m);
    assert_eq!(r.status().as_u16(), 201);
    let mut desc = Descriptor::new(media_type::OCI_MANIFEST, d, m.len() as u64);
    desc.platform = Some(platform.clone());
    desc
}

fn gc(reg: &RegistryProcess, extra: &[&str]) -> serde_json::Value {
    let out = run(archway()
        .args(["registry", "gc", "--format", "json"])
        .args(reg.storage_args())
        .args(extra));
    serde_json::from_str(&out).unwrap()
}

fn removed_blobs(report: &serde_json::Value) -> Vec<String> {
    report["blobs_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn keeps_index_children_referrers_and_shared_layers(backend: Backend) {
    let reg = RegistryProcess::start_on(&backend, &[]);
    let raw = Raw::new(&reg);

    // A multi-arch image whose per-platform manifests have no tags of their own.
    let amd = push_untagged(&raw, "app", b"amd64 layer", &Platform::linux_amd64());
    let arm = push_untagged(&raw, "app", b"arm64 layer", &Platform::linux_arm64());
    let mut index = Index::new_oci();
    index.manifests = vec![amd.clone(), arm.clone()];
    assert_eq!(
        raw.put_manifest("app", "latest", media_type::OCI_INDEX, &index.to_json())
            .status()
            .as_u16(),
        201
    );

    // A signature referring to the arm64 manifest.
    let empty = raw.push_blob("app", b"{}");
    let sig_layer = raw.push_blob("app", b"signature");
    let sig = ImageManifest {
        schema_version: 2,
        media_type: media_type::OCI_MANIFEST.to_owned(),
        artifact_type: Some("application/vnd.example.sig".into()),
        config: Descriptor::new(media_type::OCI_EMPTY, empty.clone(), 2),
        layers: vec![Descriptor::new(
            "application/octet-stream",
            sig_layer.clone(),
            9,
        )],
        subject: Some(arm.clone()),
        annotations: None,
    }
    .to_json();
    let sig_digest = Digest::sha256(&sig);
    raw.put_manifest(
        "app",
        &sig_digest.to_string(),
        media_type::OCI_MANIFEST,
        &sig,
    );

    // An old build, untagged, sharing the amd64 layer and with one layer of its own.
    let (old_manifest, old) = {
        let shared = b"amd64 layer";
        let own = raw.push_blob("app", b"obsolete layer");
        let config = config_json(None);
        let m = ImageManifest {
            schema_version: 2,
            media_type: media_type::OCI_MANIFEST.to_owned(),
            artifact_type: None,
            config: Descriptor::for_bytes(media_type::OCI_CONFIG, &config),
            layers: vec![
                Descriptor::for_bytes(media_type::OCI_LAYER_TAR, shared),
                Descriptor::new(media_type::OCI_LAYER_TAR, own, 14),
            ],
            subject: None,
            annotations: None,
        }
        .to_json();
        let d = Digest::sha256(&m);
        raw.put_manifest("app", "old", media_type::OCI_MANIFEST, &m);
        raw.req(Method::DELETE, "/v2/app/manifests/old")
            .send()
            .unwrap();
        (m, d)
    };
    let obsolete = Digest::sha256(b"obsolete layer");

    // Within the grace period nothing is touched, whatever is reachable.
    let report = gc(&reg, &[]);
    assert!(removed_blobs(&report).is_empty(), "{report}");
    assert_eq!(report["manifests_removed"], serde_json::json!([]));

    // A dry run with no grace reports the old build and nothing else, and removes nothing.
    let report = gc(&reg, &["--grace", "0s", "--dry-run"]);
    assert_eq!(report["dry_run"], true);
    let mut expected = vec![old.to_string(), obsolete.to_string()];
    expected.sort();
    let mut got = removed_blobs(&report);
    got.sort();
    assert_eq!(got, expected, "{report}");
    assert_eq!(
        raw.get(&format!("/v2/app/manifests/{old}"))
            .status()
            .as_u16(),
        200
    );

    // For real.
    let report = gc(&reg, &["--grace", "0s"]);
    let mut got = removed_blobs(&report);
    got.sort();
    assert_eq!(got, expected, "{report}");
    assert_eq!(report["bytes_freed"], (old_manifest.len() + 14) as u64);
    assert_eq!(
        raw.get(&format!("/v2/app/manifests/{old}"))
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        raw.get(&format!("/v2/app/blobs/{obsolete}"))
            .status()
            .as_u16(),
        404
    );

    // Everything `latest` needs is still served: index, both children, configs, layers, and
    // the signature with its blobs.
    let idx: Index = serde_json::from_slice(&body(raw.get("/v2/app/manifests/latest"))).unwrap();
    for child in &idx.manifests {
        let m: ImageManifest = serde_json::from_slice(&body(
            raw.get(&format!("/v2/app/manifests/{}", child.digest)),
        ))
        .unwrap();
        for blob in std::iter::once(&m.config).chain(&m.layers) {
            let data = body(raw.get(&format!("/v2/app/blobs/{}", blob.digest)));
            blob.digest.verify(&data).unwrap();
        }
    }
    let referrers: Index =
        serde_json::from_slice(&body(raw.get(&format!("/v2/app/referrers/{}", arm.digest))))
            .unwrap();
    assert_eq!(referrers.manifests.len(), 1);
    for d in [&sig_digest, &empty, &sig_layer] {
        assert_eq!(
            raw.get(&format!("/v2/app/blobs/{d}")).status().as_u16(),
            200,
            "{d}"
        );
    }
    // A second run finds nothing more.
    let report = gc(&reg, &["--grace", "0s"]);
    assert!(removed_blobs(&report).is_empty(), "{report}");
}

fn deleted_tags_release_their_whole_graph_and_stale_uploads_go(backend: Backend) {
    let reg = RegistryProcess::start_on(&backend, &[]);
    let raw = Raw::new(&reg);
    let (_, index_digest, children) = raw.push_multiarch("gone", "v1");
    for tag in ["v1", "only-amd64", "only-arm64"] {
        raw.req(Method::DELETE, &format!("/v2/gone/manifests/{tag}"))
            .send()
            .unwrap();
    }
    let upload = raw.start_upload("gone");
    let report = gc(&reg, &["--grace", "0s", "--upload-max-age", "0s"]);
    let removed = removed_blobs(&report);
    assert!(removed.contains(&index_digest.to_string()));
    for c in children {
        assert!(removed.contains(&c.to_string()));
    }
    // index + 2 manifests + 2 layers + 2 configs
    assert_eq!(removed.len(), 7, "{report}");
    assert_eq!(report["uploads_removed"], 1);
    assert_eq!(raw.get(&upload).status().as_u16(), 404);
    if backend == Backend::Fs {
        assert_eq!(
            std::fs::read_dir(reg.root.join("uploads")).unwrap().count(),
            0
        );
    }
}

#[test]
fn text_report_and_bad_root() {
    let reg = RegistryProcess::start();
    let out = run(archway()
        .args(["registry", "gc", "--dry-run", "--root"])
        .arg(&reg.root));
    assert!(out.contains("would remove 0 manifests, 0 blobs"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let out = archway()
        .args(["registry", "gc", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an archway registry root"));
}

on_each_backend!(
    keeps_index_children_referrers_and_shared_layers,
    deleted_tags_release_their_whole_graph_and_stale_uploads_go,
);
