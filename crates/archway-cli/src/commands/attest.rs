//! SBOMs attached to pushed images: each platform's image is unpacked from the build store,
//! its package databases read into an SPDX 2.3 document (`archway-attest`), and the document
//! pushed as an OCI 1.1 referrer of that platform's manifest (`artifactType:
//! application/spdx+json`), which `archway image referrers` lists.

use std::sync::Arc;

use anyhow::Context;
use archway_build::{ImageStore, RegistrySource, Store};
use archway_client::{Client, Location};
use archway_oci::{Descriptor, Platform, Reference, media_type};
use bytes::Bytes;

/// Pushes an SBOM referrer for each platform image of `pushed` (as pushed from `source`, the
/// build's layout); returns how many.
pub async fn attach_sboms(
    client: &Client,
    store: Arc<Store>,
    source: &Location,
    pushed: &Reference,
    created: u64,
) -> anyhow::Result<usize> {
    let top = client.get_manifest(pushed).await?;
    let mut targets: Vec<(Descriptor, Platform)> = Vec::new();
    if media_type::is_index(&top.media_type) {
        let index: archway_oci::Index = serde_json::from_slice(&top.bytes)?;
        for d in index.manifests {
            if let Some(p) = d.platform.clone() {
                targets.push((d, p));
            }
        }
    } else {
        targets.push((
            Descriptor::new(
                top.media_type.clone(),
                top.digest.clone(),
                top.bytes.len() as u64,
            ),
            Platform::host(),
        ));
    }
    let images = ImageStore::new(store, Arc::new(RegistrySource::new(client.clone())))
        .with_unpacking(super::sandbox::unpacking());
    let repo = Reference {
        tag: None,
        digest: None,
        ..pushed.clone()
    };
    for (desc, platform) in &targets {
        let image = images
            .pull(source, platform)
            .await
            .with_context(|| format!("reading the {platform} image for its SBOM"))?;
        let rootfs = images.unpack(&image).await?;
        let digest = desc.digest.clone();
        let (pushed_c, platform_c) = (pushed.clone(), platform.clone());
        let spdx = tokio::task::spawn_blocking(move || {
            archway_attest::sbom::generate_spdx(
                &rootfs,
                &archway_attest::sbom::SbomOptions {
                    image: &pushed_c,
                    digest: &digest,
                    platform: Some(&platform_c),
                    created,
                    tool_version: archway_attest::VERSION,
                },
            )
        })
        .await??;
        let art = archway_attest::attach::sbom_referrer(desc, spdx, created);
        for b in &art.blobs {
            super::sign::push_bytes(
                client,
                &repo,
                &b.descriptor.digest,
                Bytes::from(b.data.clone()),
            )
            .await?;
        }
        client
            .put_manifest(
                &repo,
                &art.descriptor.digest.to_string(),
                Bytes::from(art.manifest),
                media_type::OCI_MANIFEST,
            )
            .await
            .with_context(|| format!("pushing the SBOM of {pushed} ({platform})"))?;
    }
    Ok(targets.len())
}
