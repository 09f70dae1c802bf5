//! Planning a generated 2,000-job `.gitlab-ci.yml` (anchors, merge keys, multi-level
//! `extends`, `parallel:matrix`, rules, needs): time per plan and the process's peak memory.
//! Goal: under 100 ms. Run: `cargo build --release && target/release/pipeline-bench`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use archway_bench::table;
use archway_pipeline::{Context, MemoryFiles};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "pipeline-bench")]
struct Args {
    /// Plain jobs (each extends a 3-level template chain and merges an anchor).
    #[arg(long, default_value_t = 500)]
    plain: usize,
    /// Matrix jobs, 150 instances each (5 OS x 3 ARCH x 10 VERSION).
    #[arg(long, default_value_t = 10)]
    matrix: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

fn generate(plain: usize, matrix: usize) -> String {
    let mut y = String::new();
    y.push_str("stages: [build, test, deploy]\nvariables:\n  REGISTRY: registry.example.com\n  IMAGE: $REGISTRY/app\n");
    y.push_str(".common: &common\n  image: $IMAGE:latest\n  retry: 1\n  interruptible: true\n  before_script: [echo start]\n");
    for t in 0..20 {
        let _ = write!(
            y,
            ".base{t}:\n  <<: *common\n  variables:\n    T{t}: \"{t}\"\n  cache:\n    key: k{t}\n    paths: [cache/{t}]\n\
             .mid{t}:\n  extends: .base{t}\n  tags: [amd64]\n  artifacts:\n    paths: [out/{t}]\n    expire_in: 1 day\n\
             .top{t}:\n  extends: .mid{t}\n  rules:\n    - if: $CI_COMMIT_BRANCH == \"main\" && $SKIP_{t} == null\n    - if: $CI_PIPELINE_SOURCE == \"schedule\"\n      when: manual\n"
        );
    }
    for j in 0..plain {
        let stage = ["build", "test", "deploy"][j % 3];
        let _ = write!(
            y,
            "job-{j}:\n  extends: .top{}\n  stage: {stage}\n  variables:\n    N: \"{j}\"\n  script:\n    - make target-{j}\n    - ./check.sh {j}\n",
            j % 20
        );
        if stage == "test" {
            let _ = writeln!(y, "  needs: [job-{}]", j - 1);
        }
    }
    for m in 0..matrix {
        let _ = write!(
            y,
            "matrix-{m}:\n  extends: .top{}\n  stage: build\n  parallel:\n    matrix:\n      - OS: [debian, ubuntu, alpine, fedora, arch]\n        ARCH: [amd64, arm64, s390x]\n        VERSION: [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\", \"10\"]\n  tags: [$ARCH]\n  script: [make OS=$OS ARCH=$ARCH V=$VERSION]\n",
            m % 20
        );
    }
    y
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = generate(args.plain, args.matrix);
    let files = MemoryFiles::default();
    let ctx = Context::push_to("main");
    let before = peak_rss_kib();
    // One untimed run to check the result.
    let (p, diags) = archway_pipeline::plan(".gitlab-ci.yml", &text, &files, &ctx);
    if archway_pipeline::has_errors(&diags) {
        anyhow::bail!("generated pipeline has errors: {}", diags[0]);
    }
    let p = p.ok_or_else(|| anyhow::anyhow!("no pipeline"))?;
    let mut times = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        let (p, _) = archway_pipeline::plan(".gitlab-ci.yml", &text, &files, &ctx);
        times.push(t.elapsed());
        std::hint::black_box(p);
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = *times.last().unwrap_or(&Duration::ZERO);
    let peak = peak_rss_kib();
    let edges: usize = p.jobs.iter().map(|j| j.depends_on.len()).sum();
    let rows = vec![
        vec!["what".to_owned(), "value".to_owned()],
        vec![
            "input".into(),
            format!(
                "{} lines, {:.1} KiB",
                text.lines().count(),
                text.len() as f64 / 1024.0
            ),
        ],
        vec!["jobs planned".into(), p.jobs.len().to_string()],
        vec!["dependency edges".into(), edges.to_string()],
        vec![
            "plan time, median of runs".into(),
            format!("{:.1} ms", median.as_secs_f64() * 1000.0),
        ],
        vec![
            "plan time, slowest run".into(),
            format!("{:.1} ms", max.as_secs_f64() * 1000.0),
        ],
        vec![
            "peak RSS of the process".into(),
            format!("{:.1} MiB", peak as f64 / 1024.0),
        ],
        vec![
            "peak RSS before planning".into(),
            format!("{:.1} MiB", before as f64 / 1024.0),
        ],
        vec![
            "goal".into(),
            format!(
                "< 100 ms: {}",
                if median < Duration::from_millis(100) {
                    "met"
                } else {
                    "NOT met"
                }
            ),
        ],
    ];
    println!("{}", table::render(&rows));
    println!(
        "JSON {}",
        serde_json::json!({"jobs": p.jobs.len(), "median_ms": median.as_secs_f64() * 1000.0, "max_ms": max.as_secs_f64() * 1000.0, "peak_rss_kib": peak, "edges": edges})
    );
    Ok(())
}
