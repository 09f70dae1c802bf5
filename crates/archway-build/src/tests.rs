//! The builder against its test doubles (no root, runtime, qemu or registry): the cache-key
//! invariant, once-per-key work across platforms, the registry cache's fallbacks, and calls
//! from async code.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use archway_oci::layout::ImageLayout;
use archway_oci::{Descriptor, ImageManifest, Platform, Reference};

use crate::testing::{FakeImages, Operation, RecordingRunner};
use crate::{BuildEvent, BuildRequest, BuildResult, Builder, Store};

const BASE: &str = "registry.test/base:1";

/// A build environment: fake registry with `BASE` for amd64 and arm64, a store, a context.
struct Env {
    images: Arc<FakeImages>,
    runner: Arc<RecordingRunner>,
    store_dir: tempfile::TempDir,
    context: tempfile::TempDir,
    events: Arc<Mutex<Vec<BuildEvent>>>,
}

impl Env {
    fn new() -> Env {
        let images = FakeImages::new().unwrap();
        images
            .add_image(
                BASE,
                &[Platform::linux_amd64(), Platform::linux_arm64()],
                &[("bin/sh", "fake shell\n"), ("etc/os-release", "fake\n")],
            )
            .unwrap();
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("a.txt"), "a\n").unwrap();
        std::fs::write(context.path().join("b.txt"), "b\n").unwrap();
        Env {
            images: Arc::new(images),
            runner: Arc::new(RecordingRunner::default()),
            store_dir: tempfile::tempdir().unwrap(),
            context,
            events: Arc::default(),
        }
    }

    fn builder(&self) -> Builder {
        self.builder_in(self.store_dir.path())
    }

    fn builder_in(&self, store: &Path) -> Builder {
        let events = self.events.clone();
        Builder::new(Arc::new(Store::open(store).unwrap()), self.images.clone())
            .with_runner(self.runner.clone())
            .with_progress(Arc::new(move |e| events.lock().unwrap().push(e)))
    }

    fn request(&self, dockerfile: &str) -> BuildRequest {
        let (df, diags) = crate::dockerfile::parse("Dockerfile", dockerfile);
        assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
        BuildRequest {
            context: self.context.path().to_owned(),
            dockerfile: df.unwrap(),
            platforms: vec![Platform::linux_amd64()],
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            no_cache: false,
            secrets: BTreeMap::new(),
            source_date_epoch: 0,
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                BuildEvent::Warning(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }
}

fn layers_of(result: &BuildResult, platform: &Platform) -> Vec<Descriptor> {
    let layout = ImageLayout::open(&result.layout).unwrap();
    let (_, d) = result.images.iter().find(|(p, _)| p == platform).unwrap();
    let m: ImageManifest = serde_json::from_slice(&layout.read_blob(&d.digest).unwrap()).unwrap();
    m.layers
}

const DOCKERFILE: &str = "\
FROM registry.test/base:1
ENV E=1
WORKDIR /w
COPY a.txt /a.txt
ARG V=1
RUN echo $V
USER 1000
RUN echo second
";

/// A change to one build input, applied to the request (and the context).
type Change = fn(&Env, &mut BuildRequest);

#[tokio::test(flavor = "multi_thread")]
async fn every_input_of_a_step_changes_its_key_and_nothing_else_does() {
    // (what changes, how many of the 3 layer steps (COPY, RUN, RUN) still hit the cache)
    let cases: Vec<(&str, Change, usize)> = vec![
        ("nothing", |_, _| {}, 3),
        (
            "a context file nothing copies",
            |env, _| std::fs::write(env.context.path().join("b.txt"), "changed\n").unwrap(),
            3,
        ),
        (
            "a label (applied to the image, not the steps)",
            |_, r| {
                r.labels.insert("org.example".into(), "x".into());
            },
            3,
        ),
        (
            "an undeclared build argument",
            |_, r| {
                r.build_args.insert("UNUSED".into(), "x".into());
            },
            3,
        ),
        (
            "a comment in the Dockerfile",
            |env, r| *r = env.request(&format!("# note\n{DOCKERFILE}")),
            3,
        ),
        (
            "the content of a copied file",
            |env, _| std::fs::write(env.context.path().join("a.txt"), "A\n").unwrap(),
            0,
        ),
        (
            "ENV before the steps",
            |env, r| *r = env.request(&DOCKERFILE.replace("ENV E=1", "ENV E=2")),
            0,
        ),
        (
            "WORKDIR before the steps",
            |env, r| *r = env.request(&DOCKERFILE.replace("WORKDIR /w", "WORKDIR /x")),
            0,
        ),
        (
            "a build argument the RUN sees",
            |_, r| {
                r.build_args.insert("V".into(), "2".into());
            },
            1,
        ),
        (
            "the second RUN's command",
            |env, r| *r = env.request(&DOCKERFILE.replace("echo second", "echo 2nd")),
            2,
        ),
        (
            "USER before the second RUN",
            |env, r| *r = env.request(&DOCKERFILE.replace("USER 1000", "USER 1001")),
            2,
        ),
        (
            "RUN's network",
            |env, r| {
                *r = env.request(
                    &DOCKERFILE.replace("RUN echo second", "RUN --network=none echo second"),
                )
            },
            2,
        ),
        (
            "RUN's mounts",
            |env, r| {
                *r = env.request(&DOCKERFILE.replace(
                    "RUN echo second",
                    "RUN --mount=type=cache,target=/c echo second",
                ))
            },
            2,
        ),
        (
            "SOURCE_DATE_EPOCH",
            |_, r| r.source_date_epoch = 1_700_000_000,
            0,
        ),
        (
            "the platform",
            |_, r| r.platforms = vec![Platform::linux_arm64()],
            0,
        ),
        (
            "the base image",
            |env, _| {
                env.images
                    .add_image(
                        BASE,
                        &[Platform::linux_amd64()],
                        &[("bin/sh", "fake shell\n"), ("etc/os-release", "new\n")],
                    )
                    .unwrap();
            },
            0,
        ),
    ];
    for (what, change, hits) in cases {
        // Each case starts from a store that has built the original.
        let env = Env::new();
        let b = env.builder();
        let first = b.build(&env.request(DOCKERFILE)).await.unwrap();
        assert_eq!((first.steps, first.cached_steps), (7, 0), "{what}");
        let runs_before = env.runner.runs().len();
        let mut req = env.request(DOCKERFILE);
        change(&env, &mut req);
        let second = b.build(&req).await.unwrap();
        assert_eq!(second.cached_steps, hits, "changing {what}");
        // The steps that missed ran again: the COPY is not a RUN.
        let copy_hit = usize::from(hits > 0);
        assert_eq!(
            env.runner.runs().len() - runs_before,
            2 - (hits - copy_hit),
            "changing {what}"
        );
        if hits == 3 {
            assert_eq!(
                layers_of(&first, &Platform::linux_amd64()),
                layers_of(&second, &Platform::linux_amd64()),
                "changing {what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn platforms_share_steps_and_layers_that_do_not_depend_on_them() {
    let env = Env::new();
    let b = env.builder();
    let mut req = env.request(
        "\
FROM --platform=$BUILDPLATFORM registry.test/base:1 AS tools
RUN echo native tool
FROM registry.test/base:1
COPY a.txt /a.txt
COPY --from=tools /ran /tool
",
    );
    req.platforms = vec![Platform::linux_amd64(), Platform::linux_arm64()];
    let result = b.build(&req).await.unwrap();
    // The native stage ran once for both targets (the second platform waited and reused it).
    let runs = env.runner.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].platform, Platform::host().normalized());
    // The COPY layers are the same bytes on both platforms; the base layers are not.
    let (amd, arm) = (
        layers_of(&result, &Platform::linux_amd64()),
        layers_of(&result, &Platform::linux_arm64()),
    );
    assert_eq!(amd.len(), 3);
    assert_ne!(amd[0], arm[0]);
    assert_eq!(amd[1..], arm[1..]);
    // Only the locks held right now are remembered.
    assert_eq!(b.store().tracked_locks(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_registry_cache_is_shared_and_never_fails_a_build() {
    let env = Env::new();
    let repo: Reference = "registry.test/cache".parse().unwrap();
    let req = env.request(DOCKERFILE);
    let first = env
        .builder()
        .with_cache_repo(repo.clone())
        .build(&req)
        .await
        .unwrap();
    assert_eq!(first.cached_steps, 0);
    let pushes = env
        .images
        .calls()
        .iter()
        .filter(|c| c.starts_with("push registry.test/cache:"))
        .count();
    assert_eq!(pushes, 3);
    assert!(
        env.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, BuildEvent::CacheExported { entries: 3, .. }))
    );

    // Another machine (a fresh store) gets every layer step from the registry cache.
    let elsewhere = tempfile::tempdir().unwrap();
    let runs = env.runner.runs().len();
    let second = env
        .builder_in(elsewhere.path())
        .with_cache_repo(repo.clone())
        .build(&req)
        .await
        .unwrap();
    assert_eq!(second.cached_steps, 3);
    assert_eq!(env.runner.runs().len(), runs);
    assert_eq!(second.descriptor, first.descriptor);

    // A registry that fails: lookups fall back to running the step, exports to a warning.
    env.images.fail(Operation::Exists);
    env.images.fail(Operation::Push);
    let third_store = tempfile::tempdir().unwrap();
    let third = env
        .builder_in(third_store.path())
        .with_cache_repo(repo)
        .build(&req)
        .await
        .unwrap();
    assert_eq!(third.cached_steps, 0);
    assert_eq!(env.runner.runs().len(), runs + 2);
    assert_eq!(third.descriptor, first.descriptor);
    let warnings = env.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("running the step instead") && w.contains("Exists is failing")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("cache export to") && w.contains("Push is failing")),
        "{warnings:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn builds_from_a_current_thread_runtime_too() {
    let env = Env::new();
    let result = env.builder().build(&env.request(DOCKERFILE)).await.unwrap();
    assert_eq!(result.steps, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_a_runner_is_refused_before_any_pull() {
    let env = Env::new();
    let store = Arc::new(Store::open(env.store_dir.path()).unwrap());
    let err = Builder::new(store, env.images.clone())
        .build(&env.request(DOCKERFILE))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RUN needs a sandbox"), "{err}");
    assert!(env.images.calls().is_empty(), "{:?}", env.images.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_store_pulls_and_unpacks_for_a_runner() {
    let env = Env::new();
    let images = env.builder().images().clone();
    let image = images
        .pull(
            &archway_client::Location::Registry(BASE.parse().unwrap()),
            &Platform::linux_arm64(),
        )
        .await
        .unwrap();
    assert_eq!(image.config.architecture, "arm64");
    assert_eq!(
        image.config.config.as_ref().unwrap().cmd,
        Some(vec!["sh".to_owned()])
    );
    let rootfs = images.unpack(&image).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("platform")).unwrap(),
        "linux/arm64"
    );
    // Unpacked once: the same snapshot again.
    assert_eq!(images.unpack(&image).await.unwrap(), rootfs);
    let missing = images
        .pull(
            &archway_client::Location::Registry("registry.test/nope:1".parse().unwrap()),
            &Platform::linux_arm64(),
        )
        .await;
    assert!(missing.is_err());
}
