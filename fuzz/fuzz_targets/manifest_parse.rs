//! Manifests arrive from any client that can push: parsing must never panic, and whatever it
//! accepts must have a supported media type and a consistent shape.
#![no_main]

use archway_oci::{ManifestKind, ParsedManifest, media_type};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the Content-Type the "client" declared.
    let (ct, body) = match data.split_first() {
        Some((b, rest)) => {
            let ct = match b % 6 {
                0 => None,
                1 => Some(media_type::OCI_MANIFEST),
                2 => Some(media_type::OCI_INDEX),
                3 => Some(media_type::DOCKER_MANIFEST),
                4 => Some(media_type::DOCKER_MANIFEST_LIST),
                _ => Some("application/json"),
            };
            (ct, rest)
        }
        None => (None, data),
    };
    if let Ok(m) = ParsedManifest::parse(body, ct) {
        assert!(media_type::is_manifest(&m.media_type));
        match m.kind {
            ManifestKind::Image => assert!(m.config.is_some() && m.manifests.is_empty()),
            ManifestKind::Index => assert!(m.config.is_none() && m.layers.is_empty()),
        }
    }
});
