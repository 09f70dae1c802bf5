//! Build provenance: an in-toto Statement v1 whose predicate is SLSA Provenance v1, the form
//! `slsa-verifier`, `cosign verify-attestation --type slsaprovenance1` and BuildKit's tooling
//! read.
//!
//! ```json
//! {"_type": "https://in-toto.io/Statement/v1",
//!  "subject": [{"name": "registry/repo", "digest": {"sha256": "…"}}],
//!  "predicateType": "https://slsa.dev/provenance/v1",
//!  "predicate": {
//!    "buildDefinition": {"buildType": "…", "externalParameters": {…}, "resolvedDependencies": […]},
//!    "runDetails": {"builder": {"id": "…"}, "metadata": {"invocationId": "…", "startedOn": "…", "finishedOn": "…"}}}}
//! ```
//!
//! Everything comes from [`BuildProvenance`], timestamps included, and serialises in a fixed
//! field order with sorted maps: a reproducible build that passes the same inputs gets the
//! same bytes. Build arguments are recorded as given; leave secrets out of
//! [`BuildProvenance::build_args`].

use std::collections::BTreeMap;

use archway_oci::{Digest, Platform, Reference};
use serde::Serialize;

use crate::purl::purl;

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of an Archway Dockerfile build: says how to read `externalParameters`.
pub const BUILD_TYPE: &str = "https://archway.invalid/provenance/dockerfile/v1";

/// A resource named by a URI with digests, as in-toto's `ResourceDescriptor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub uri: String,
    /// Algorithm → hex: `{"sha256": "…"}`, `{"gitCommit": "…"}`.
    pub digest: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A base image the build pulled, pinned by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseImage {
    /// As the Dockerfile named it (normalised): `docker.io/library/debian:12`.
    pub reference: Reference,
    /// The manifest digest the build resolved it to.
    pub digest: Digest,
    pub platform: Option<Platform>,
}

/// The Dockerfile the build read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerfileInput {
    /// Its path inside the context, e.g. `Dockerfile` or `docker/app.Dockerfile`.
    pub path: String,
    pub digest: Digest,
}

/// Everything a provenance statement says. Times are seconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildProvenance {
    /// What was built: `(name, manifest digest)`, e.g. `("127.0.0.1:5000/team/app", sha256:…)`;
    /// one per platform image (and the index, if wanted).
    pub subjects: Vec<(String, Digest)>,
    /// Who built it: a URI naming the builder (`https://ci.example/runners/12`).
    pub builder_id: String,
    /// The builder's version(s), e.g. `{"archway": "0.1.0"}`.
    pub builder_version: BTreeMap<String, String>,
    /// Identifies this run (the CI job id, say).
    pub invocation_id: String,
    pub started_on: u64,
    pub finished_on: u64,
    /// The build context: a git URL with ref (`git+https://host/repo@refs/heads/main`) or a path.
    pub source: Option<String>,
    /// Digests of the source, e.g. `{"gitCommit": "…"}`; with `source`, also a resolved dependency.
    pub source_digest: BTreeMap<String, String>,
    pub dockerfile: Option<DockerfileInput>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// The platform built for (`linux/arm64`).
    pub platform: Option<Platform>,
    pub base_images: Vec<BaseImage>,
}

#[derive(Serialize)]
struct Statement<'a> {
    #[serde(rename = "_type")]
    kind: &'static str,
    subject: Vec<Subject<'a>>,
    #[serde(rename = "predicateType")]
    predicate_type: &'static str,
    predicate: Predicate<'a>,
}

#[derive(Serialize)]
struct Subject<'a> {
    name: &'a str,
    digest: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Predicate<'a> {
    build_definition: BuildDefinition<'a>,
    run_details: RunDetails<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildDefinition<'a> {
    build_type: &'static str,
    external_parameters: ExternalParameters<'a>,
    resolved_dependencies: Vec<Resource>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalParameters<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dockerfile: Option<DockerfileParameter<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    build_args: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
}

#[derive(Serialize)]
struct DockerfileParameter<'a> {
    path: &'a str,
    digest: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunDetails<'a> {
    builder: Builder<'a>,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Builder<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    version: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    invocation_id: &'a str,
    started_on: String,
    finished_on: String,
}

/// `{"sha256": "<hex>"}`.
pub fn digest_set(d: &Digest) -> BTreeMap<String, String> {
    BTreeMap::from([(d.algorithm().to_string(), d.hex().to_owned())])
}

impl BaseImage {
    /// `pkg:docker/docker.io/library/debian@sha256:…?platform=linux%2Famd64`.
    pub fn purl(&self) -> String {
        let (namespace, name) = match self.reference.repository.rsplit_once('/') {
            Some((ns, n)) => (format!("{}/{ns}", self.reference.registry), n),
            None => (
                self.reference.registry.clone(),
                self.reference.repository.as_str(),
            ),
        };
        let platform = self.platform.as_ref().map(ToString::to_string);
        purl(
            "docker",
            Some(&namespace),
            name,
            Some(&self.digest.to_string()),
            &[("platform", platform.as_deref().unwrap_or(""))],
        )
    }
}

/// The in-toto statement (pretty-printed JSON, ending in a newline).
pub fn statement_json(p: &BuildProvenance) -> Vec<u8> {
    let mut resolved = Vec::new();
    if let Some(source) = &p.source
        && !p.source_digest.is_empty()
    {
        resolved.push(Resource {
            uri: source.clone(),
            digest: p.source_digest.clone(),
            name: Some("context".to_owned()),
        });
    }
    for b in &p.base_images {
        resolved.push(Resource {
            uri: b.purl(),
            digest: digest_set(&b.digest),
            name: Some(b.reference.to_string()),
        });
    }
    let statement = Statement {
        kind: STATEMENT_TYPE,
        subject: p
            .subjects
            .iter()
            .map(|(name, d)| Subject {
                name,
                digest: digest_set(d),
            })
            .collect(),
        predicate_type: SLSA_PROVENANCE_V1,
        predicate: Predicate {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE,
                external_parameters: ExternalParameters {
                    source: p.source.as_deref(),
                    dockerfile: p.dockerfile.as_ref().map(|d| DockerfileParameter {
                        path: &d.path,
                        digest: digest_set(&d.digest),
                    }),
                    build_args: &p.build_args,
                    target: p.target.as_deref(),
                    platform: p.platform.as_ref().map(ToString::to_string),
                },
                resolved_dependencies: resolved,
            },
            run_details: RunDetails {
                builder: Builder {
                    id: &p.builder_id,
                    version: &p.builder_version,
                },
                metadata: Metadata {
                    invocation_id: &p.invocation_id,
                    started_on: archway_oci::config::rfc3339(p.started_on),
                    finished_on: archway_oci::config::rfc3339(p.finished_on),
                },
            },
        },
    };
    let mut out = serde_json::to_vec_pretty(&statement)
        .unwrap_or_else(|e| unreachable!("a provenance statement serialises: {e}"));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_image_purl() {
        let b = BaseImage {
            reference: "debian:12".parse().unwrap(),
            digest: Digest::sha256(b"x"),
            platform: Some(Platform::linux_arm64()),
        };
        assert_eq!(
            b.purl(),
            format!(
                "pkg:docker/docker.io/library/debian@{}?platform=linux%2Farm64",
                Digest::sha256(b"x")
            )
        );
        let local = BaseImage {
            reference: "127.0.0.1:5000/base:1".parse().unwrap(),
            digest: Digest::sha256(b"y"),
            platform: None,
        };
        assert_eq!(
            local.purl(),
            format!("pkg:docker/127.0.0.1:5000/base@{}", Digest::sha256(b"y"))
        );
    }

    #[test]
    fn statement_shape() {
        let p = BuildProvenance {
            subjects: vec![("r/app".into(), Digest::sha256(b"m"))],
            builder_id: "https://ci.example/runner/1".into(),
            builder_version: BTreeMap::new(),
            invocation_id: "job-7".into(),
            started_on: 0,
            finished_on: 60,
            source: None,
            source_digest: BTreeMap::new(),
            dockerfile: None,
            build_args: BTreeMap::new(),
            target: None,
            platform: None,
            base_images: Vec::new(),
        };
        let v: serde_json::Value = serde_json::from_slice(&statement_json(&p)).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["predicateType"], SLSA_PROVENANCE_V1);
        assert_eq!(
            v["subject"][0]["digest"]["sha256"],
            Digest::sha256(b"m").hex()
        );
        assert_eq!(
            v["predicate"]["runDetails"]["metadata"]["finishedOn"],
            "1970-01-01T00:01:00Z"
        );
        assert_eq!(
            v["predicate"]["buildDefinition"]["externalParameters"],
            serde_json::json!({})
        );
        assert_eq!(
            v["predicate"]["buildDefinition"]["resolvedDependencies"],
            serde_json::json!([])
        );
    }
}
