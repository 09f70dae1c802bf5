//! Pipeline files come from any repository: planning must never panic, hang or blow up,
//! whatever the YAML (anchors, merge keys, tags, includes, extends, matrices, rules, inputs
//! and `$[[ … ]]` interpolation, triggers and child pipelines).
#![no_main]

use std::collections::{BTreeMap, HashMap};

use archway_pipeline::{Context, MemoryFiles, Trigger};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same text is also reachable as an included file, a remote file, a template, a
    // child pipeline's file and a generating job's artifact, so include loops, inputs and
    // child pipelines get exercised.
    let files = MemoryFiles(HashMap::from([
        ("ci/a.yml".to_owned(), text.to_owned()),
        ("ci/b.yml".to_owned(), "include: ci/a.yml\n.t: {script: [x]}\n".to_owned()),
        ("ci/child.yml".to_owned(), text.to_owned()),
        ("https://example.com/ci.yml".to_owned(), text.to_owned()),
        ("template:Jobs/T.gitlab-ci.yml".to_owned(), text.to_owned()),
        ("artifact:gen:child.yml".to_owned(), text.to_owned()),
    ]));
    let mut ctx = Context::push_to("main");
    ctx.repo_files = vec![
        "ci/a.yml".into(),
        "ci/b.yml".into(),
        "ci/child.yml".into(),
        "Dockerfile".into(),
    ];
    ctx.changed_files = Some(vec!["src/main.rs".into()]);
    ctx.inputs = BTreeMap::from([
        ("name".to_owned(), serde_json::json!("x")),
        ("flag".to_owned(), serde_json::json!(true)),
        ("list".to_owned(), serde_json::json!(["a", {"if": "$CI"}])),
        ("n".to_owned(), serde_json::json!(3)),
    ]);
    for path in [".gitlab-ci.yml", ".codecatalyst/workflows/w.yaml"] {
        let (pipeline, diags) = archway_pipeline::plan(path, text, &files, &ctx);
        if let Some(p) = &pipeline {
            let _ = p.to_text();
            let _ = p.to_mermaid();
            let _ = serde_json::to_string(p);
            // The coordinator's half: plan each child as its trigger job would.
            for j in &p.jobs {
                if let Some(Trigger::Child(child)) = &j.trigger {
                    let vars = child
                        .variables
                        .iter()
                        .map(|v| (v.name.clone(), v.value.clone()))
                        .collect();
                    let (c, d) = archway_pipeline::plan_child(&p.context, child, vars, &files);
                    if let Some(c) = c {
                        let _ = c.to_text();
                    }
                    for d in d {
                        let _ = d.to_string();
                    }
                }
            }
        }
        for d in diags {
            let _ = d.to_string();
        }
    }
});
