//! `archway manifest …`: build multi-platform lists like `docker manifest` and
//! `podman manifest`, command for command.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use archway_client::copy::CopyOptions;
use archway_client::manifest_list::{self, ListFormat, ListStore, PlatformOverride};
use archway_client::{Client, Location};
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};

use super::common::{RegistryArgs, block_on, print_json, progress};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormatArg {
    /// OCI image index.
    Oci,
    /// Docker manifest list (schema 2).
    V2s2,
}

impl From<ListFormatArg> for ListFormat {
    fn from(f: ListFormatArg) -> Self {
        match f {
            ListFormatArg::Oci => ListFormat::Oci,
            ListFormatArg::V2s2 => ListFormat::V2s2,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Create a local manifest list from images in registries.
    ///
    /// Each image's platform is read from its config. Like `docker manifest create`.
    ///
    /// Example:
    ///   archway manifest create reg.io/app:1.0 reg.io/app:1.0-amd64 reg.io/app:1.0-arm64
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
    /// Add an image (or with --all every image of an index) to a local list, creating it.
    ///
    /// Example (podman style):
    ///   archway manifest add reg.io/app:1.0 docker://reg.io/app:1.0-arm64
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
    /// Set the platform (and annotations) of an image in a local list.
    ///
    /// Example:
    ///   archway manifest annotate --arch arm64 --variant v8 reg.io/app:1.0 reg.io/app:1.0-arm64
    #[command(verbatim_doc_comment)]
    Annotate(AnnotateArgs),
    /// Remove an image (by digest or reference) from a local list.
    Remove(RemoveArgs),
    /// Show a local list, or a manifest in a registry.
    Inspect(InspectArgs),
    /// Push a local list (and any of its images missing there) to a registry.
    ///
    /// Examples:
    ///   archway manifest push reg.io/app:1.0
    ///   archway manifest push --purge reg.io/app:1.0 docker://reg.io/app:latest
    #[command(verbatim_doc_comment)]
    Push(PushArgs),
    /// Delete local lists.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the list (a reference: REGISTRY/NAME[:TAG]).
    list: String,
    /// Images to put in it (none: an empty list to `add` to, as with podman).
    images: Vec<String>,
    /// Add to an existing list; replace an entry of the same platform.
    #[arg(long)]
    amend: bool,
    /// Images that are indexes contribute all their images.
    #[arg(long)]
    all: bool,
    /// Push as an OCI index or a Docker manifest list (default: Docker when every image is a
    /// Docker schema 2 manifest, else OCI).
    #[arg(long, value_enum)]
    format: Option<ListFormatArg>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PlatformArgs {
    /// Operating system.
    #[arg(long)]
    os: Option<String>,
    /// Architecture (amd64, arm64, …; aliases such as x86_64 and aarch64 are normalised).
    #[arg(long)]
    arch: Option<String>,
    /// Architecture variant (v7, v8, …).
    #[arg(long)]
    variant: Option<String>,
    /// OS version (Windows images).
    #[arg(long)]
    os_version: Option<String>,
    /// OS features, comma-separated.
    #[arg(long, value_delimiter = ',')]
    os_features: Option<Vec<String>>,
}

impl PlatformArgs {
    fn overrides(&self) -> PlatformOverride {
        PlatformOverride {
            os: self.os.clone(),
            arch: self.arch.clone(),
            variant: self.variant.clone(),
            os_version: self.os_version.clone(),
            os_features: self.os_features.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct AddArgs {
    list: String,
    image: String,
    /// Add every image of an index.
    #[arg(long)]
    all: bool,
    /// Replace an entry of the same platform.
    #[arg(long)]
    amend: bool,
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct AnnotateArgs {
    list: String,
    /// The image in the list (its reference or digest).
    image: String,
    #[command(flatten)]
    platform: PlatformArgs,
    /// Annotation (repeatable), KEY=VALUE.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    list: String,
    /// Digest (or reference) of the image to remove.
    image: String,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A local list's name, or a manifest in a registry.
    reference: String,
    /// Also show each image's manifest.
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    list: String,
    /// Where to push (default: the list's name).
    dest: Option<String>,
    /// Accepted for podman compatibility: images missing in the destination are always pushed.
    #[arg(long)]
    all: bool,
    /// Delete the local list after a successful push.
    #[arg(long, short)]
    purge: bool,
    /// Push as an OCI index or a Docker manifest list.
    #[arg(long, short, value_enum)]
    format: Option<ListFormatArg>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true)]
    lists: Vec<String>,
}

fn client_for(registry: &RegistryArgs, refs: &[&str]) -> anyhow::Result<Client> {
    let regs: Vec<String> = refs
        .iter()
        .filter_map(|r| match Location::parse(r) {
            Ok(Location::Registry(r)) => Some(r.registry),
            _ => None,
        })
        .collect();
    registry.client(&regs.iter().map(String::as_str).collect::<Vec<_>>())
}

fn summary(list: &manifest_list::ManifestList) {
    println!("{} ({} images)", list.name, list.entries.len());
    for e in &list.entries {
        let p = e
            .descriptor
            .platform
            .as_ref()
            .map_or_else(|| "?".to_owned(), ToString::to_string);
        println!("  {p:<16} {}", e.image);
    }
}

pub fn run(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    let store = ListStore::default_location();
    match cmd {
        ManifestCommand::Create(a) => {
            let mut refs: Vec<&str> = vec![&a.list];
            refs.extend(a.images.iter().map(String::as_str));
            let client = client_for(&a.registry, &refs)?;
            let list = block_on(manifest_list::create(
                &client,
                &store,
                &a.list,
                &a.images,
                a.amend,
                a.all,
                a.format.map(Into::into),
            ))?
            .with_context(|| format!("creating manifest list {}", a.list))?;
            println!("Created manifest list {}", list.name);
            summary(&list);
        }
        ManifestCommand::Add(a) => {
            let client = client_for(&a.registry, &[&a.list, &a.image])?;
            let list = block_on(manifest_list::add(
                &client,
                &store,
                &a.list,
                &a.image,
                a.all,
                &a.platform.overrides(),
                a.amend,
            ))?
            .with_context(|| format!("adding {} to {}", a.image, a.list))?;
            summary(&list);
        }
        ManifestCommand::Annotate(a) => {
            let mut annotations = BTreeMap::new();
            for kv in &a.annotations {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--annotation `{kv}` is not KEY=VALUE"))?;
                annotations.insert(k.to_owned(), v.to_owned());
            }
            let list = manifest_list::annotate(
                &store,
                &a.list,
                &a.image,
                &a.platform.overrides(),
                &annotations,
            )
            .with_context(|| format!("annotating {} in {}", a.image, a.list))?;
            summary(&list);
        }
        ManifestCommand::Remove(a) => {
            let list = manifest_list::remove_entry(&store, &a.list, &a.image)
                .with_context(|| format!("removing {} from {}", a.image, a.list))?;
            summary(&list);
        }
        ManifestCommand::Inspect(a) => inspect(&store, a)?,
        ManifestCommand::Push(a) => {
            let mut refs: Vec<&str> = vec![&a.list];
            if let Some(d) = &a.dest {
                refs.push(d);
            }
            let client = client_for(&a.registry, &refs)?;
            let opts = CopyOptions {
                concurrency: a.registry.concurrency,
                progress: progress(a.quiet),
                ..CopyOptions::default()
            };
            let report = block_on(manifest_list::push(
                &client,
                &store,
                &a.list,
                a.dest.as_deref(),
                a.format.map(Into::into),
                &opts,
            ))?
            .with_context(|| format!("pushing manifest list {}", a.list))?;
            if a.purge {
                store.remove(&manifest_list::list_name(&a.list)?)?;
            }
            println!("{}", report.digest);
            eprintln!(
                "pushed {} ({}) to {}",
                report.digest, report.media_type, report.destination
            );
        }
        ManifestCommand::Rm(a) => {
            let mut missing = Vec::new();
            for l in &a.lists {
                let name = manifest_list::list_name(l)?;
                if store.remove(&name)? {
                    println!("removed {name}");
                } else {
                    missing.push(name);
                }
            }
            if !missing.is_empty() {
                bail!("no local manifest list named {}", missing.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(store: &ListStore, a: InspectArgs) -> anyhow::Result<()> {
    let name = manifest_list::list_name(&a.reference).ok();
    let local = match &name {
        Some(n) => store.load(n)?,
        None => None,
    };
    let client = client_for(&a.registry, &[&a.reference])?;
    if let Some(list) = local {
        if !a.verbose {
            return print_json(&list.to_index());
        }
        let mut out = Vec::new();
        for e in &list.entries {
            let r: archway_oci::Reference = e.image.parse()?;
            let m = block_on(client.get_manifest(&r.with_digest(e.descriptor.digest.clone())))?
                .with_context(|| format!("fetching {}", e.image))?;
            out.push(verbose_entry(&e.image, &e.descriptor, &m.bytes)?);
        }
        return print_json(&out);
    }
    let loc = Location::parse(&a.reference)?;
    let Location::Registry(r) = &loc else {
        bail!("{loc}: use `archway image inspect` for OCI layouts");
    };
    // `REGISTRY/NAME` means its `latest` tag, as with docker and podman.
    let mut r = r.clone();
    if r.tag.is_none() && r.digest.is_none() {
        r.tag = Some("latest".into());
    }
    let r = &r;
    let m = block_on(client.get_manifest(r))?.with_context(|| format!("inspecting {r}"))?;
    let value: serde_json::Value = serde_json::from_slice(&m.bytes)?;
    if !a.verbose {
        return print_json(&value);
    }
    let desc =
        archway_oci::Descriptor::new(m.media_type.clone(), m.digest.clone(), m.bytes.len() as u64);
    if archway_oci::media_type::is_index(&m.media_type) {
        let index: archway_oci::Index = serde_json::from_slice(&m.bytes)?;
        let mut out = Vec::new();
        for child in &index.manifests {
            let cm = block_on(client.get_manifest(&r.with_digest(child.digest.clone())))??;
            out.push(verbose_entry(
                &r.with_digest(child.digest.clone()).to_string(),
                child,
                &cm.bytes,
            )?);
        }
        return print_json(&out);
    }
    print_json(&verbose_entry(&r.to_string(), &desc, &m.bytes)?)
}

/// One entry of `--verbose` output, shaped like `docker manifest inspect -v`.
fn verbose_entry(
    image: &str,
    desc: &archway_oci::Descriptor,
    bytes: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes)?;
    let key = if desc.media_type == archway_oci::media_type::DOCKER_MANIFEST {
        "SchemaV2Manifest"
    } else {
        "OCIManifest"
    };
    Ok(serde_json::json!({
        "Ref": image,
        "Descriptor": desc,
        "Raw": base64::engine::general_purpose::STANDARD.encode(bytes),
        key: manifest,
    }))
}
