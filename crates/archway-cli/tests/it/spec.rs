//! The registry's own conformance suite: every endpoint of the OCI Distribution Spec v1.1 and
//! every error code it can return, against the real binary on loopback.

use archway_oci::{Descriptor, Digest, ImageManifest, Index, media_type};
use reqwest::Method;

use crate::support::{Backend, Raw, RegistryProcess, body, error_code, header, image_manifest};

fn setup(backend: Backend) -> (RegistryProcess, Raw) {
    let reg = RegistryProcess::start_on(&backend, &[]);
    let raw = Raw::new(&reg);
    (reg, raw)
}

fn base_endpoint_announces_api_version(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let r = raw.get("/v2/");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(r.headers(), "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(raw.get("/v2").status().as_u16(), 200);
    let (status, code) = error_code(raw.get("/v3/"));
    assert_eq!((status, code.as_str()), (404, "NOT_FOUND"));
}

fn monolithic_blob_upload_and_reads(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let d = Digest::sha256(&data);
    let r = raw
        .req(Method::POST, &format!("/v2/a/b/blobs/uploads/?digest={d}"))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        header(r.headers(), "location"),
        format!("/v2/a/b/blobs/{d}")
    );
    assert_eq!(header(r.headers(), "docker-content-digest"), d.to_string());

    let r = raw.head(&format!("/v2/a/b/blobs/{d}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "content-length"), "100000");
    assert_eq!(header(r.headers(), "docker-content-digest"), d.to_string());

    let r = raw.get(&format!("/v2/a/b/blobs/{d}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(body(r), data);

    // Range requests.
    let r = raw
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(header(r.headers(), "content-range"), "bytes 10-19/100000");
    assert_eq!(body(r), data[10..20].to_vec());
    let r = raw
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("range", "bytes=-5")
        .send()
        .unwrap();
    assert_eq!(body(r), data[99_995..].to_vec());
    let r = raw
        .req(Method::GET, &format!("/v2/a/b/blobs/{d}"))
        .header("range", "bytes=100000-")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 416);
    assert_eq!(header(r.headers(), "content-range"), "bytes */100000");

    // Blobs are visible only in the repository they were pushed to.
    let (status, code) = error_code(raw.get(&format!("/v2/other/blobs/{d}")));
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(
        raw.head(&format!("/v2/other/blobs/{d}")).status().as_u16(),
        404
    );

    // A wrong digest in a monolithic upload leaves nothing behind.
    let wrong = Digest::sha256(b"other");
    let (status, code) = error_code(
        raw.req(
            Method::POST,
            &format!("/v2/a/b/blobs/uploads/?digest={wrong}"),
        )
        .body(b"data".to_vec())
        .send()
        .unwrap(),
    );
    assert_eq!((status, code.as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(
        raw.head(&format!("/v2/a/b/blobs/{wrong}"))
            .status()
            .as_u16(),
        404
    );

    // A malformed digest.
    let (status, code) = error_code(
        raw.req(Method::POST, "/v2/a/b/blobs/uploads/?digest=sha256:nothex")
            .body(b"x".to_vec())
            .send()
            .unwrap(),
    );
    assert_eq!((status, code.as_str()), (400, "DIGEST_INVALID"));
    let (status, code) = error_code(raw.get("/v2/a/b/blobs/sha256:123"));
    assert_eq!((status, code.as_str()), (400, "DIGEST_INVALID"));

    // DELETE removes the repository's link.
    let r = raw
        .req(Method::DELETE, &format!("/v2/a/b/blobs/{d}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let (status, code) = error_code(raw.get(&format!("/v2/a/b/blobs/{d}")));
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
    let (status, code) = error_code(
        raw.req(Method::DELETE, &format!("/v2/a/b/blobs/{d}"))
            .send()
            .unwrap(),
    );
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
}

fn sha512_blobs(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let data = b"sha512 content".to_vec();
    let d = Digest::of(archway_oci::Algorithm::Sha512, &data);
    let r = raw
        .req(Method::POST, &format!("/v2/x/blobs/uploads/?digest={d}"))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(body(raw.get(&format!("/v2/x/blobs/{d}"))), data);
}

/// A manifest pushed by a sha512 digest is answered in sha512 (`Docker-Content-Digest`,
/// `Location`), with or without `?tag=`, and the tags it gets name it by that digest.
fn sha512_manifests_and_push_by_digest_with_tags(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let (m, _) = raw.push_image("s", "sha256-tag", b"layer for sha512", None);
    let d512 = Digest::of(archway_oci::Algorithm::Sha512, &m);
    let r = raw.put_manifest("s", &d512.to_string(), media_type::OCI_MANIFEST, &m);
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest"),
        d512.to_string()
    );
    assert_eq!(
        header(r.headers(), "location"),
        format!("/v2/s/manifests/{d512}")
    );
    for method in [Method::GET, Method::HEAD] {
        let r = raw
            .req(method.clone(), &format!("/v2/s/manifests/{d512}"))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{method}");
        assert_eq!(
            header(r.headers(), "docker-content-digest"),
            d512.to_string()
        );
    }
    // Push by digest with tags (distribution-spec 1.1.1): every tag named, each echoed in
    // an OCI-Tag header, and reading a tag answers the digest in the client's algorithm.
    let r = raw
        .req(
            Method::PUT,
            &format!("/v2/s/manifests/{d512}?tag=v1&tag=latest"),
        )
        .header("content-type", media_type::OCI_MANIFEST)
        .body(m.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        header(r.headers(), "docker-content-digest"),
        d512.to_string()
    );
    let tags: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["v1", "latest"]);
    for tag in ["v1", "latest"] {
        let r = raw.head(&format!("/v2/s/manifests/{tag}"));
        assert_eq!(
            header(r.headers(), "docker-content-digest"),
            d512.to_string()
        );
        assert_eq!(body(raw.get(&format!("/v2/s/manifests/{tag}"))), m);
    }
    // An invalid tag in the query stores nothing: 400 TAG_INVALID.
    let r = raw
        .req(Method::PUT, &format!("/v2/s/manifests/{d512}?tag=-no"))
        .header("content-type", media_type::OCI_MANIFEST)
        .body(m.clone())
        .send()
        .unwrap();
    let (status, c) = error_code(r);
    assert_eq!((status, c.as_str()), (400, "TAG_INVALID"));
    assert_eq!(raw.get("/v2/s/manifests/-no").status().as_u16(), 404);
}

/// `--allow-sparse`: an index may name children the registry lacks (what mirroring one
/// platform under the original index needs); without it the index is refused.
fn sparse_indexes_are_opt_in(backend: Backend) {
    for sparse in [false, true] {
        let flags: &[&str] = if sparse { &["--allow-sparse"] } else { &[] };
        let reg = RegistryProcess::start_on(&backend, flags);
        let raw = Raw::new(&reg);
        let (m, d) = raw.push_image("sp", "amd64", b"present layer", None);
        let absent = Digest::sha256(b"a manifest this registry never saw");
        let mut index = Index::new_oci();
        index.manifests = vec![
            Descriptor::new(media_type::OCI_MANIFEST, d.clone(), m.len() as u64),
            Descriptor::new(media_type::OCI_MANIFEST, absent.clone(), 123),
        ];
        let bytes = index.to_json();
        let r = raw.put_manifest("sp", "multi", media_type::OCI_INDEX, &bytes);
        if sparse {
            assert_eq!(r.status().as_u16(), 201);
            assert_eq!(body(raw.get("/v2/sp/manifests/multi")), bytes);
            assert_eq!(
                raw.get(&format!("/v2/sp/manifests/{absent}"))
                    .status()
                    .as_u16(),
                404
            );
            // A manifest whose blobs are absent, too.
            let (manifest, _) = image_manifest(b"never pushed layer", None);
            let r = raw.put_manifest("sp", "blobless", media_type::OCI_MANIFEST, &manifest);
            assert_eq!(r.status().as_u16(), 201);
            // A present child must still have the size the index says.
            let mut wrong = index.clone();
            wrong.manifests[0].size += 1;
            let (status, c) = error_code(raw.put_manifest(
                "sp",
                "wrong",
                media_type::OCI_INDEX,
                &wrong.to_json(),
            ));
            assert_eq!((status, c.as_str()), (400, "MANIFEST_INVALID"));
        } else {
            let (status, c) = error_code(r);
            assert_eq!((status, c.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));
        }
    }
}

fn post_then_put_upload(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let r = raw
        .req(Method::POST, "/v2/x/blobs/uploads/")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let location = header(r.headers(), "location");
    assert!(location.starts_with("/v2/x/blobs/uploads/"), "{location}");
    assert_eq!(header(r.headers(), "range"), "0-0");
    assert!(!header(r.headers(), "docker-upload-uuid").is_empty());
    let data = b"whole blob in the PUT".to_vec();
    let d = Digest::sha256(&data);
    let r = raw
        .req(Method::PUT, &format!("{location}?digest={d}"))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(header(r.headers(), "location"), format!("/v2/x/blobs/{d}"));
    assert_eq!(body(raw.get(&format!("/v2/x/blobs/{d}"))), data);
    // The session is gone once completed.
    let (status, code) = error_code(raw.get(&location));
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
}

fn chunked_upload_with_status_and_out_of_order_chunks(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 199) as u8).collect();
    let d = Digest::sha256(&data);
    let r = raw
        .req(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .unwrap();
    let location = header(r.headers(), "location");

    let patch = |range: &str, chunk: &[u8]| {
        raw.req(Method::PATCH, &location)
            .header("content-type", "application/octet-stream")
            .header("content-range", range)
            .body(chunk.to_vec())
            .send()
            .unwrap()
    };
    let r = patch("0-9999", &data[..10_000]);
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(header(r.headers(), "range"), "0-9999");
    assert_eq!(header(r.headers(), "location"), location);

    // Out of order (a gap) and overlapping chunks are refused with 416 and the current range.
    for (range, chunk) in [
        ("20000-29999", &data[20_000..]),
        ("5000-14999", &data[5_000..15_000]),
    ] {
        let r = patch(range, chunk);
        assert_eq!(r.status().as_u16(), 416, "{range}");
        assert_eq!(header(r.headers(), "range"), "0-9999");
        let (_, code) = error_code(r);
        assert_eq!(code, "BLOB_UPLOAD_INVALID");
    }
    // Content-Range that disagrees with Content-Length.
    assert_eq!(
        patch("10000-10099", &data[10_000..10_050])
            .status()
            .as_u16(),
        416
    );

    let r = raw.get(&location);
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(header(r.headers(), "range"), "0-9999");

    assert_eq!(
        patch("10000-19999", &data[10_000..20_000])
            .status()
            .as_u16(),
        202
    );
    // A streamed chunk without Content-Range is appended.
    let r = raw
        .req(Method::PATCH, &location)
        .body(data[20_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(header(r.headers(), "range"), "0-29999");

    // Completing with the wrong digest is DIGEST_INVALID and nothing becomes visible.
    let bad = Digest::sha256(b"nope");
    let r = raw
        .req(Method::PUT, &format!("{location}?digest={bad}"))
        .send()
        .unwrap();
    let (status, code) = error_code(r);
    assert_eq!((status, code.as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(raw.head(&format!("/v2/c/blobs/{d}")).status().as_u16(), 404);

    // Again, correctly, with the final chunk in the PUT.
    let r = raw
        .req(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .unwrap();
    let location = header(r.headers(), "location");
    raw.req(Method::PATCH, &location)
        .header("content-range", "0-14999")
        .body(data[..15_000].to_vec())
        .send()
        .unwrap();
    let r = raw
        .req(Method::PUT, &format!("{location}?digest={d}"))
        .header("content-range", "15000-29999")
        .body(data[15_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(body(raw.get(&format!("/v2/c/blobs/{d}"))), data);

    // PUT without ?digest=.
    let r = raw
        .req(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .unwrap();
    let location = header(r.headers(), "location");
    let (status, code) = error_code(raw.req(Method::PUT, &location).send().unwrap());
    assert_eq!((status, code.as_str()), (400, "DIGEST_INVALID"));
}

fn cancel_upload_and_unknown_sessions(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let r = raw
        .req(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .unwrap();
    let location = header(r.headers(), "location");
    assert_eq!(
        raw.req(Method::DELETE, &location)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    let (status, code) = error_code(raw.get(&location));
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let (status, code) = error_code(
        raw.req(Method::PATCH, "/v2/c/blobs/uploads/not-a-uuid")
            .body(b"x".to_vec())
            .send()
            .unwrap(),
    );
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    // A session belongs to the repository that started it.
    let r = raw
        .req(Method::POST, "/v2/c/blobs/uploads/")
        .send()
        .unwrap();
    let id = header(r.headers(), "docker-upload-uuid");
    let (status, code) = error_code(raw.get(&format!("/v2/other/blobs/uploads/{id}")));
    assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
}

fn uploads_resume_after_a_server_restart(backend: Backend) {
    let (mut reg, raw) = setup(backend);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::sha256(&data);
    let r = raw
        .req(Method::POST, "/v2/r/blobs/uploads/")
        .send()
        .unwrap();
    let location = header(r.headers(), "location");
    raw.req(Method::PATCH, &location)
        .header("content-range", "0-1999999")
        .body(data[..2_000_000].to_vec())
        .send()
        .unwrap();

    reg.restart();
    let raw = Raw::new(&reg);

    let r = raw.get(&location);
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(header(r.headers(), "range"), "0-1999999");
    let r = raw
        .req(Method::PATCH, &location)
        .header("content-range", "2000000-2999999")
        .body(data[2_000_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = raw
        .req(Method::PUT, &format!("{location}?digest={d}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(body(raw.get(&format!("/v2/r/blobs/{d}"))), data);
}

fn cross_repository_mount(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let d = raw.push_blob("src/app", b"shared layer");
    let r = raw
        .req(
            Method::POST,
            &format!("/v2/dst/app/blobs/uploads/?mount={d}&from=src/app"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        header(r.headers(), "location"),
        format!("/v2/dst/app/blobs/{d}")
    );
    assert_eq!(
        body(raw.get(&format!("/v2/dst/app/blobs/{d}"))),
        b"shared layer"
    );

    // Unknown in the source repository: falls back to a new upload session.
    let unknown = Digest::sha256(b"not pushed");
    let r = raw
        .req(
            Method::POST,
            &format!("/v2/dst/app/blobs/uploads/?mount={unknown}&from=src/app"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(header(r.headers(), "location").contains("/blobs/uploads/"));
    // Mount from a repository that never had it, although another one does.
    let r = raw
        .req(
            Method::POST,
            &format!("/v2/dst2/blobs/uploads/?mount={d}&from=nobody"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

fn manifests_by_tag_and_digest_with_exact_bytes_and_types(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let layer = b"layer content".to_vec();
    let (manifest, digest) = raw.push_image("m/app", "v1", &layer, None);

    for reference in ["v1".to_owned(), digest.to_string()] {
        let r = raw.get(&format!("/v2/m/app/manifests/{reference}"));
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            header(r.headers(), "content-type"),
            media_type::OCI_MANIFEST
        );
        assert_eq!(
            header(r.headers(), "docker-content-digest"),
            digest.to_string()
        );
        assert_eq!(body(r), manifest);
        let r = raw.head(&format!("/v2/m/app/manifests/{reference}"));
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            header(r.headers(), "content-length"),
            manifest.len().to_string()
        );
    }

    // Docker schema 2: stored and served with its own media type, byte for byte, even with
    // unusual whitespace.
    let config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let c = raw.push_blob("m/app", &config);
    let l = raw.push_blob("m/app", b"docker layer");
    let docker = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{}\",\n   \"config\": {{\"mediaType\": \"{}\", \"size\": {}, \"digest\": \"{c}\"}},\n   \"layers\": [{{\"mediaType\": \"{}\", \"size\": 12, \"digest\": \"{l}\"}}]\n}}",
        media_type::DOCKER_MANIFEST,
        media_type::DOCKER_CONFIG,
        config.len(),
        media_type::DOCKER_LAYER_GZIP
    )
    .into_bytes();
    let r = raw.put_manifest("m/app", "docker", media_type::DOCKER_MANIFEST, &docker);
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    let docker_digest = Digest::sha256(&docker);
    assert_eq!(
        header(r.headers(), "docker-content-digest"),
        docker_digest.to_string()
    );
    assert_eq!(
        header(r.headers(), "location"),
        format!("/v2/m/app/manifests/{docker_digest}")
    );
    let r = raw.get("/v2/m/app/manifests/docker");
    assert_eq!(
        header(r.headers(), "content-type"),
        media_type::DOCKER_MANIFEST
    );
    assert_eq!(body(r), docker);

    // Docker manifest list over both.
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","size":{},"digest":"{}","platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{}","size":{},"digest":"{}","platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
        media_type::DOCKER_MANIFEST_LIST,
        media_type::OCI_MANIFEST,
        manifest.len(),
        digest,
        media_type::DOCKER_MANIFEST,
        docker.len(),
        docker_digest
    )
    .into_bytes();
    let r = raw.put_manifest("m/app", "list", media_type::DOCKER_MANIFEST_LIST, &list);
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
    let r = raw.get("/v2/m/app/manifests/list");
    assert_eq!(
        header(r.headers(), "content-type"),
        media_type::DOCKER_MANIFEST_LIST
    );
    assert_eq!(body(r), list);

    // A manifest is also readable through the blob endpoint.
    assert_eq!(
        body(raw.get(&format!("/v2/m/app/blobs/{digest}"))),
        manifest
    );

    // Pushing by digest.
    let r = raw.put_manifest(
        "m/app",
        &digest.to_string(),
        media_type::OCI_MANIFEST,
        &manifest,
    );
    assert_eq!(r.status().as_u16(), 201);
}

fn oci_index_of_two_platforms(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let (index, d, children) = raw.push_multiarch("multi", "latest");
    let r = raw.get("/v2/multi/manifests/latest");
    assert_eq!(header(r.headers(), "content-type"), media_type::OCI_INDEX);
    assert_eq!(header(r.headers(), "docker-content-digest"), d.to_string());
    assert_eq!(body(r), index);
    for c in children {
        assert_eq!(
            raw.get(&format!("/v2/multi/manifests/{c}"))
                .status()
                .as_u16(),
            200
        );
    }
}

fn manifest_errors(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let code = |r: reqwest::blocking::Response| error_code(r);

    // References to blobs the repository does not have.
    let (manifest, _) = image_manifest(b"never pushed", None);
    let (status, c) = code(raw.put_manifest("e", "v1", media_type::OCI_MANIFEST, &manifest));
    assert_eq!((status, c.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));
    // Layer pushed, config missing.
    raw.push_blob("e", b"never pushed");
    let (status, c) = code(raw.put_manifest("e", "v1", media_type::OCI_MANIFEST, &manifest));
    assert_eq!((status, c.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));
    // An index whose child is missing.
    let mut index = Index::new_oci();
    index
        .manifests
        .push(Descriptor::for_bytes(media_type::OCI_MANIFEST, b"{}"));
    let (status, c) = code(raw.put_manifest("e", "idx", media_type::OCI_INDEX, &index.to_json()));
    assert_eq!((status, c.as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));
    // Not JSON / not a manifest / schema 1 / content type disagreeing with mediaType.
    for (ct, body) in [
        (media_type::OCI_MANIFEST, b"{not json".to_vec()),
        (media_type::OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec()),
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", br#"{"schemaVersion":1,"fsLayers":[]}"#.to_vec()),
        (media_type::OCI_INDEX, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec()),
        ("text/html", br#"{"schemaVersion":2}"#.to_vec()),
    ] {
        let (status, c) = code(raw.put_manifest("e", "v1", ct, &body));
        assert_eq!((status, c.as_str()), (400, "MANIFEST_INVALID"), "{}", String::from_utf8_lossy(&body));
    }
    // Digest in the URL that does not match the body.
    let (m, _) = raw.push_image("e", "ok", b"layer", None);
    let wrong = Digest::sha256(b"x");
    let (status, c) = code(raw.put_manifest("e", &wrong.to_string(), media_type::OCI_MANIFEST, &m));
    assert_eq!((status, c.as_str()), (400, "DIGEST_INVALID"));
    // Invalid tag and name.
    let (status, c) = code(raw.put_manifest("e", "-bad", media_type::OCI_MANIFEST, &m));
    assert_eq!((status, c.as_str()), (400, "TAG_INVALID"));
    let (status, c) = code(raw.put_manifest("e", "sha256:zz", media_type::OCI_MANIFEST, &m));
    assert_eq!((status, c.as_str()), (400, "DIGEST_INVALID"));
    let (status, c) = code(raw.put_manifest("E/Upper", "v1", media_type::OCI_MANIFEST, &m));
    assert_eq!((status, c.as_str()), (400, "NAME_INVALID"));
    // Too large: 413 MANIFEST_INVALID (declared length, and streamed without one).
    let mut big = Vec::from(&br#"{"schemaVersion":2,"annotations":{"x":""#[..]);
    big.extend(std::iter::repeat_n(b'a', 4 * 1024 * 1024 + 10));
    big.extend_from_slice(br#""}}"#);
    let (status, c) = code(raw.put_manifest("e", "big", media_type::OCI_MANIFEST, &big));
    assert_eq!((status, c.as_str()), (413, "MANIFEST_INVALID"));
    // Unknown manifests.
    let (status, c) = code(raw.get("/v2/e/manifests/nope"));
    assert_eq!((status, c.as_str()), (404, "MANIFEST_UNKNOWN"));
    let (status, c) = code(raw.get(&format!("/v2/e/manifests/{wrong}")));
    assert_eq!((status, c.as_str()), (404, "MANIFEST_UNKNOWN"));
    assert_eq!(raw.head("/v2/e/manifests/nope").status().as_u16(), 404);
    // A reference that is neither a tag nor a digest names nothing: 404 MANIFEST_UNKNOWN for
    // reads and deletes, as distribution answers (it takes such a reference for an unknown
    // tag), not a 400.
    for reference in ["-bad", "sha256:zz", "a%20b", &"t".repeat(129)] {
        let path = format!("/v2/e/manifests/{reference}");
        let (status, c) = code(raw.get(&path));
        assert_eq!(
            (status, c.as_str()),
            (404, "MANIFEST_UNKNOWN"),
            "GET {reference}"
        );
        assert_eq!(raw.head(&path).status().as_u16(), 404, "HEAD {reference}");
        let (status, c) = code(raw.req(Method::DELETE, &path).send().unwrap());
        assert_eq!(
            (status, c.as_str()),
            (404, "MANIFEST_UNKNOWN"),
            "DELETE {reference}"
        );
    }
    // Unsupported method.
    let (status, c) = code(raw.req(Method::POST, "/v2/e/manifests/v1").send().unwrap());
    assert_eq!((status, c.as_str()), (405, "UNSUPPORTED"));
}

fn manifest_and_tag_deletion(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let (_, d) = raw.push_image("del", "v1", b"l1", None);
    let r = raw.put_manifest(
        "del",
        "v2",
        media_type::OCI_MANIFEST,
        &body(raw.get("/v2/del/manifests/v1")),
    );
    assert_eq!(r.status().as_u16(), 201);

    // Deleting a tag leaves the manifest and other tags.
    assert_eq!(
        raw.req(Method::DELETE, "/v2/del/manifests/v1")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    let (status, c) = error_code(raw.get("/v2/del/manifests/v1"));
    assert_eq!((status, c.as_str()), (404, "MANIFEST_UNKNOWN"));
    assert_eq!(
        raw.get(&format!("/v2/del/manifests/{d}")).status().as_u16(),
        200
    );
    let (status, c) = error_code(
        raw.req(Method::DELETE, "/v2/del/manifests/v1")
            .send()
            .unwrap(),
    );
    assert_eq!((status, c.as_str()), (404, "MANIFEST_UNKNOWN"));

    // Deleting by digest removes the manifest and every tag naming it.
    assert_eq!(
        raw.req(Method::DELETE, &format!("/v2/del/manifests/{d}"))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        raw.get(&format!("/v2/del/manifests/{d}")).status().as_u16(),
        404
    );
    assert_eq!(raw.get("/v2/del/manifests/v2").status().as_u16(), 404);
    let tags: serde_json::Value = raw.get("/v2/del/tags/list").json().unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
}

fn tags_list_and_catalog_pagination(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let (m, _) = raw.push_image("p/one", "c", b"x", None);
    for tag in ["a", "b", "d", "e"] {
        assert_eq!(
            raw.put_manifest("p/one", tag, media_type::OCI_MANIFEST, &m)
                .status()
                .as_u16(),
            201
        );
    }
    raw.push_image("p/two", "t", b"y", None);
    raw.push_image("a-first", "t", b"z", None);

    let v: serde_json::Value = raw.get("/v2/p/one/tags/list").json().unwrap();
    assert_eq!(
        v,
        serde_json::json!({"name": "p/one", "tags": ["a", "b", "c", "d", "e"]})
    );
    let r = raw.get("/v2/p/one/tags/list?n=2");
    assert_eq!(
        header(r.headers(), "link"),
        "</v2/p/one/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let r = raw.get("/v2/p/one/tags/list?n=2&last=d");
    assert_eq!(header(r.headers(), "link"), "");
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["tags"], serde_json::json!(["e"]));
    let v: serde_json::Value = raw.get("/v2/p/one/tags/list?last=b").json().unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c", "d", "e"]));
    let (status, c) = error_code(raw.get("/v2/p/one/tags/list?n=x"));
    assert_eq!(status, 400, "{c}");

    let (status, c) = error_code(raw.get("/v2/never/pushed/tags/list"));
    assert_eq!((status, c.as_str()), (404, "NAME_UNKNOWN"));
    let (status, c) = error_code(raw.get("/v2/Bad_Name/tags/list"));
    assert_eq!((status, c.as_str()), (400, "NAME_INVALID"));

    let v: serde_json::Value = raw.get("/v2/_catalog").json().unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["a-first", "p/one", "p/two"])
    );
    let r = raw.get("/v2/_catalog?n=1&last=a-first");
    assert_eq!(
        header(r.headers(), "link"),
        "</v2/_catalog?n=1&last=p%2Fone>; rel=\"next\""
    );
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["p/one"]));
}

fn referrers_with_artifact_type_filter(backend: Backend) {
    let (_reg, raw) = setup(backend);
    let (subject_bytes, subject) = raw.push_image("ref", "v1", b"app layer", None);
    let subject_desc = Descriptor::new(
        media_type::OCI_MANIFEST,
        subject.clone(),
        subject_bytes.len() as u64,
    );

    // An artifact with artifactType and the empty config.
    let empty = raw.push_blob("ref", b"{}");
    let sig_layer = raw.push_blob("ref", b"signature bytes");
    let artifact =
        |artifact_type: Option<&str>, config_type: &str, annotation: &str| ImageManifest {
            schema_version: 2,
            media_type: media_type::OCI_MANIFEST.to_owned(),
            artifact_type: artifact_type.map(str::to_owned),
            config: Descriptor::new(config_type, empty.clone(), 2),
            layers: vec![Descriptor::new(
                "application/octet-stream",
                sig_layer.clone(),
                15,
            )],
            subject: Some(subject_desc.clone()),
            annotations: Some([("note".to_owned(), annotation.to_owned())].into()),
        };
    let sig = artifact(
        Some("application/vnd.example.signature"),
        media_type::OCI_EMPTY,
        "sig",
    )
    .to_json();
    let r = raw.put_manifest(
        "ref",
        &Digest::sha256(&sig).to_string(),
        media_type::OCI_MANIFEST,
        &sig,
    );
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(header(r.headers(), "oci-subject"), subject.to_string());
    // Without artifactType: the config media type is the artifact type.
    let sbom = artifact(None, "application/vnd.example.sbom", "sbom").to_json();
    let r = raw.put_manifest(
        "ref",
        &Digest::sha256(&sbom).to_string(),
        media_type::OCI_MANIFEST,
        &sbom,
    );
    assert_eq!(r.status().as_u16(), 201);

    let r = raw.get(&format!("/v2/ref/referrers/{subject}"));
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(r.headers(), "content-type"), media_type::OCI_INDEX);
    assert_eq!(header(r.headers(), "oci-filters-applied"), "");
    let v: serde_json::Value = r.json().unwrap();
    let mut types: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/vnd.example.sbom",
            "application/vnd.example.signature"
        ]
    );
    for m in v["manifests"].as_array().unwrap() {
        assert!(m["annotations"]["note"].is_string());
        assert_eq!(m["mediaType"], media_type::OCI_MANIFEST);
    }

    let r = raw.get(&format!(
        "/v2/ref/referrers/{subject}?artifactType=application/vnd.example.signature"
    ));
    assert_eq!(header(r.headers(), "oci-filters-applied"), "artifactType");
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["manifests"][0]["digest"],
        Digest::sha256(&sig).to_string()
    );

    // A subject that does not exist (yet) is accepted, and its referrers listed.
    let ghost = Descriptor::for_bytes(media_type::OCI_MANIFEST, b"ghost");
    let mut early = artifact(
        Some("application/vnd.example.early"),
        media_type::OCI_EMPTY,
        "e",
    );
    early.subject = Some(ghost.clone());
    let r = raw.put_manifest("ref", "early", media_type::OCI_MANIFEST, &early.to_json());
    assert_eq!(r.status().as_u16(), 201);
    let v: serde_json::Value = raw
        .get(&format!("/v2/ref/referrers/{}", ghost.digest))
        .json()
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);

    // Nothing refers to an unrelated digest: an empty index, not 404.
    let v: serde_json::Value = raw
        .get(&format!("/v2/ref/referrers/{}", Digest::sha256(b"n")))
        .json()
        .unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));
    assert_eq!(v["mediaType"], media_type::OCI_INDEX);

    // Deleting a referrer removes it from the list.
    raw.req(
        Method::DELETE,
        &format!("/v2/ref/manifests/{}", Digest::sha256(&sig)),
    )
    .send()
    .unwrap();
    let v: serde_json::Value = raw
        .get(&format!("/v2/ref/referrers/{subject}"))
        .json()
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
}

fn metrics_and_access_log(backend: Backend) {
    let reg = RegistryProcess::start_on(&backend, &["--log-format", "json"]);
    let raw = Raw::new(&reg);
    raw.push_image("obs", "v1", b"bytes", None);
    raw.req(Method::POST, "/v2/obs/blobs/uploads/")
        .send()
        .unwrap();
    let text = raw.get("/metrics").text().unwrap();
    for needle in [
        "archway_registry_http_requests_total{method=\"PUT\",route=\"manifest\",status=\"201\"} 1",
        "archway_registry_http_request_duration_seconds_bucket{",
        "archway_registry_http_request_bytes_total{method=\"POST\"}",
        "archway_registry_http_response_bytes_total",
        "archway_registry_uploads_in_progress 1",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    // One JSON object per request on stderr.
    let log = reg.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("\"route\":\"manifest\""))
        .unwrap_or_else(|| panic!("no access log line in:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["status"], 201);
    assert_eq!(v["path"], "/v2/obs/manifests/v1");
    assert!(v["micros"].is_u64());
}

#[test]
fn graceful_shutdown_on_sigterm() {
    let mut reg = RegistryProcess::start();
    let raw = Raw::new(&reg);
    raw.push_blob("g", b"data");
    let status = reg.terminate();
    assert!(status.success(), "{status}");
    assert!(reg.log_text().contains("archway registry stopped"));
}

#[test]
fn refuses_unauthenticated_non_loopback_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::support::archway()
        .args(["registry", "serve", "--listen", "0.0.0.0:0", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve 0.0.0.0:0 without authentication"),
        "{err}"
    );
    assert!(err.contains("--htpasswd"), "{err}");
    // With --htpasswd, plain HTTP on a non-loopback address needs --allow-insecure (or TLS).
    let users = crate::support::htpasswd(dir.path(), 4);
    let out = crate::support::archway()
        .args(["registry", "serve", "--listen", "0.0.0.0:0", "--htpasswd"])
        .arg(&users)
        .arg("--root")
        .arg(dir.path().join("root"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve 0.0.0.0:0 with --htpasswd over plain HTTP"),
        "{err}"
    );
    assert!(
        err.contains("--tls-cert") && err.contains("--allow-insecure"),
        "{err}"
    );
}

on_each_backend!(
    base_endpoint_announces_api_version,
    monolithic_blob_upload_and_reads,
    sha512_blobs,
    sha512_manifests_and_push_by_digest_with_tags,
    sparse_indexes_are_opt_in,
    post_then_put_upload,
    chunked_upload_with_status_and_out_of_order_chunks,
    cancel_upload_and_unknown_sessions,
    uploads_resume_after_a_server_restart,
    cross_repository_mount,
    manifests_by_tag_and_digest_with_exact_bytes_and_types,
    oci_index_of_two_platforms,
    manifest_errors,
    manifest_and_tag_deletion,
    tags_list_and_catalog_pagination,
    referrers_with_artifact_type_filter,
    metrics_and_access_log,
);
