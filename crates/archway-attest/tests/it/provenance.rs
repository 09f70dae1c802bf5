//! SLSA provenance statements, compared with a golden file.

use std::collections::BTreeMap;

use archway_attest::provenance::{
    BaseImage, BuildProvenance, DockerfileInput, SLSA_PROVENANCE_V1, STATEMENT_TYPE, statement_json,
};
use archway_oci::{Digest, Platform};

use crate::golden;

fn provenance() -> BuildProvenance {
    BuildProvenance {
        subjects: vec![(
            "127.0.0.1:5000/team/app".to_owned(),
            Digest::sha256(b"image manifest"),
        )],
        builder_id: "https://ci.example.invalid/runners/build-1".to_owned(),
        builder_version: BTreeMap::from([("archway".to_owned(), "0.1.0".to_owned())]),
        invocation_id: "pipeline-42/job-7".to_owned(),
        started_on: 1_700_000_000,
        finished_on: 1_700_000_095,
        source: Some("git+https://git.example.invalid/team/app@refs/heads/main".to_owned()),
        source_digest: BTreeMap::from([(
            "gitCommit".to_owned(),
            "0123456789abcdef0123456789abcdef01234567".to_owned(),
        )]),
        dockerfile: Some(DockerfileInput {
            path: "docker/app.Dockerfile".to_owned(),
            digest: Digest::sha256(b"FROM debian:12\n"),
        }),
        build_args: BTreeMap::from([
            ("VERSION".to_owned(), "1.2.3".to_owned()),
            ("BASE".to_owned(), "debian:12".to_owned()),
        ]),
        target: Some("runtime".to_owned()),
        platform: Some(Platform::linux_arm64()),
        base_images: vec![
            BaseImage {
                reference: "debian:12".parse().unwrap(),
                digest: Digest::sha256(b"debian"),
                platform: Some(Platform::linux_arm64()),
            },
            BaseImage {
                reference: "127.0.0.1:5000/tools/builder:2".parse().unwrap(),
                digest: Digest::sha256(b"builder"),
                platform: None,
            },
        ],
    }
}

#[test]
fn statement_golden() {
    let p = provenance();
    let bytes = statement_json(&p);
    golden::check("provenance.intoto.json", &bytes);
    assert_eq!(bytes, statement_json(&p), "same inputs, same bytes");

    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["_type"], STATEMENT_TYPE);
    assert_eq!(v["predicateType"], SLSA_PROVENANCE_V1);
    let def = &v["predicate"]["buildDefinition"];
    assert_eq!(
        def["externalParameters"]["dockerfile"]["digest"]["sha256"],
        Digest::sha256(b"FROM debian:12\n").hex()
    );
    assert_eq!(def["externalParameters"]["platform"], "linux/arm64");
    let deps = def["resolvedDependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 3);
    assert_eq!(
        deps[0]["digest"]["gitCommit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert!(
        deps[1]["uri"]
            .as_str()
            .unwrap()
            .starts_with("pkg:docker/docker.io/library/debian@sha256:")
    );
    assert_eq!(
        v["predicate"]["runDetails"]["metadata"]["startedOn"],
        "2023-11-14T22:13:20Z"
    );
}

#[test]
fn build_args_are_sorted_whatever_the_insertion_order() {
    let mut a = provenance();
    let mut b = provenance();
    a.build_args = BTreeMap::from([("Z".into(), "1".into()), ("A".into(), "2".into())]);
    b.build_args = BTreeMap::from([("A".into(), "2".into()), ("Z".into(), "1".into())]);
    assert_eq!(statement_json(&a), statement_json(&b));
}
