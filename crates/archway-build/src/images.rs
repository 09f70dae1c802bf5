//! Images in the local store: where they come from ([`ImageSource`], the registry client in
//! production, a fake in tests), pulling one platform's image into the store, and unpacking it
//! into a read-only root filesystem. `archway run`, the builder's `FROM`, and the runners all go
//! through [`ImageStore`].

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use archway_client::copy::{CopyOptions, Selection};
use archway_client::{Client, Location};
use archway_oci::config::ImageConfig;
use archway_oci::layout::ImageLayout;
use archway_oci::{Descriptor, ManifestKind, ParsedManifest, Platform, Reference, media_type};
use futures_util::FutureExt;
use tokio::runtime::Handle;

use crate::error::BuildError;
use crate::store::{Layer, ScratchDir, Store, Unpacking, hash_parts};

/// A boxed future, so that [`ImageSource`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where images and shared step-cache entries come from and go to.
pub trait ImageSource: Send + Sync + fmt::Debug {
    /// Copies `from` (a registry reference or an OCI layout) into the OCI layout at `layout`,
    /// tagged `tag`: only the image for `platform` when one is given, else everything.
    fn copy_into<'a>(
        &'a self,
        from: &'a Location,
        platform: Option<&'a Platform>,
        layout: &'a Path,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), BuildError>>;

    /// Whether `reference` names a manifest.
    fn exists<'a>(&'a self, reference: &'a Reference) -> BoxFuture<'a, Result<bool, BuildError>>;

    /// Copies `tag` of the OCI layout at `layout` to `to`.
    fn push<'a>(
        &'a self,
        layout: &'a Path,
        tag: &'a str,
        to: &'a Reference,
    ) -> BoxFuture<'a, Result<(), BuildError>>;
}

/// Images from registries and OCI layouts, through the registry client.
#[derive(Clone, Debug)]
pub struct RegistrySource {
    client: Client,
    mirrors: Vec<archway_client::mirror::Mirror>,
}

impl RegistrySource {
    pub fn new(client: Client) -> RegistrySource {
        RegistrySource {
            client,
            mirrors: Vec::new(),
        }
    }

    /// Pulls of the mirrored registries try their mirror first and fall back to the registry
    /// itself when the mirror fails, as dockerd and containerd do. Pushes are not redirected.
    pub fn with_mirrors(mut self, mirrors: Vec<archway_client::mirror::Mirror>) -> RegistrySource {
        self.mirrors = mirrors;
        self
    }
}

impl ImageSource for RegistrySource {
    fn copy_into<'a>(
        &'a self,
        from: &'a Location,
        platform: Option<&'a Platform>,
        layout: &'a Path,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), BuildError>> {
        async move {
            let dest = Location::Layout {
                path: layout.to_owned(),
                tag: Some(tag.to_owned()),
            };
            let opts = CopyOptions {
                selection: platform.map_or(Selection::All, |p| Selection::Platform(p.clone())),
                ..CopyOptions::default()
            };
            if let Location::Registry(r) = from
                && let Some(m) = archway_client::mirror::rewrite(&self.mirrors, r)
            {
                let mirrored = Location::Registry(m.clone());
                match archway_client::copy(&self.client, &mirrored, &dest, &opts).await {
                    Ok(_) => return Ok(()),
                    Err(e) => tracing::warn!(
                        "mirror {m} failed ({}); pulling {r} from its registry",
                        archway_oci::error_chain(&e)
                    ),
                }
            }
            archway_client::copy(&self.client, from, &dest, &opts).await?;
            Ok(())
        }
        .boxed()
    }

    fn exists<'a>(&'a self, reference: &'a Reference) -> BoxFuture<'a, Result<bool, BuildError>> {
        async move { Ok(self.client.manifest_exists(reference).await?.is_some()) }.boxed()
    }

    fn push<'a>(
        &'a self,
        layout: &'a Path,
        tag: &'a str,
        to: &'a Reference,
    ) -> BoxFuture<'a, Result<(), BuildError>> {
        async move {
            let src = Location::Layout {
                path: layout.to_owned(),
                tag: Some(tag.to_owned()),
            };
            let dest = Location::Registry(to.clone());
            archway_client::copy(&self.client, &src, &dest, &CopyOptions::default()).await?;
            Ok(())
        }
        .boxed()
    }
}

/// One platform's image, copied into the store.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// The image manifest.
    pub manifest: Descriptor,
    /// Its layers, lowest first.
    pub layers: Vec<Layer>,
    /// Its configuration (ENTRYPOINT, CMD, env… in `config.config`).
    pub config: ImageConfig,
    /// The config blob (none for an image without one).
    pub config_digest: Option<archway_oci::Digest>,
}

/// Pulls images into a [`Store`] and unpacks them into root filesystems.
#[derive(Clone, Debug)]
pub struct ImageStore {
    store: Arc<Store>,
    source: Arc<dyn ImageSource>,
    unpacking: Unpacking,
}

impl ImageStore {
    /// Images from `source`, kept in `store`. Unpacking keeps owners, devices and setuid bits
    /// only when [`ImageStore::with_privileged`] (or [`ImageStore::with_unpacking`]) says so.
    pub fn new(store: Arc<Store>, source: Arc<dyn ImageSource>) -> ImageStore {
        ImageStore {
            store,
            source,
            unpacking: Unpacking::Caller,
        }
    }

    /// Whether unpacking may create devices, set owners and setuid bits (root only).
    pub fn with_privileged(mut self, privileged: bool) -> ImageStore {
        self.unpacking = if privileged {
            Unpacking::Privileged
        } else {
            Unpacking::Caller
        };
        self
    }

    /// How much of a layer's ownership unpacking keeps (see [`Unpacking`]).
    pub fn with_unpacking(mut self, unpacking: Unpacking) -> ImageStore {
        self.unpacking = unpacking;
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn source(&self) -> &Arc<dyn ImageSource> {
        &self.source
    }

    pub(crate) fn unpacking(&self) -> Unpacking {
        self.unpacking
    }

    /// Copies the image for `platform` from `image` (a registry or an OCI layout) into the
    /// store and reads its layers and config.
    pub async fn pull(
        &self,
        image: &Location,
        platform: &Platform,
    ) -> Result<PulledImage, BuildError> {
        let tag = pull_tag(image, platform);
        // Twice at most: a pruner may remove what the copy found in the store before it is
        // marked as used; the second copy puts it back.
        for attempt in 0..2 {
            self.source
                .copy_into(image, Some(platform), self.store.layout().root(), &tag)
                .await?;
            let (this, location, platform, tag) =
                (self.clone(), image.clone(), platform.clone(), tag.clone());
            let pulled = blocking(move || {
                let p = read_pulled(this.store.layout(), &tag, &location, &platform)?;
                Ok(touch_pulled(&this.store, &p).then_some(p))
            })
            .await?;
            if let Some(p) = pulled {
                return Ok(p);
            }
            tracing::debug!(%image, attempt, "pulled image was pruned meanwhile; copying it again");
        }
        Err(BuildError::Image(format!(
            "{image}: its blobs keep disappearing from the build store (is `archway build prune` running in a loop?)"
        )))
    }

    /// The root filesystem of `image`, unpacked once into the store and shared (read-only: run
    /// on top of it through an overlay).
    pub async fn unpack(&self, image: &PulledImage) -> Result<PathBuf, BuildError> {
        let (this, layers) = (self.clone(), image.layers.clone());
        blocking(move || this.store.snapshot(&layers, this.unpacking)).await
    }

    /// A scratch directory in the store for one run (removed when dropped).
    pub fn scratch_dir(&self) -> Result<ScratchDir, BuildError> {
        self.store.scratch_dir()
    }

    /// [`ImageStore::pull`] for the builder's threads (which are not async).
    pub(crate) fn pull_blocking(
        &self,
        rt: &Handle,
        image: &Location,
        platform: &Platform,
    ) -> Result<PulledImage, BuildError> {
        let tag = pull_tag(image, platform);
        for _ in 0..2 {
            rt.block_on(self.source.copy_into(
                image,
                Some(platform),
                self.store.layout().root(),
                &tag,
            ))?;
            let p = read_pulled(self.store.layout(), &tag, image, platform)?;
            if touch_pulled(&self.store, &p) {
                return Ok(p);
            }
        }
        Err(BuildError::Image(format!(
            "{image}: its blobs keep disappearing from the build store (is `archway build prune` running in a loop?)"
        )))
    }

    /// A lease on the store for one run: what the run pulls and unpacks stays until it ends.
    pub fn lease(&self) -> Result<crate::store::Lease, BuildError> {
        self.store.lease()
    }
}

/// Marks a pulled image's manifest, config and layers as used; `false` if one is gone.
fn touch_pulled(store: &Store, p: &PulledImage) -> bool {
    store.touch_blob(&p.manifest.digest)
        && p.config_digest.as_ref().is_none_or(|d| store.touch_blob(d))
        && p.layers
            .iter()
            .all(|l| store.touch_blob(&l.descriptor.digest))
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BuildError::Io {
            context: "a blocking task of the image store".into(),
            source: std::io::Error::other(e),
        })?
}

/// The layout tag a pulled image is kept under.
fn pull_tag(image: &Location, platform: &Platform) -> String {
    format!(
        "base-{}",
        hash_parts(&[&image.to_string(), &platform.to_string()]).hex()
    )
}

fn read_pulled(
    layout: &ImageLayout,
    tag: &str,
    source: &Location,
    platform: &Platform,
) -> Result<PulledImage, BuildError> {
    let desc = layout.resolve(Some(tag))?;
    let bytes = layout.read_blob(&desc.digest)?;
    let parsed = ParsedManifest::parse(&bytes, Some(&desc.media_type)).map_err(|source_err| {
        BuildError::Client(archway_client::ClientError::Manifest {
            reference: source.to_string(),
            source: source_err,
        })
    })?;
    if parsed.kind != ManifestKind::Image {
        return Err(BuildError::Image(format!(
            "{source} did not resolve to an image for {platform}"
        )));
    }
    let config_desc = parsed
        .config
        .clone()
        .unwrap_or_else(|| Descriptor::for_bytes(media_type::OCI_CONFIG, b"{}"));
    let config: ImageConfig = serde_json::from_slice(&layout.read_blob(&config_desc.digest)?)
        .map_err(|e| BuildError::Image(format!("the config of {source} is invalid: {e}")))?;
    if let Some(p) = config.platform()
        && !p.matches(platform)
    {
        return Err(BuildError::Image(format!(
            "image {source} is {p} only; it has no image for {platform}"
        )));
    }
    if parsed.layers.len() != config.rootfs.diff_ids.len() {
        return Err(BuildError::Image(format!(
            "{source}: its manifest has {} layers but its config lists {} diff_ids",
            parsed.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let layers = parsed
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, diff)| Layer {
            descriptor: d.clone(),
            diff_id: diff.clone(),
        })
        .collect();
    Ok(PulledImage {
        manifest: desc,
        layers,
        config,
        config_digest: parsed.config.as_ref().map(|c| c.digest.clone()),
    })
}
