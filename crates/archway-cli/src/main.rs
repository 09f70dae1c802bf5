//! `archway`: build, test and ship multi-architecture container images on your own runners.
//!
//! This crate only parses arguments and prints; every capability lives in a library crate.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, test and ship multi-architecture (linux/amd64 + linux/arm64) container images on
/// your own machines.
#[derive(Debug, Parser)]
#[command(name = "archway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The built-in OCI registry: serve it, collect its garbage.
    #[command(subcommand)]
    Registry(commands::registry::RegistryCommand),
    /// Images: copy between registries and OCI layouts, inspect, list tags, import, remove.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Multi-platform manifest lists, like `docker manifest` and `podman manifest`.
    #[command(subcommand)]
    Manifest(commands::manifest::ManifestCommand),
    /// Check pipeline definitions (.gitlab-ci.yml, CodeCatalyst workflows) for errors.
    ///
    /// Prints `file:line:col: error: message` with a hint; exits 1 if there are errors.
    Lint(commands::pipeline::LintArgs),
    /// Show the job graph a pipeline definition makes: stages, jobs, platforms, edges.
    ///
    /// Examples:
    ///   archway plan                                   # discovers .gitlab-ci.yml
    ///   archway plan --branch release/1.2 --var DEPLOY=1
    ///   archway plan --tag v1.0 --format mermaid > pipeline.mmd
    ///   archway plan .codecatalyst/workflows/build.yaml --format json
    #[command(verbatim_doc_comment)]
    Plan(commands::pipeline::PlanArgs),
    /// Build a Dockerfile for one or more platforms, daemonless and reproducibly.
    ///
    /// Every platform is built in parallel from one call; steps that do not depend on the
    /// platform are computed once. RUN steps for other architectures run through qemu-user.
    /// Kaniko's executor flags (--context, --dockerfile, --destination, --custom-platform,
    /// --no-push, --tar-path, --cache-repo, ...) are accepted.
    ///
    /// Examples:
    ///   archway build --check                                   # validate, like docker build --check
    ///   archway build . --platform linux/amd64,linux/arm64 -t localhost:5000/app:1.0 --push
    ///   archway build -f docker/Dockerfile --output oci:./out:1.0 --build-arg VERSION=1.2
    ///   archway build --context dir://. --dockerfile Dockerfile --destination reg/app:1.0
    #[command(verbatim_doc_comment)]
    Build(Box<commands::build::BuildArgs>),
    /// Run a command in an image (the build sandbox), on any platform qemu can emulate.
    Run(Box<commands::sandbox::RunArgs>),
    /// Dev environments from a devfile.yaml or devcontainer.json: up, exec, shell, ls, stop,
    /// down.
    #[command(subcommand)]
    Dev(commands::dev::DevCommand),
    /// Report what this host can run: OCI runtime, user namespaces, overlayfs, qemu binfmt.
    Doctor(commands::sandbox::DoctorArgs),
    /// The coordinator: API, built-in registry and metrics on one port; its tokens.
    Server(commands::server::ServerArgs),
    /// A machine that runs jobs for a server: register it, run it, drain it.
    #[command(subcommand)]
    Runner(commands::runner::RunnerCommand),
    /// Pipelines on a server: run this repository's, list, show, cancel, retry.
    #[command(subcommand)]
    Pipeline(commands::remote::PipelineCommand),
    /// Jobs on a server: follow a log, retry, cancel, play a manual job.
    #[command(subcommand)]
    Job(commands::remote::JobCommand),
    /// Log in to a registry (credentials go to Docker's config.json).
    Login(commands::login::LoginArgs),
    /// Sign an image with a key pair, cosign-compatible (and make key pairs).
    Sign(commands::sign::SignArgs),
    /// Check an image's signature against a public key.
    Verify(commands::sign::VerifyArgs),
    /// Log out of a registry.
    Logout(commands::login::LogoutArgs),
    /// Print the version and the platform this binary was built for (`--json` for scripts).
    Version(VersionArgs),
}

#[derive(Debug, clap::Args)]
struct VersionArgs {
    /// One JSON object: {"version", "platform", "linkage"}.
    #[arg(long)]
    json: bool,
}

/// `archway version`: what a runner or an image's user checks first.
fn version(a: VersionArgs) -> anyhow::Result<ExitCode> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let platform = format!("{}/{arch}", std::env::consts::OS);
    let version = env!("CARGO_PKG_VERSION");
    // musl builds are the static release binaries (scripts/release.sh).
    let libc = if cfg!(target_env = "musl") {
        "static, musl"
    } else {
        "dynamic"
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"version": version, "platform": platform, "linkage": libc})
        );
    } else {
        println!("archway {version} ({platform}, {libc})");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Called as `docker`, `podman`, `buildah`, `manifest-tool` or `/kaniko/executor` (the
    // runner's toolbox links those names to this binary): be that tool.
    if let Some(tool) = std::env::args()
        .next()
        .and_then(|a| commands::toolbox::tool_name(&a))
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return commands::toolbox::main(tool, &args);
    }
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Registry(commands::registry::RegistryCommand::Serve(_))
            | Command::Server(_)
            | Command::Runner(commands::runner::RunnerCommand::Run(_))
    );
    if !serving {
        // `archway … | head`: end quietly when the reader goes away, as other Unix tools
        // do, rather than panic on a broken pipe. Servers keep SIGPIPE ignored (a client
        // that hangs up must not kill them).
        // The one unsafe call in the workspace: std offers no safe way to restore SIGPIPE.
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Servers hold a descriptor per connection and open file, builds many files at once.
    if let Err(e) = archway_http::raise_nofile_limit() {
        eprintln!("warning: could not raise the open-file limit: {e}");
    }
    // The servers (`registry serve`, `server`, `runner run`) install their own (an access
    // log, text or JSON); every other command prints what the libraries warn about.
    if !serving {
        logging::init();
    }
    let result = match cli.command {
        Command::Registry(cmd) => commands::registry::run(cmd),
        Command::Image(cmd) => commands::image::run(cmd),
        Command::Manifest(cmd) => commands::manifest::run(cmd),
        Command::Lint(args) => commands::pipeline::lint(args),
        Command::Plan(args) => commands::pipeline::plan(args),
        Command::Build(args) => commands::build::run(*args),
        Command::Run(args) => commands::sandbox::run(*args),
        Command::Doctor(args) => commands::sandbox::doctor(args),
        Command::Dev(cmd) => commands::dev::run(cmd),
        Command::Server(args) => commands::server::run(args),
        Command::Runner(cmd) => commands::runner::run(cmd),
        Command::Pipeline(cmd) => commands::remote::pipeline(cmd),
        Command::Job(cmd) => commands::remote::job(cmd),
        Command::Login(args) => commands::login::login(args),
        Command::Sign(args) => commands::sign::sign(args),
        Command::Verify(args) => commands::sign::verify(args),
        Command::Logout(args) => commands::login::logout(args),
        Command::Version(args) => version(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
