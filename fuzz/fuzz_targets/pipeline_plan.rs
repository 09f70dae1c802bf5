//! Pipeline files come from any repository: planning must never panic, hang or blow up,
//! whatever the YAML (anchors, merge keys, tags, includes, extends, matrices, rules).
#![no_main]

use std::collections::HashMap;

use archway_pipeline::{Context, MemoryFiles};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same text is also reachable as an included file, so include loops get exercised.
    let files = MemoryFiles(HashMap::from([
        ("ci/a.yml".to_owned(), text.to_owned()),
        ("ci/b.yml".to_owned(), "include: ci/a.yml\n.t: {script: [x]}\n".to_owned()),
    ]));
    let mut ctx = Context::push_to("main");
    ctx.repo_files = vec!["ci/a.yml".into(), "ci/b.yml".into(), "Dockerfile".into()];
    ctx.changed_files = Some(vec!["src/main.rs".into()]);
    for path in [".gitlab-ci.yml", ".codecatalyst/workflows/w.yaml"] {
        let (pipeline, diags) = archway_pipeline::plan(path, text, &files, &ctx);
        if let Some(p) = pipeline {
            let _ = p.to_text();
            let _ = p.to_mermaid();
        }
        for d in diags {
            let _ = d.to_string();
        }
    }
});
