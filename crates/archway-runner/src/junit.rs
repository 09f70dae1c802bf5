//! `artifacts:reports:junit`: JUnit XML files summarised for the job's end report — counts
//! of test cases, failures, errors and skips, and the first failing cases — the summary
//! GitLab shows on a pipeline's Tests tab.
//!
//! The format is the de-facto one (Ant's, as JUnit, pytest, go-junit-report, jest-junit and
//! Surefire write it): `<testsuites>` of `<testsuite>` (nesting allowed) of `<testcase>`, whose
//! `<failure>`, `<error>` or `<skipped>` child says how it ended. Counts come from the cases
//! themselves, not the suites' attributes (which tools get wrong). Reports are untrusted:
//! files are read up to [`MAX_FILE`] bytes, entities are not expanded beyond XML's five, and
//! a file that is not XML is a warning, not a failure of the job.

use std::path::Path;

use archway_api::{TestFailure, TestSummary};
use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Largest report read.
pub const MAX_FILE: u64 = 30 << 20;

/// Why a report could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct JunitError {
    pub file: String,
    pub reason: String,
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// Adds the cases of one report (its text) to `summary`.
pub fn add_report(file: &str, text: &str, summary: &mut TestSummary) -> Result<(), JunitError> {
    let err = |reason: String| JunitError {
        file: file.to_owned(),
        reason,
    };
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut suites: Vec<String> = Vec::new();
    // The open test case: (suite, name, outcome so far, message).
    let mut case: Option<(String, String, Option<&'static str>, String)> = None;
    let mut in_message = false;
    let mut saw_root = false;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| err(format!("not JUnit XML: {e}")))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                saw_root = true;
                match e.name().as_ref() {
                    b"testsuite" if !empty => {
                        suites.push(attr(e, b"name").unwrap_or_default());
                    }
                    b"testcase" => {
                        let suite = attr(e, b"classname")
                            .or_else(|| suites.last().cloned())
                            .unwrap_or_default();
                        let name = attr(e, b"name").unwrap_or_default();
                        if empty {
                            summary.total += 1;
                        } else {
                            case = Some((suite, name, None, String::new()));
                        }
                    }
                    kind @ (b"failure" | b"error" | b"skipped") => {
                        if let Some(c) = &mut case {
                            let k = match kind {
                                b"failure" => "failed",
                                b"error" => "error",
                                _ => "skipped",
                            };
                            // A failure outranks a skip; the first failure's message is kept.
                            if c.2.is_none() || c.2 == Some("skipped") {
                                c.2 = Some(k);
                                c.3 = attr(e, b"message").unwrap_or_default();
                            }
                            in_message = !empty && c.3.is_empty() && k != "skipped";
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(t) if in_message => {
                if let Some(c) = &mut case
                    && let Ok(s) = t.decode()
                {
                    c.3 = s.lines().next().unwrap_or_default().trim().to_owned();
                }
                in_message = false;
            }
            Event::End(ref e) => match e.name().as_ref() {
                b"testsuite" => {
                    suites.pop();
                }
                b"testcase" => {
                    if let Some((suite, name, outcome, message)) = case.take() {
                        summary.total += 1;
                        match outcome {
                            Some("failed") => summary.failed += 1,
                            Some("error") => summary.errors += 1,
                            Some(_) => summary.skipped += 1,
                            None => {}
                        }
                        if matches!(outcome, Some("failed" | "error"))
                            && summary.failures.len() < TestSummary::MAX_FAILURES
                        {
                            summary.failures.push(TestFailure {
                                suite: TestSummary::clip(suite),
                                name: TestSummary::clip(name),
                                message: TestSummary::clip(message),
                            });
                        }
                    }
                }
                b"failure" | b"error" => in_message = false,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(err("not JUnit XML: no elements".into()));
    }
    Ok(())
}

/// Summarises the report files (paths inside `root`); unreadable ones come back as warnings.
pub fn summarise(root: &Path, files: &[String]) -> (TestSummary, Vec<String>) {
    let mut summary = TestSummary::default();
    let mut warnings = Vec::new();
    for f in files {
        let path = root.join(f);
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE => {
                warnings.push(format!("{f}: larger than {} MiB; not read", MAX_FILE >> 20));
                continue;
            }
            Ok(_) => match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    warnings.push(format!("{f}: {e}"));
                    continue;
                }
            },
            Err(e) => {
                warnings.push(format!("{f}: {e}"));
                continue;
            }
        };
        if let Err(e) = add_report(f, &text, &mut summary) {
            warnings.push(e.to_string());
        }
    }
    (summary, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4">
<testcase classname="tests.test_api" name="test_ok" time="0.01"/>
<testcase classname="tests.test_api" name="test_arch" time="0.02"><failure message="AssertionError: expected aarch64">def test_arch():
&gt;   assert machine() == "aarch64"</failure></testcase>
<testcase classname="tests.test_api" name="test_later"><skipped message="not yet"/></testcase>
<testcase classname="tests.test_db" name="test_conn"><error>ConnectionRefusedError: [Errno 111]
second line</error></testcase>
</testsuite></testsuites>"#;

    #[test]
    fn counts_come_from_the_cases_and_failures_keep_their_first_line() {
        let mut s = TestSummary::default();
        add_report("report.xml", PYTEST, &mut s).unwrap();
        assert_eq!((s.total, s.failed, s.errors, s.skipped), (4, 1, 1, 1));
        assert_eq!(s.passed(), 1);
        assert_eq!(
            s.failures,
            vec![
                TestFailure {
                    suite: "tests.test_api".into(),
                    name: "test_arch".into(),
                    message: "AssertionError: expected aarch64".into(),
                },
                TestFailure {
                    suite: "tests.test_db".into(),
                    name: "test_conn".into(),
                    message: "ConnectionRefusedError: [Errno 111]".into(),
                },
            ]
        );
    }

    #[test]
    fn nested_suites_and_a_bare_testsuite_root() {
        let go = r#"<testsuite name="outer"><testsuite name="pkg/a">
<testcase name="TestA"/><testcase name="TestB"><failure>boom</failure></testcase>
</testsuite></testsuite>"#;
        let mut s = TestSummary::default();
        add_report("go.xml", go, &mut s).unwrap();
        assert_eq!((s.total, s.failed), (2, 1));
        assert_eq!(s.failures[0].suite, "pkg/a");
        assert_eq!(s.failures[0].message, "boom");
    }

    #[test]
    fn reports_that_are_not_junit_are_refused_and_bounded() {
        let mut s = TestSummary::default();
        assert!(add_report("x.xml", "not xml at all", &mut s).is_err());
        assert!(add_report("x.xml", "<a><b></a>", &mut s).is_err());
        // An entity bomb is not expanded (unknown entities are errors, not recursion).
        let bomb = r#"<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>
<testsuite><testcase name="&b;"/></testsuite>"#;
        let mut s = TestSummary::default();
        let _ = add_report("bomb.xml", bomb, &mut s);
        assert!(s.failures.is_empty());
        // Many failures: counted, the first MAX_FAILURES kept, long messages clipped.
        let mut many = String::from("<testsuite>");
        for i in 0..50 {
            many.push_str(&format!(
                "<testcase name=\"t{i}\"><failure message=\"{}\"/></testcase>",
                "x".repeat(2000)
            ));
        }
        many.push_str("</testsuite>");
        let mut s = TestSummary::default();
        add_report("many.xml", &many, &mut s).unwrap();
        assert_eq!(s.failed, 50);
        assert_eq!(s.failures.len(), TestSummary::MAX_FAILURES);
        assert!(s.failures[0].message.len() <= TestSummary::MAX_MESSAGE);
        assert!(s.failures[0].message.ends_with('…'));
    }

    #[test]
    fn summarise_reads_files_and_warns_about_bad_ones() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ok.xml"), PYTEST).unwrap();
        std::fs::write(d.path().join("bad.xml"), "nope").unwrap();
        let (s, w) = summarise(
            d.path(),
            &["ok.xml".into(), "bad.xml".into(), "missing.xml".into()],
        );
        assert_eq!(s.total, 4);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("bad.xml: not JUnit XML"), "{w:?}");
    }
}
