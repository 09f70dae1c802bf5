//! `archway image copy --all` vs `skopeo copy --all`: the same two-platform image between two
//! local registries (Archway's, on loopback), in the same run.
//!
//! * cold: a fresh destination registry for every run (so neither tool can skip or mount);
//! * warm: the destination already has every blob and manifest.
//!
//! Each scenario alternates the tools run by run and reports the median wall time.
//! Run: `cargo build --release && target/release/image-copy-bench` (see `--help`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use archway_bench::proc::{archway_binary, start_archway_registry, time_command};
use archway_bench::stats::median;
use archway_bench::table;
use archway_oci::config::ImageConfig;
use archway_oci::layout::ImageLayout;
use archway_oci::{Descriptor, ImageManifest, Index, Platform, media_type};
use clap::Parser;

/// Compare archway image copy --all with skopeo copy --all between two local registries.
#[derive(Debug, Parser)]
#[command(name = "image-copy-bench")]
struct Args {
    /// The archway binary (default: next to this program).
    #[arg(long)]
    archway: Option<PathBuf>,
    /// Runs per tool and scenario.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Layers per platform.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Size of each layer's (incompressible) content in MiB.
    #[arg(long, default_value_t = 8)]
    layer_mib: usize,
}

/// Writes a two-platform image with `layers` random layers per platform into an OCI layout.
fn make_image(dir: &Path, layers: usize, layer_mib: usize) -> anyhow::Result<()> {
    let layout = ImageLayout::create(dir)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut index = Index::new_oci();
    for platform in [Platform::linux_amd64(), Platform::linux_arm64()] {
        let mut descs = Vec::new();
        let mut config = ImageConfig::for_platform(&platform);
        for i in 0..layers {
            let mut data = vec![0u8; layer_mib * 1024 * 1024];
            for b in data.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, format!("data-{i}"), &data[..])?;
            let tar = tar.into_inner()?;
            let diff_id = archway_oci::Digest::sha256(&tar);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar)?;
            let gz = gz.finish()?;
            let d = layout.write_blob(&gz)?;
            descs.push(Descriptor::new(
                media_type::OCI_LAYER_GZIP,
                d,
                gz.len() as u64,
            ));
            config.rootfs.diff_ids.push(diff_id);
        }
        let cbytes = config.to_json();
        let cd = layout.write_blob(&cbytes)?;
        let m = ImageManifest {
            schema_version: 2,
            media_type: media_type::OCI_MANIFEST.into(),
            artifact_type: None,
            config: Descriptor::new(media_type::OCI_CONFIG, cd, cbytes.len() as u64),
            layers: descs,
            subject: None,
            annotations: None,
        };
        let mb = m.to_json();
        let md = layout.write_blob(&mb)?;
        let mut desc = Descriptor::new(media_type::OCI_MANIFEST, md, mb.len() as u64);
        desc.platform = Some(platform);
        index.manifests.push(desc);
    }
    let ib = index.to_json();
    let id = layout.write_blob(&ib)?;
    layout.set_ref(
        "bench",
        &Descriptor::new(media_type::OCI_INDEX, id, ib.len() as u64),
    )?;
    Ok(())
}

fn archway_copy(bin: &Path, home: &Path, src: &str, dst: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("HOME", home)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .args(["image", "copy", "--all", "--quiet", src, dst]);
    c
}

fn skopeo_copy(home: &Path, src: &str, dst: &str) -> Command {
    let mut c = Command::new("skopeo");
    // A private HOME: skopeo's blob-info cache must not remember earlier runs' blobs.
    c.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("share"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .args([
            "--insecure-policy",
            "copy",
            "--all",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{src}"),
            &format!("docker://{dst}"),
        ]);
    c
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let archway = archway_binary(args.archway)?;
    if Command::new("skopeo").arg("--version").output().is_err() {
        bail!("skopeo not found; install it with `apt-get install skopeo`");
    }
    let work = tempfile::tempdir()?;
    eprintln!(
        "making a two-platform image: {} layers x {} MiB per platform",
        args.layers, args.layer_mib
    );
    let layout_dir = work.path().join("image");
    make_image(&layout_dir, args.layers, args.layer_mib)?;
    let src_root = work.path().join("src");
    let src = start_archway_registry(&archway, &src_root)?;
    let home = work.path().join("home");
    std::fs::create_dir_all(&home)?;
    let src_ref = format!("{}/bench/app:1", src.addr);
    let st = Command::new(&archway)
        .env("HOME", &home)
        .args([
            "image",
            "copy",
            "--all",
            "--quiet",
            &format!("oci:{}:bench", layout_dir.display()),
            &src_ref,
        ])
        .status()?;
    if !st.success() {
        bail!("seeding the source registry failed");
    }
    let total: u64 = walk_size(&layout_dir.join("blobs"))?;

    let mut results: Vec<(String, &str, Vec<Duration>)> = Vec::new();
    // Cold: a fresh destination registry per run.
    let mut cold_a = Vec::new();
    let mut cold_s = Vec::new();
    for run in 0..args.runs {
        for tool in if run % 2 == 0 {
            ["archway", "skopeo"]
        } else {
            ["skopeo", "archway"]
        } {
            let root = work.path().join(format!("dst-cold-{run}-{tool}"));
            let dst = start_archway_registry(&archway, &root)?;
            let dst_ref = format!("{}/bench/app:1", dst.addr);
            let h = work.path().join(format!("home-cold-{run}-{tool}"));
            std::fs::create_dir_all(&h)?;
            let d = if tool == "archway" {
                time_command(archway_copy(&archway, &h, &src_ref, &dst_ref))?
            } else {
                time_command(skopeo_copy(&h, &src_ref, &dst_ref))?
            };
            if tool == "archway" {
                cold_a.push(d)
            } else {
                cold_s.push(d)
            }
            drop(dst);
            std::fs::remove_dir_all(&root).context("cleaning up")?;
        }
    }
    results.push(("cold (empty destination)".into(), "archway", cold_a));
    results.push(("cold (empty destination)".into(), "skopeo", cold_s));

    // Warm: the destination has everything.
    let warm_root = work.path().join("dst-warm");
    let dst = start_archway_registry(&archway, &warm_root)?;
    let dst_ref = format!("{}/bench/app:1", dst.addr);
    time_command(archway_copy(&archway, &home, &src_ref, &dst_ref))?;
    let mut warm_a = Vec::new();
    let mut warm_s = Vec::new();
    for run in 0..args.runs {
        for tool in if run % 2 == 0 {
            ["archway", "skopeo"]
        } else {
            ["skopeo", "archway"]
        } {
            let h = work.path().join(format!("home-warm-{run}-{tool}"));
            std::fs::create_dir_all(&h)?;
            let d = if tool == "archway" {
                time_command(archway_copy(&archway, &h, &src_ref, &dst_ref))?
            } else {
                time_command(skopeo_copy(&h, &src_ref, &dst_ref))?
            };
            if tool == "archway" {
                warm_a.push(d)
            } else {
                warm_s.push(d)
            }
        }
    }
    results.push(("warm (destination has the blobs)".into(), "archway", warm_a));
    results.push(("warm (destination has the blobs)".into(), "skopeo", warm_s));

    let mut rows = vec![vec![
        "scenario".to_owned(),
        "tool".into(),
        "runs".into(),
        "median s".into(),
        "min s".into(),
        "MiB/s (median)".into(),
        "archway/skopeo".into(),
    ]];
    let mut json = Vec::new();
    for pair in results.chunks(2) {
        let (a, s) = (&pair[0], &pair[1]);
        let ratio = median(&a.2).as_secs_f64() / median(&s.2).as_secs_f64();
        for (i, (scenario, tool, times)) in pair.iter().enumerate() {
            let m = median(times);
            let min = *times.iter().min().unwrap_or(&Duration::ZERO);
            rows.push(vec![
                scenario.clone(),
                (*tool).to_owned(),
                times.len().to_string(),
                format!("{:.3}", m.as_secs_f64()),
                format!("{:.3}", min.as_secs_f64()),
                format!("{:.0}", total as f64 / 1048576.0 / m.as_secs_f64()),
                if i == 0 {
                    format!("{ratio:.2}")
                } else {
                    String::new()
                },
            ]);
            json.push(serde_json::json!({
                "scenario": scenario, "tool": tool, "median_s": m.as_secs_f64(),
                "runs_s": times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            }));
        }
    }
    println!(
        "image: 2 platforms, {} layers each, {:.1} MiB of blobs\n",
        args.layers,
        total as f64 / 1048576.0
    );
    println!("{}", table::render(&rows));
    println!(
        "archway/skopeo = archway's median wall time / skopeo's (below 1 means archway is faster)"
    );
    println!("JSON {}", serde_json::Value::Array(json));
    Ok(())
}

fn walk_size(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        n += if m.is_dir() {
            walk_size(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(n)
}
