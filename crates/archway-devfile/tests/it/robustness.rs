//! Robustness: every corpus input, mutated thousands of ways (bytes deleted, lines repeated,
//! structural tokens inserted, characters swapped, the text cut short), must load to an
//! environment or to diagnostics — never panic. Deterministic: a fixed-seed xorshift
//! generator, so a failure reproduces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use archway_devfile::{MemoryFiles, load, parse_devcontainer, parse_devfile};

use crate::corpus::cases;

/// Mutations per input file.
const ROUNDS: usize = 150;

const TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{{x}}",
    ":",
    ": ",
    "- ",
    "-",
    "\n",
    "\n  ",
    "  ",
    "\t",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ",",
    "/*",
    "*/",
    "//",
    "#",
    "&a ",
    "*a",
    "<<: *a\n",
    "!tag ",
    "${",
    "${localEnv:",
    "${containerEnv:X}",
    "0",
    "-1",
    "65536",
    "99999999999999999999",
    "1e400",
    "true",
    "null",
    "~",
    "---\n",
    "...\n",
    "\\u",
    "\\",
    "é",
    "\u{0}",
    "parent:\n  uri: devfile.yaml\n",
    "name: a\n",
    "id: a\n",
    "container:\n",
    "volume: {}\n",
    "commands: [a, a]\n",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(3) {
        let len = chars.len();
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below(20.min(len - at));
                chars.drain(at..at + n);
            }
            1 => {
                let at = rng.below(len + 1);
                let tok = TOKENS[rng.below(TOKENS.len())];
                chars.splice(at..at, tok.chars());
            }
            2 if len > 1 => {
                let at = rng.below(len - 1);
                chars.swap(at, at + 1);
            }
            3 => {
                let s: String = chars.iter().collect();
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    let mut out: Vec<&str> = lines.clone();
                    out.insert(i, lines[i]);
                    chars = out.join("\n").chars().collect();
                }
            }
            4 => chars.truncate(rng.below(len + 1)),
            _ if len > 0 => {
                let at = rng.below(len);
                chars[at] = ['a', '0', ' ', '\n', ':', '-', '"', '{', '}', '$'][rng.below(10)];
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn files_of(case: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![case.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                let rel = p.strip_prefix(case).unwrap().to_owned();
                if rel != Path::new("expected.txt") {
                    out.insert(rel, text);
                }
            }
        }
    }
    out
}

#[test]
fn mutated_corpus_inputs_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut loads = 0usize;
    for case in cases() {
        let files = files_of(&case);
        let explicit = files
            .get(Path::new("load-file.txt"))
            .map(|s| PathBuf::from(s.trim()));
        for (path, text) in &files {
            let name = path.to_string_lossy();
            let is_input =
                name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
            if !is_input {
                continue;
            }
            for _ in 0..ROUNDS {
                let mutated = mutate(text, &mut rng);
                let mut fs = files.clone();
                fs.insert(path.clone(), mutated.clone());
                let mem = MemoryFiles(fs);
                let _ = load(Path::new(""), explicit.as_deref(), &mem);
                let _ = parse_devfile(&name, &mutated, &mem);
                let _ = parse_devcontainer(&name, &mutated);
                loads += 1;
            }
        }
    }
    assert!(loads > 1000, "only {loads} mutated inputs");
}

#[test]
fn hostile_inputs_are_refused_not_fatal() {
    let deep_yaml = format!(
        "schemaVersion: 2.2.0\nmetadata: {}1{}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let deep_json = format!("{{\"image\": {}1{}}}", "[".repeat(5000), "]".repeat(5000));
    let mut laughs = String::from("schemaVersion: 2.2.0\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let fs = MemoryFiles::default();
    for text in [&deep_yaml, &laughs] {
        let e = parse_devfile("devfile.yaml", text, &fs).unwrap_err();
        assert!(!e.diagnostics().is_empty(), "{e}");
    }
    let e = parse_devcontainer("devcontainer.json", &deep_json).unwrap_err();
    assert!(!e.diagnostics().is_empty(), "{e}");
    // A parent that names itself, and one that names its child.
    let fs = MemoryFiles::default()
        .with("a.yaml", "schemaVersion: 2.2.0\nparent: {uri: b.yaml}\n")
        .with("b.yaml", "schemaVersion: 2.2.0\nparent: {uri: a.yaml}\n");
    let e = parse_devfile(
        "a.yaml",
        "schemaVersion: 2.2.0\nparent: {uri: b.yaml}\n",
        &fs,
    )
    .unwrap_err();
    assert!(
        e.diagnostics()[0].message.contains("cycle"),
        "{:?}",
        e.diagnostics()
    );
    let e = parse_devfile(
        "c.yaml",
        "schemaVersion: 2.2.0\nparent: {uri: c.yaml}\n",
        &fs,
    )
    .unwrap_err();
    assert!(
        e.diagnostics()[0].message.contains("cycle"),
        "{:?}",
        e.diagnostics()
    );
}
