//! SBOMs and provenance attached to pushed images. SBOMs: each platform's image is unpacked from the build store,
//! its package databases read into an SPDX 2.3 document (`archway-attest`), and the document
//! pushed as an OCI 1.1 referrer of that platform's manifest (`artifactType:
//! application/spdx+json`), which `archway image referrers` lists. Provenance: an in-toto SLSA v1
//! statement per platform image (its base images by digest, the Dockerfile's digest, build
//! arguments, the source commit), pushed the same way (`artifactType:
//! application/vnd.in-toto+json`).

use std::sync::Arc;

use anyhow::Context;
use archway_attest::provenance::BuildProvenance;
use archway_build::{ImageStore, RegistrySource, Store};
use archway_client::{Client, Location};
use archway_oci::{Descriptor, Platform, Reference, media_type};
use bytes::Bytes;

/// The platform images of what was pushed at `pushed`: the index's entries, or the one
/// manifest (built for `single`).
async fn platform_images(
    client: &Client,
    pushed: &Reference,
    single: &Platform,
) -> anyhow::Result<Vec<(Descriptor, Platform)>> {
    let top = client.get_manifest(pushed).await?;
    let mut targets = Vec::new();
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
            single.clone(),
        ));
    }
    Ok(targets)
}

/// `pushed` without its tag or digest: where referrers go.
fn repository(pushed: &Reference) -> Reference {
    Reference {
        tag: None,
        digest: None,
        ..pushed.clone()
    }
}

/// Pushes a referrer's blobs, then its manifest (by digest).
async fn push_artifact(
    client: &Client,
    repo: &Reference,
    art: archway_attest::attach::Artifact,
) -> anyhow::Result<()> {
    for b in &art.blobs {
        super::sign::push_bytes(
            client,
            repo,
            &b.descriptor.digest,
            Bytes::from(b.data.clone()),
        )
        .await?;
    }
    client
        .put_manifest(
            repo,
            &art.descriptor.digest.to_string(),
            Bytes::from(art.manifest),
            media_type::OCI_MANIFEST,
        )
        .await?;
    Ok(())
}

/// Pushes an SBOM referrer for each platform image of `pushed` (as pushed from `source`, the
/// build's layout; `single` is the platform of a one-platform build); returns how many.
pub async fn attach_sboms(
    client: &Client,
    store: Arc<Store>,
    source: &Location,
    pushed: &Reference,
    single: &Platform,
    created: u64,
) -> anyhow::Result<usize> {
    let targets = platform_images(client, pushed, single).await?;
    let images = ImageStore::new(store, Arc::new(RegistrySource::new(client.clone())))
        .with_unpacking(super::sandbox::unpacking());
    let repo = repository(pushed);
    for (desc, platform) in &targets {
        let image = images
            .pull(source, platform)
            .await
            .with_context(|| format!("reading the {platform} image for its SBOM"))?;
        let rootfs = images.unpack(&image).await?;
        let digest = desc.digest.clone();
        // Named without the tag: one image, one SBOM, whatever tags it is pushed under.
        let (pushed_c, platform_c) = (repo.clone(), platform.clone());
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
        push_artifact(client, &repo, art)
            .await
            .with_context(|| format!("pushing the SBOM of {pushed} ({platform})"))?;
    }
    Ok(targets.len())
}

/// A build's provenance before it is split per platform: `build` says everything but the
/// subject, platform and base images, which come from each platform's image and `bases`.
pub struct ProvenanceInputs {
    pub build: BuildProvenance,
    pub bases: Vec<archway_build::BaseImage>,
}

/// Pushes an in-toto SLSA provenance referrer for each platform image of `pushed`; returns
/// how many.
pub async fn attach_provenance(
    client: &Client,
    pushed: &Reference,
    single: &Platform,
    inputs: &ProvenanceInputs,
) -> anyhow::Result<usize> {
    let targets = platform_images(client, pushed, single).await?;
    let repo = repository(pushed);
    let name = format!("{}/{}", repo.registry, repo.repository);
    for (desc, platform) in &targets {
        let statement = provenance_for(&name, desc, platform, inputs);
        let art = archway_attest::attach::provenance_referrer(
            desc,
            archway_attest::provenance::statement_json(&statement),
            inputs.build.finished_on,
        );
        push_artifact(client, &repo, art)
            .await
            .with_context(|| format!("pushing the provenance of {pushed} ({platform})"))?;
    }
    Ok(targets.len())
}

/// The provenance of one platform image: the base images that platform's build used.
fn provenance_for(
    name: &str,
    desc: &Descriptor,
    platform: &Platform,
    inputs: &ProvenanceInputs,
) -> BuildProvenance {
    BuildProvenance {
        subjects: vec![(name.to_owned(), desc.digest.clone())],
        platform: Some(platform.clone()),
        base_images: inputs
            .bases
            .iter()
            .filter(|b| &b.target == platform)
            .map(|b| archway_attest::provenance::BaseImage {
                reference: b.reference.clone(),
                digest: b.digest.clone(),
                platform: Some(b.platform.clone()),
            })
            .collect(),
        ..inputs.build.clone()
    }
}
