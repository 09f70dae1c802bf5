//! The JSON documents of `/api/v1/…`: what clients submit, what runners receive and report,
//! and the views the server answers with. Field names are the wire format; change them only
//! with a new API version.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's place in its lifecycle (GitLab's vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for the jobs it depends on.
    Created,
    /// Ready, waiting for a runner.
    Pending,
    /// Delayed (`when: delayed`): becomes pending at `run_after`.
    Scheduled,
    /// Waiting for someone to play it (`when: manual`).
    Manual,
    Running,
    /// Cancel requested; the runner has not confirmed yet.
    Canceling,
    Success,
    Failed,
    Canceled,
    /// Not run: its `when` did not match the outcome of the jobs before it.
    Skipped,
}

impl JobStatus {
    pub const ALL: [JobStatus; 10] = [
        JobStatus::Created,
        JobStatus::Pending,
        JobStatus::Scheduled,
        JobStatus::Manual,
        JobStatus::Running,
        JobStatus::Canceling,
        JobStatus::Success,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "created",
            JobStatus::Pending => "pending",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Manual => "manual",
            JobStatus::Running => "running",
            JobStatus::Canceling => "canceling",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::Skipped => "skipped",
        }
    }

    /// Success, failed, canceled or skipped: nothing will happen to it unless retried.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failed | JobStatus::Canceled | JobStatus::Skipped
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown job status `{s}`"))
    }
}

/// A pipeline's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineStatus {
    Created,
    Pending,
    Running,
    /// Waiting for a manual job that blocks the rest (`allow_failure: false`).
    Manual,
    Success,
    Failed,
    Canceled,
    /// `workflow:rules` decided not to run it, or every job was skipped.
    Skipped,
}

impl PipelineStatus {
    pub const ALL: [PipelineStatus; 8] = [
        PipelineStatus::Created,
        PipelineStatus::Pending,
        PipelineStatus::Running,
        PipelineStatus::Manual,
        PipelineStatus::Success,
        PipelineStatus::Failed,
        PipelineStatus::Canceled,
        PipelineStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Created => "created",
            PipelineStatus::Pending => "pending",
            PipelineStatus::Running => "running",
            PipelineStatus::Manual => "manual",
            PipelineStatus::Success => "success",
            PipelineStatus::Failed => "failed",
            PipelineStatus::Canceled => "canceled",
            PipelineStatus::Skipped => "skipped",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            PipelineStatus::Success
                | PipelineStatus::Failed
                | PipelineStatus::Canceled
                | PipelineStatus::Skipped
        )
    }
}

impl fmt::Display for PipelineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for PipelineStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PipelineStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown pipeline status `{s}`"))
    }
}

/// Why a job (attempt) failed: GitLab's `failure_reason` values that `retry:when` names, plus
/// Archway's own. Unknown values read back as `UnknownFailure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    ScriptFailure,
    RunnerSystemFailure,
    StuckOrTimeoutFailure,
    JobExecutionTimeout,
    ImagePullFailure,
    ApiFailure,
    RunnerUnsupported,
    DataIntegrityFailure,
    /// A trigger job's child pipeline could not be created (it has no jobs to run).
    DownstreamPipelineCreationFailed,
    #[serde(other)]
    UnknownFailure,
}

impl FailureReason {
    pub const ALL: [FailureReason; 10] = [
        FailureReason::ScriptFailure,
        FailureReason::RunnerSystemFailure,
        FailureReason::StuckOrTimeoutFailure,
        FailureReason::JobExecutionTimeout,
        FailureReason::ImagePullFailure,
        FailureReason::ApiFailure,
        FailureReason::RunnerUnsupported,
        FailureReason::DataIntegrityFailure,
        FailureReason::DownstreamPipelineCreationFailed,
        FailureReason::UnknownFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::StuckOrTimeoutFailure => "stuck_or_timeout_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::ImagePullFailure => "image_pull_failure",
            FailureReason::ApiFailure => "api_failure",
            FailureReason::RunnerUnsupported => "runner_unsupported",
            FailureReason::DataIntegrityFailure => "data_integrity_failure",
            FailureReason::DownstreamPipelineCreationFailed => {
                "downstream_pipeline_creation_failed"
            }
            FailureReason::UnknownFailure => "unknown_failure",
        }
    }

    pub fn parse(s: &str) -> FailureReason {
        FailureReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(FailureReason::UnknownFailure)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// `when:` of a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
    Manual,
    Delayed,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
            When::Manual => "manual",
            When::Delayed => "delayed",
        }
    }

    pub fn parse(s: &str) -> Option<When> {
        [
            When::OnSuccess,
            When::OnFailure,
            When::Always,
            When::Manual,
            When::Delayed,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
    }
}

// ---------------------------------------------------------------------------------------------
// Submitting pipelines

/// The job's image (`image:`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `image:docker:user`: run the job as this user instead of the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A variable as the pipeline defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarDef {
    pub name: String,
    pub value: String,
}

/// One job of a submitted pipeline: what the scheduler needs and what the runner runs.
/// (`Default` is an empty job in stage `""` that runs on success, for tests and tools.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDefinition {
    pub name: String,
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_script: Vec<String>,
    #[serde(default)]
    pub variables: Vec<VarDef>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The platform the tags imply (`linux/arm64`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Jobs this one needs (a DAG edge each); `None`: every job of the earlier stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    pub when: When,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_in_secs: Option<u64>,
    #[serde(default)]
    pub allow_failure: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_failure_exit_codes: Vec<i64>,
    #[serde(default)]
    pub retry_max: u32,
    /// `retry:when` reasons; empty means `always`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_when: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub interruptible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// What the job keeps when it ends (`artifacts:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsDef>,
    /// Jobs whose artifacts (and dotenv variables) this one receives; `None`: every job of
    /// the earlier stages (GitLab's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    /// `cache:` entries (kept by each runner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CacheDef>,
    /// `services:`: sidecars started beside the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDef>,
    /// A trigger job (`trigger: include:`): it runs no script; when it starts, the
    /// coordinator creates this child pipeline instead of giving it to a runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Box<TriggerDefinition>>,
}

/// One `services:` entry: an image run beside the job, on its network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<VarDef>,
}

/// One `cache:` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDef {
    /// The key; `files:A,B` (after an optional `PREFIX-`) means "from these files'
    /// contents", as `cache:key:files`.
    pub key: String,
    #[serde(default)]
    pub paths: Vec<String>,
    /// pull-push (default), pull or push.
    #[serde(default = "pull_push")]
    pub policy: String,
    /// on_success (default), on_failure or always: when it is saved.
    #[serde(default = "on_success")]
    pub when: String,
    /// Keys restored from, in order, when `key` has no cache yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_keys: Vec<String>,
}

fn pull_push() -> String {
    "pull-push".into()
}

/// A job's `artifacts:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactsDef {
    /// Globs relative to the project directory (`**` crosses directories).
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Also every file git does not track.
    #[serde(default)]
    pub untracked: bool,
    /// on_success (default), on_failure or always.
    #[serde(default = "on_success")]
    pub when: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_in_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `reports:dotenv` files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dotenv: Vec<String>,
    /// `reports:junit` files (kept in the archive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub junit: Vec<String>,
}

fn on_success() -> String {
    "on_success".into()
}

/// An earlier job's artifacts a job receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub job_id: i64,
    pub job_name: String,
    pub size: u64,
}

/// What the coordinator needs to plan a dynamic child pipeline: the parent's planning
/// context and the trigger's child (see `archway_pipeline::plan_child`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicChild {
    pub context: archway_pipeline::graph::Context,
    pub child: archway_pipeline::graph::ChildPipeline,
}

/// What a trigger job starts: a child pipeline of the same project, commit and source,
/// planned by the client (see `archway_pipeline::graph::ChildPipeline`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerDefinition {
    /// `strategy: depend` (or `mirror`): the trigger job runs until the child finishes and
    /// takes its status; otherwise it succeeds once the child is created.
    #[serde(default)]
    pub depend: bool,
    /// The child's configuration, for display (`ci/child.yml`, or several joined by `, `).
    pub file: String,
    pub stages: Vec<String>,
    /// The child's jobs; empty when the child has none to run (the trigger job then fails,
    /// as in GitLab).
    pub jobs: Vec<JobDefinition>,
    /// The variables passed down (`graph::ChildPipeline::variables`; each child job's
    /// `variables` already holds them). `$CI_PIPELINE_ID`,
    /// `$CI_PIPELINE_IID`, `$CI_JOB_ID`, `$CI_JOB_NAME` and `$CI_JOB_STAGE` in their values are
    /// the trigger job's, expanded by the coordinator when it creates the child.
    #[serde(default)]
    pub variables: Vec<VarDef>,
    /// A dynamic child (`include: artifact:` + `job:`): planned by the coordinator when the
    /// trigger job starts, from the generating job's artifacts (`jobs` is empty until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<Box<DynamicChild>>,
}

/// A pipeline to run: the planned job graph plus where its source is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitPipeline {
    /// `group/name`: the registry's `CI_REGISTRY_IMAGE` repository and the job token's scope.
    pub project: String,
    /// Branch or tag name.
    #[serde(rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub tag: bool,
    /// Commit the source was taken from (empty for a dirty working tree).
    #[serde(default)]
    pub sha: String,
    #[serde(default)]
    pub commit_message: String,
    /// Digest of the uploaded source snapshot (a gzipped tar), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The pipeline file it was planned from.
    pub file: String,
    pub stages: Vec<String>,
    pub jobs: Vec<JobDefinition>,
    /// Pipeline-wide variables (already in each job's `variables`; kept for display).
    #[serde(default)]
    pub variables: Vec<VarDef>,
    /// Variables whose values are masked in logs (`[MASKED]`), by name.
    #[serde(default)]
    pub masked: Vec<String>,
    /// Secret variables (name → value) given only to the jobs, never stored in the plan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Variables of type `file`, by name (their values are in `variables` or `secrets`):
    /// each job gets the path of a file holding the value, as GitLab does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_variables: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Runners

/// A platform a runner offers, and whether it only emulates it (qemu-user).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlatformOffer {
    pub platform: String,
    #[serde(default)]
    pub emulated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRunner {
    pub registration_token: String,
    pub name: String,
    /// The user's tags (the architecture tags are added from `platforms`).
    #[serde(default)]
    pub tags: Vec<String>,
    pub platforms: Vec<PlatformOffer>,
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Take jobs without tags (GitLab's `run_untagged`).
    #[serde(default)]
    pub run_untagged: bool,
    #[serde(default)]
    pub version: String,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredRunner {
    pub id: i64,
    /// The runner's own long-lived token (shown once).
    pub token: String,
}

/// The runner's long poll: renews its leases, reports what it runs, asks for work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    /// How many more jobs it can take now (0 while draining or full).
    pub free_slots: u32,
    /// Attempts it is running (their leases are renewed; any other attempt of this runner is
    /// considered lost).
    #[serde(default)]
    pub running: Vec<i64>,
    /// What it can run now (qemu registrations change).
    #[serde(default)]
    pub platforms: Vec<PlatformOffer>,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    #[serde(default)]
    pub jobs: Vec<JobPayload>,
    /// Attempts to stop now (canceled, or no longer this runner's).
    #[serde(default)]
    pub cancel: Vec<i64>,
}

/// A variable as the job receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobVariable {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub masked: bool,
    /// A `file` variable: the runner writes `value` to a file and gives the job its path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub file: bool,
}

/// Everything a runner needs to run one attempt of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPayload {
    pub attempt_id: i64,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub job_id: i64,
    pub pipeline_id: i64,
    pub project: String,
    pub name: String,
    pub stage: String,
    /// The attempt's token (`CI_JOB_TOKEN`): authenticates its reports and registry access
    /// while the attempt runs.
    pub token: String,
    /// The platform to run on, and whether this runner emulates it.
    pub platform: String,
    #[serde(default)]
    pub emulated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageDef>,
    #[serde(default)]
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    #[serde(default)]
    pub after_script: Vec<String>,
    /// The job's variables, predefined ones included, in precedence order.
    pub variables: Vec<JobVariable>,
    pub timeout_secs: u64,
    /// Digest of the source snapshot to check out at `CI_PROJECT_DIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Bytes of log the server keeps; more is dropped with a marker.
    pub max_log_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsDef>,
    /// Earlier jobs' artifacts to unpack into the project directory before the script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<ArtifactRef>,
    /// Largest artifact archive the server accepts.
    #[serde(default)]
    pub max_artifact_bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CacheDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDef>,
}

impl JobPayload {
    /// The value of a variable, if the job has it (the last definition wins).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .rev()
            .find(|v| v.name == name)
            .map(|v| v.value.as_str())
    }
}

/// How an attempt ended, as its runner reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    Failed,
    Canceled,
    /// The runner is draining and gives the job back to be run elsewhere (not a failure).
    HandedBack,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishAttempt {
    pub outcome: AttemptOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// Total log bytes the runner produced (so the server can tell a missing tail).
    #[serde(default)]
    pub log_bytes: u64,
    /// The log's last bytes, sent with the end report instead of separately (one request
    /// for a short job); appended at `offset` like any log chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<LogTail>,
    /// Variables from the job's `artifacts:reports:dotenv` files, for the jobs after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dotenv: Vec<VarDef>,
    /// The job's `artifacts:reports:junit` results, summarised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestSummary>,
}

/// What a job's JUnit reports say: counts, and the first failing cases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSummary {
    pub total: u64,
    pub failed: u64,
    pub errors: u64,
    pub skipped: u64,
    /// At most [`TestSummary::MAX_FAILURES`] failing or erroring cases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TestFailure>,
}

impl TestSummary {
    pub const MAX_FAILURES: usize = 20;
    /// Longest failure message kept, in bytes.
    pub const MAX_MESSAGE: usize = 500;

    pub fn passed(&self) -> u64 {
        self.total
            .saturating_sub(self.failed + self.errors + self.skipped)
    }

    /// `s` cut to at most [`Self::MAX_MESSAGE`] bytes (ending in `…` when cut).
    pub fn clip(mut s: String) -> String {
        if s.len() > Self::MAX_MESSAGE {
            let mut end = Self::MAX_MESSAGE - '…'.len_utf8();
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
        s
    }

    /// Within the bounds a summary may have: at most [`Self::MAX_FAILURES`] failures, each
    /// string clipped. The runner makes summaries this way; the coordinator applies it to
    /// what any runner sends.
    pub fn bounded(mut self) -> Self {
        self.failures.truncate(Self::MAX_FAILURES);
        for f in &mut self.failures {
            for s in [&mut f.suite, &mut f.name, &mut f.message] {
                *s = Self::clip(std::mem::take(s));
            }
        }
        self
    }
}

/// One failing test case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestFailure {
    /// `classname` (or the suite's name) and the case's `name`.
    pub suite: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Log bytes carried in another report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    pub offset: u64,
    /// Base64 (standard alphabet).
    pub data: String,
}

/// Answer to a log append: how many bytes of the attempt's log the server has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    pub received: u64,
}

// ---------------------------------------------------------------------------------------------
// Views

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRef {
    pub id: i64,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    pub id: i64,
    pub number: u32,
    pub runner: RunnerRef,
    pub platform: String,
    pub emulated: bool,
    /// running, success, failed, canceled, lost, handed_back
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    pub log_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub id: i64,
    pub pipeline_id: i64,
    pub name: String,
    pub stage: String,
    pub status: JobStatus,
    pub when: When,
    pub allow_failure: bool,
    /// Failed, but allowed to (`allow_failure`).
    #[serde(default)]
    pub failure_allowed: bool,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<FailureReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_after_ms: Option<i64>,
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
    /// Why a pending job is not running, e.g. `no runner with tags [arm64]; connected: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A trigger job's newest child pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_pipeline_id: Option<i64>,
    /// The job's artifacts, when it kept some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ArtifactsView>,
    /// What its JUnit reports said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestSummary>,
}

/// A job's stored artifacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactsView {
    /// `sha256:…` of the archive (a gzipped tar).
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Variables its dotenv reports gave the jobs after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dotenv: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineView {
    pub id: i64,
    pub project: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    pub file: String,
    pub status: PipelineStatus,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    pub stages: Vec<String>,
    /// The trigger job that created this child pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_job_id: Option<i64>,
    /// Jobs (only in single-pipeline answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerView {
    pub id: i64,
    pub name: String,
    pub tags: Vec<String>,
    pub platforms: Vec<PlatformOffer>,
    pub concurrency: u32,
    pub run_untagged: bool,
    pub online: bool,
    pub draining: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
    pub running: u32,
    #[serde(default)]
    pub version: String,
}

/// `{"error": {"code": …, "message": …}}`: every non-2xx answer of the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Automatic runner tags for a platform: the architecture's name and its kernel alias
/// (`linux/arm64` → `arm64`, `aarch64`).
pub fn arch_tags(platform: &str) -> Vec<String> {
    let mut parts = platform.split('/');
    let _os = parts.next();
    let arch = parts.next().unwrap_or_default();
    let variant = parts.next();
    let mut tags = vec![arch.to_owned()];
    match arch {
        "amd64" => tags.push("x86_64".into()),
        "arm64" => tags.push("aarch64".into()),
        "arm" => {
            if let Some(v) = variant {
                tags.push(format!("arm{v}"));
            }
        }
        _ => {}
    }
    tags.retain(|t| !t.is_empty());
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in PipelineStatus::ALL {
            assert_eq!(s.as_str().parse::<PipelineStatus>().unwrap(), s);
        }
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::parse(r.as_str()), r);
        }
        assert_eq!(
            FailureReason::parse("something_new"),
            FailureReason::UnknownFailure
        );
        let r: FailureReason = serde_json::from_str("\"brand_new_reason\"").unwrap();
        assert_eq!(r, FailureReason::UnknownFailure);
    }

    #[test]
    fn arch_tags_name_the_architecture_and_its_kernel_alias() {
        assert_eq!(arch_tags("linux/amd64"), ["amd64", "x86_64"]);
        assert_eq!(arch_tags("linux/arm64"), ["arm64", "aarch64"]);
        assert_eq!(arch_tags("linux/arm/v7"), ["arm", "armv7"]);
        assert_eq!(arch_tags("linux/s390x"), ["s390x"]);
    }
}
