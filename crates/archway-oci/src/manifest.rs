//! Manifests and indexes as a registry or a copier sees them: which media type they are and
//! which other content they reference.
//!
//! Parsing is lenient about fields it does not need (unknown fields are ignored and the bytes
//! are never re-serialised by a registry), and strict about what makes the graph of references:
//! every descriptor must carry a valid digest, a size and a media type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type;
use crate::platform::Platform;

/// A content descriptor (OCI image spec, `descriptor.md`). Field order and `BTreeMap`
/// annotations make serialisation deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            data: None,
            platform: None,
            artifact_type: None,
        }
    }

    /// A descriptor of `bytes` (digest computed with sha256).
    pub fn for_bytes(media_type: impl Into<String>, bytes: &[u8]) -> Self {
        Descriptor::new(media_type, Digest::sha256(bytes), bytes.len() as u64)
    }

    /// One annotation, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An image manifest (OCI or Docker schema 2) for writing. Serialisation is deterministic:
/// fields in spec order, annotations sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (Docker) for writing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Index {
    /// An empty OCI image index.
    pub fn new_oci() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: None,
        }
    }

    /// The JSON bytes of this index.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|e| unreachable!("index serialises: {e}"))
    }
}

impl ImageManifest {
    /// The JSON bytes of this manifest.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|e| unreachable!("manifest serialises: {e}"))
    }
}

/// Whether a manifest describes one image or a list of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker schema 2 manifest: a config and layers.
    Image,
    /// OCI image index or Docker manifest list: child manifests.
    Index,
}

/// Why manifest bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("manifest has an invalid field: {0}")]
    Field(serde_json::Error),
    #[error("manifest JSON is nested more than {MAX_JSON_DEPTH} levels deep")]
    TooDeep,
    #[error(
        "Docker schema 1 manifests are not supported; push the image again with a current client (it will use schema 2 or OCI)"
    )]
    Schema1,
    #[error("manifest has schemaVersion {0}; only schemaVersion 2 is supported")]
    SchemaVersion(u64),
    #[error("manifest declares mediaType `{declared}` but was sent as `{content_type}`")]
    MediaTypeMismatch {
        declared: String,
        content_type: String,
    },
    #[error(
        "unsupported manifest media type `{0}` (expected an OCI manifest or index, or a Docker schema 2 manifest or manifest list)"
    )]
    UnsupportedMediaType(String),
    #[error("{media_type} is missing its `{field}` field")]
    MissingField {
        media_type: String,
        field: &'static str,
    },
}

/// Deepest JSON nesting accepted in a manifest. Real manifests nest about five levels (index →
/// manifests → descriptor → platform → features); the bound keeps parsers of every client that
/// later reads the stored bytes far from their recursion limits.
pub const MAX_JSON_DEPTH: usize = 32;

/// The deepest nesting of arrays and objects in `bytes` (strings skipped), without parsing.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Schema 1 markers.
    fs_layers: Option<serde_json::Value>,
    signatures: Option<serde_json::Value>,
}

/// The parts of a manifest or index that matter to storage, copying and garbage collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The effective media type (declared in the body, else given by the sender, else inferred).
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    /// Image manifests: the config blob.
    pub config: Option<Descriptor>,
    /// Image manifests: the layer blobs, in order.
    pub layers: Vec<Descriptor>,
    /// Indexes: the child manifests.
    pub manifests: Vec<Descriptor>,
    /// OCI 1.1 `subject`: the manifest this one refers to.
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ParsedManifest {
    /// Parses manifest bytes. `content_type` is the media type the sender declared (an HTTP
    /// `Content-Type`, or a descriptor's `mediaType`), if any.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        if json_depth(bytes) > MAX_JSON_DEPTH {
            return Err(ManifestError::TooDeep);
        }
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
            // Well-formed JSON with a value of the wrong shape (a malformed digest, a size
            // that is not a number): say which.
            serde_json::error::Category::Data => ManifestError::Field(e),
            _ => ManifestError::Json(e),
        })?;
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| !c.is_empty() && !is_generic_content_type(c));
        if raw.fs_layers.is_some()
            || raw.signatures.is_some()
            || raw.schema_version == Some(1)
            || content_type.is_some_and(|c| {
                c == media_type::DOCKER_MANIFEST_V1 || c == media_type::DOCKER_MANIFEST_V1_SIGNED
            })
        {
            return Err(ManifestError::Schema1);
        }
        match raw.schema_version {
            Some(2) => {}
            Some(v) => return Err(ManifestError::SchemaVersion(v)),
            None => return Err(missing(content_type.unwrap_or("manifest"), "schemaVersion")),
        }
        let media_type = match (raw.media_type.as_deref(), content_type) {
            (Some(declared), Some(sent)) if declared != sent => {
                return Err(ManifestError::MediaTypeMismatch {
                    declared: declared.to_owned(),
                    content_type: sent.to_owned(),
                });
            }
            (Some(declared), _) => declared.to_owned(),
            (None, Some(sent)) => sent.to_owned(),
            (None, None) if raw.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
            (None, None) => media_type::OCI_MANIFEST.to_owned(),
        };
        let kind = if media_type::is_index(&media_type) {
            ManifestKind::Index
        } else if media_type::is_image_manifest(&media_type) {
            ManifestKind::Image
        } else {
            return Err(ManifestError::UnsupportedMediaType(media_type));
        };
        let (config, layers, manifests) = match kind {
            ManifestKind::Image => {
                let config = raw.config.ok_or_else(|| missing(&media_type, "config"))?;
                let layers = match raw.layers {
                    Some(layers) => layers,
                    // OCI artifacts may omit layers only if they say so with artifactType.
                    None if media_type == media_type::OCI_MANIFEST => Vec::new(),
                    None => return Err(missing(&media_type, "layers")),
                };
                (Some(config), layers, Vec::new())
            }
            ManifestKind::Index => {
                let manifests = raw
                    .manifests
                    .ok_or_else(|| missing(&media_type, "manifests"))?;
                (None, Vec::new(), manifests)
            }
        };
        Ok(ParsedManifest {
            media_type,
            kind,
            artifact_type: raw.artifact_type,
            config,
            layers,
            manifests,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    /// Blobs (not manifests) this manifest needs: its config and layers. Layers with external
    /// `urls` (non-distributable) are included; callers decide whether to require them.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter())
    }

    /// The artifact type a referrers response reports for this manifest: `artifactType`, else
    /// the config media type of an image manifest (OCI distribution spec 1.1).
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }
}

fn missing(media_type: &str, field: &'static str) -> ManifestError {
    ManifestError::MissingField {
        media_type: media_type.to_owned(),
        field,
    }
}

/// Content types that clients send when they do not know better; treated as "not given".
fn is_generic_content_type(c: &str) -> bool {
    matches!(
        c,
        "application/json" | "application/octet-stream" | "text/plain"
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_malformed_digest_is_named_and_deep_nesting_is_refused() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:nothex","size":2},"layers":[]}"#;
        let e = ParsedManifest::parse(body, None).unwrap_err();
        assert!(matches!(e, ManifestError::Field(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("digest `sha256:nothex`"), "{text}");
        assert!(!text.contains("not valid JSON"), "{text}");
        assert!(matches!(
            ParsedManifest::parse(b"{not json", None),
            Err(ManifestError::Json(_))
        ));

        let deep = |n: usize| {
            format!(
                r#"{{"schemaVersion":2,"x":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(matches!(
            ParsedManifest::parse(deep(MAX_JSON_DEPTH).as_bytes(), None),
            Err(ManifestError::TooDeep)
        ));
        assert_eq!(
            json_depth(deep(MAX_JSON_DEPTH - 1).as_bytes()),
            MAX_JSON_DEPTH
        );
        // Brackets inside strings do not count.
        assert_eq!(json_depth(br#"{"a":"[[[[{{{\"]]"}"#), 1);
    }

    use super::*;

    fn d(n: u8) -> String {
        Digest::sha256(&[n]).to_string()
    }

    #[test]
    fn parses_oci_image_manifest_references() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":2}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":3}}],
            "subject":{{"mediaType":"{}","digest":"{}","size":4}},"extra":true}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG,
            d(1),
            media_type::OCI_LAYER_ZSTD,
            d(2),
            media_type::OCI_MANIFEST,
            d(3)
        );
        let m = ParsedManifest::parse(body.as_bytes(), Some(media_type::OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs().count(), 2);
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), d(3));
        assert_eq!(m.effective_artifact_type(), Some(media_type::OCI_CONFIG));
    }

    #[test]
    fn infers_media_type_from_content_type_and_shape() {
        let list = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media_type::DOCKER_MANIFEST,
            d(1)
        );
        let m =
            ParsedManifest::parse(list.as_bytes(), Some(media_type::DOCKER_MANIFEST_LIST)).unwrap();
        assert_eq!(m.media_type, media_type::DOCKER_MANIFEST_LIST);
        assert_eq!(m.kind, ManifestKind::Index);
        let m = ParsedManifest::parse(list.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(m.media_type, media_type::OCI_INDEX);
        let p = m.manifests[0].platform.as_ref().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn refuses_bad_manifests_with_reasons() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("{", None, "not valid JSON"),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, None, "schema 1"),
            (r#"{"schemaVersion":3}"#, None, "schemaVersion 3"),
            (r#"{"mediaType":"x"}"#, None, "schemaVersion"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                Some(media_type::OCI_MANIFEST),
                "but was sent as",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"text/html"}"#,
                None,
                "unsupported",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None,
                "missing its `config`",
            ),
            (
                r#"{"schemaVersion":2,"manifests":[{"mediaType":"a","digest":"sha256:00","size":1}]}"#,
                None,
                "64 lowercase hex",
            ),
        ];
        for (body, ct, needle) in cases {
            let err = crate::error_chain(&ParsedManifest::parse(body.as_bytes(), *ct).unwrap_err());
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
