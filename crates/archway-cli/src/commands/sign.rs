//! `archway sign` and `archway verify`: cosign-compatible key-pair signatures ("simple
//! signing" payloads in `sha256-<digest>.sig` attachments, as cosign and containers/image's
//! `use-sigstore-attachments` write them), with no network beyond the registry. The formats
//! live in `archway-attest`; this module fetches and pushes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use archway_attest::sign::{self, IdentityRule, PublicKey, SigningKey};
use archway_client::{Client, ClientError, Location};
use archway_oci::{Digest, Reference, media_type};
use bytes::Bytes;
use clap::Args;
use futures_util::StreamExt as _;

use super::common::{Format, RegistryArgs, block_on, print_json};

/// Largest signature layer read.
const MAX_SIGNATURE_BLOB: usize = 1 << 20;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  archway sign --generate-key archway          # writes archway.key (keep it secret) and archway.pub
  archway sign --key archway.key 127.0.0.1:5000/team/app:1.0
  archway verify --key archway.pub 127.0.0.1:5000/team/app:1.0

A multi-platform image is signed as a whole and per platform (tools that pull one platform
check that platform's manifest). Verify with cosign (`cosign verify --key archway.pub
--insecure-ignore-tlog IMAGE`) or containers/image (`sigstoreSigned` in policy.json with
`use-sigstore-attachments: true`) as well.")]
pub struct SignArgs {
    /// The image to sign (REGISTRY/NAME:TAG or @DIGEST).
    #[arg(required_unless_present = "generate_key")]
    image: Option<String>,
    /// The private key (PKCS#8 or SEC1 PEM, ECDSA P-256).
    #[arg(long, value_name = "FILE", required_unless_present = "generate_key")]
    key: Option<PathBuf>,
    /// Write a new key pair, PREFIX.key (mode 0600) and PREFIX.pub, and exit.
    #[arg(long, value_name = "PREFIX", conflicts_with_all = ["image", "key"])]
    generate_key: Option<PathBuf>,
    /// Overwrite existing key files.
    #[arg(long, requires = "generate_key")]
    force: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image to verify (REGISTRY/NAME:TAG or @DIGEST).
    image: String,
    /// The public key (PKIX PEM), e.g. what `archway sign --generate-key` wrote.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn reference(image: &str) -> anyhow::Result<Reference> {
    match Location::parse(image)? {
        Location::Registry(r) => Ok(r),
        Location::Layout { .. } => {
            bail!("{image}: signatures live in registries; push the image first")
        }
    }
}

fn client(registry: &RegistryArgs, r: &Reference) -> anyhow::Result<Client> {
    registry.client(&[r.registry.as_str()])
}

fn generate(prefix: &Path, force: bool) -> anyhow::Result<ExitCode> {
    let key_path = prefix.with_extension("key");
    let pub_path = prefix.with_extension("pub");
    for p in [&key_path, &pub_path] {
        if p.exists() && !force {
            bail!("{} exists; pass --force to replace it", p.display());
        }
    }
    let key = SigningKey::generate();
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?;
        f.write_all(key.to_pkcs8_pem().as_bytes())?;
    }
    std::fs::write(&pub_path, key.public_key().to_pem())
        .with_context(|| format!("writing {}", pub_path.display()))?;
    eprintln!(
        "wrote {} (private: keep it secret) and {} (public key {})",
        key_path.display(),
        pub_path.display(),
        key.public_key().fingerprint()
    );
    Ok(ExitCode::SUCCESS)
}

/// The manifests a signature covers: the image's, and for an index each platform's.
async fn manifests(client: &Client, r: &Reference) -> anyhow::Result<Vec<Digest>> {
    let m = client.get_manifest(r).await?;
    let mut out = vec![m.digest.clone()];
    if media_type::is_index(&m.media_type) {
        let index: archway_oci::Index = serde_json::from_slice(&m.bytes)?;
        out.extend(index.manifests.iter().map(|d| d.digest.clone()));
    }
    Ok(out)
}

/// The existing `.sig` manifest for `digest`, if any.
async fn existing(client: &Client, sig: &Reference) -> anyhow::Result<Option<Bytes>> {
    match client.get_manifest(sig).await {
        Ok(m) => Ok(Some(m.bytes)),
        Err(ClientError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn push_bytes(
    client: &Client,
    r: &Reference,
    digest: &Digest,
    data: Bytes,
) -> anyhow::Result<()> {
    if client.blob_size(r, digest, &[]).await?.is_some() {
        return Ok(());
    }
    let scopes = [archway_client::client::repo_scope(
        &r.repository,
        "pull,push",
    )];
    let size = data.len() as u64;
    let stream: archway_client::client::ByteStream = Box::pin(futures_util::stream::once(
        futures_util::future::ready(Ok(data)),
    ));
    client
        .push_blob(r, digest, size, None, &scopes, stream)
        .await?;
    Ok(())
}

/// Signs `image` (and each platform of an index) with `key`; returns the digests signed.
pub async fn sign_image(
    client: &Client,
    key: &SigningKey,
    image: &Reference,
) -> anyhow::Result<Vec<Digest>> {
    let digests = manifests(client, image).await?;
    let repo = Reference {
        tag: None,
        digest: None,
        ..image.clone()
    };
    for d in &digests {
        let tag = sign::attachment_tag(d);
        let sig = Reference {
            tag: Some(tag.clone()),
            ..repo.clone()
        };
        let before = existing(client, &sig).await?;
        let att = sign::sign_image(key, image, d, before.as_deref())?;
        for b in &att.blobs {
            push_bytes(
                client,
                &repo,
                &b.descriptor.digest,
                Bytes::from(b.data.clone()),
            )
            .await?;
        }
        client
            .put_manifest(
                &sig,
                &att.tag,
                Bytes::from(att.manifest),
                media_type::OCI_MANIFEST,
            )
            .await
            .with_context(|| format!("pushing the signature {}", sig))?;
    }
    Ok(digests)
}

pub fn sign(a: SignArgs) -> anyhow::Result<ExitCode> {
    if let Some(prefix) = &a.generate_key {
        return generate(prefix, a.force);
    }
    let (Some(image), Some(key_path)) = (&a.image, &a.key) else {
        bail!("pass an image and --key FILE (or --generate-key PREFIX)");
    };
    let pem = std::fs::read_to_string(key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let key = SigningKey::from_pem(&pem).with_context(|| key_path.display().to_string())?;
    let r = reference(image)?;
    let client = client(&a.registry, &r)?;
    let digests = block_on(sign_image(&client, &key, &r))??;
    match a.format {
        Format::Json => print_json(&serde_json::json!({
            "image": r.to_string(),
            "signed": digests.iter().map(|d| d.to_string()).collect::<Vec<String>>(),
            "key": key.public_key().fingerprint().to_string(),
        }))?,
        Format::Text => println!(
            "signed {r} ({} manifest{}: {}) with key {}",
            digests.len(),
            if digests.len() == 1 { "" } else { "s" },
            digests
                .iter()
                .map(|d| d.to_string()[..19].to_owned())
                .collect::<Vec<_>>()
                .join(", "),
            key.public_key().fingerprint()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pem =
        std::fs::read_to_string(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let key = PublicKey::from_pem(&pem).with_context(|| a.key.display().to_string())?;
    let r = reference(&a.image)?;
    let client = client(&a.registry, &r)?;
    let verified = block_on(async {
        let m = client.get_manifest(&r).await?;
        let repo = Reference {
            tag: Some(sign::attachment_tag(&m.digest)),
            digest: None,
            ..r.clone()
        };
        let Some(sig) = existing(&client, &repo).await? else {
            bail!(
                "{r} ({}) is not signed: there is no signature manifest {}",
                m.digest,
                repo
            );
        };
        let parsed = archway_oci::ParsedManifest::parse(&sig, None)?;
        let mut blobs = std::collections::BTreeMap::new();
        for l in &parsed.layers {
            if l.size as usize > MAX_SIGNATURE_BLOB {
                continue;
            }
            let mut s = client.get_blob(&repo, &l.digest, 0).await?;
            let mut data = Vec::new();
            while let Some(c) = s.next().await {
                data.extend_from_slice(&c?);
                if data.len() > MAX_SIGNATURE_BLOB {
                    bail!("a signature layer of {repo} is larger than it says");
                }
            }
            blobs.insert(l.digest.clone(), data);
        }
        let v = sign::verify_image(&key, &r, &m.digest, &sig, &blobs, &IdentityRule::default())
            .with_context(|| {
                format!(
                    "{r} ({}) does not verify with {}",
                    m.digest,
                    a.key.display()
                )
            })?;
        Ok((m.digest, v))
    })??;
    let (digest, v) = verified;
    match a.format {
        Format::Json => print_json(&serde_json::json!({
            "image": r.to_string(),
            "digest": digest.to_string(),
            "identity": v.payload.docker_reference,
            "key": key.fingerprint().to_string(),
        }))?,
        Format::Text => println!(
            "verified {r} ({digest}): signed for {} by key {}",
            v.payload.docker_reference,
            key.fingerprint()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
