//! Dockerfiles come from any repository: the front end (parse, then evaluation for two
//! platforms with build arguments, as `archway build --check` does) must never panic or hang,
//! whatever the text (heredocs, escapes, `${VAR:-x}` nesting, flags, stage references).
#![no_main]

use std::collections::BTreeMap;

use archway_build::builder::{BuildRequest, Builder};
use archway_oci::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (df, diags) = archway_build::dockerfile::parse("Dockerfile", text);
    for d in &diags {
        let _ = d.to_string();
    }
    let Some(dockerfile) = df else { return };
    let req = BuildRequest {
        context: std::path::PathBuf::from("/nonexistent-context"),
        dockerfile,
        platforms: vec![Platform::linux_amd64(), Platform::linux_arm64()],
        build_args: BTreeMap::from([("VERSION".to_owned(), "1.2".to_owned())]),
        target: None,
        labels: BTreeMap::new(),
        no_cache: false,
        secrets: BTreeMap::new(),
        source_date_epoch: 0,
    };
    let (_, more) = Builder::check(&req, None);
    for d in more {
        let _ = d.to_string();
    }
});
