//! Strict parsing of the results a stage's TaskRun reports. Results are untrusted input: a Task
//! (or whoever can write a TaskRun's status) controls them, so sizes are bounded, types are exact
//! and nothing here panics.

use serde::Deserialize;

use crate::api::release::{FindingCounts, IssueCounts, QualityReport, TestCounts};

/// Largest result value read, in bytes; Tekton's own termination-message limit is 4 KiB.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;
/// Most finding IDs read from one FINDINGS result.
pub const MAX_FINDING_IDS: usize = 1000;
/// Longest finding ID accepted.
pub const MAX_ID_LEN: usize = 256;

/// Name of the result holding the test report.
pub const TEST_OUTPUT: &str = "TEST_OUTPUT";
/// Name of the result holding the findings.
pub const FINDINGS: &str = "FINDINGS";
/// Name of the result holding code coverage and lint issues.
pub const QUALITY: &str = "QUALITY";
/// Name of the result holding the pushed image's URL.
pub const IMAGE_URL: &str = "IMAGE_URL";
/// Name of the result holding the pushed image's digest.
pub const IMAGE_DIGEST: &str = "IMAGE_DIGEST";

/// Why a result could not be used; every variant blocks the gate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// The TaskRun reported no result of that name.
    #[error("result {0} is missing")]
    Missing(String),
    /// The result is larger than Sluice reads.
    #[error("result {name} is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        /// Result name.
        name: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The result is not of the documented shape.
    #[error("result {name} is malformed: {detail}")]
    Malformed {
        /// Result name.
        name: String,
        /// What is wrong, without echoing the value.
        detail: String,
    },
}

impl ResultError {
    /// Short, bounded category used as a metric label and in reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ResultError::Missing(_) => "ResultMissing",
            ResultError::TooLarge { .. } => "ResultTooLarge",
            ResultError::Malformed { .. } => "ResultMalformed",
        }
    }
}

/// The string results of one TaskRun, by name.
#[derive(Debug, Clone, Default)]
pub struct StageResults {
    values: Vec<(String, serde_json::Value)>,
}

impl StageResults {
    /// Wraps the (name, value) pairs a TaskRun reported.
    pub fn new(values: Vec<(String, serde_json::Value)>) -> Self {
        Self { values }
    }

    /// The string value of a result, bounded in size. A result reported twice is malformed.
    pub fn get(&self, name: &str) -> Result<&str, ResultError> {
        let mut found = self.values.iter().filter(|(n, _)| n == name);
        let (_, value) = found
            .next()
            .ok_or_else(|| ResultError::Missing(name.to_string()))?;
        if found.next().is_some() {
            return Err(malformed(name, "reported more than once"));
        }
        let text = value
            .as_str()
            .ok_or_else(|| malformed(name, "not a string"))?;
        if text.len() > MAX_RESULT_BYTES {
            return Err(ResultError::TooLarge {
                name: name.to_string(),
                size: text.len(),
                limit: MAX_RESULT_BYTES,
            });
        }
        Ok(text)
    }
}

fn malformed(name: &str, detail: impl Into<String>) -> ResultError {
    ResultError::Malformed {
        name: name.to_string(),
        detail: detail.into(),
    }
}

/// Overall outcome of a test run, as TEST_OUTPUT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TestResult {
    /// Every test passed.
    Success,
    /// Some tests failed.
    Failure,
    /// Tests passed with warnings.
    Warning,
    /// Tests were skipped.
    Skipped,
    /// The test run itself broke.
    Error,
}

/// A parsed TEST_OUTPUT result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestOutput {
    /// Overall outcome.
    pub result: TestResult,
    /// Passed tests.
    pub successes: u32,
    /// Failed tests.
    pub failures: u32,
    /// Tests with warnings.
    #[serde(default)]
    pub warnings: u32,
}

impl TestOutput {
    /// The counts as status shows them.
    pub fn counts(&self) -> TestCounts {
        TestCounts {
            successes: self.successes,
            failures: self.failures,
            warnings: self.warnings,
        }
    }
}

/// Severity of one finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
    /// The scanner did not know.
    Unknown,
}

/// One finding named by ID.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FindingId {
    /// Advisory or rule ID.
    pub id: String,
    /// Its severity.
    pub severity: Severity,
    /// The vulnerable package, e.g. flask.
    #[serde(default)]
    pub package: Option<String>,
    /// The version installed.
    #[serde(default)]
    pub installed: Option<String>,
    /// The first version that fixes it.
    #[serde(default)]
    pub fixed_in: Option<String>,
}

/// Longest package name or version a finding may carry.
pub const MAX_PACKAGE_LEN: usize = 214;

impl FindingId {
    /// The upgrade that fixes this finding, when the scanner named package, installed and fixed versions.
    pub fn fix(&self) -> Option<(&str, &str, &str)> {
        Some((
            self.package.as_deref()?,
            self.installed.as_deref()?,
            self.fixed_in.as_deref()?,
        ))
    }
}

/// Whether `text` may stand as a package name or version: bounded, printable, no spaces.
fn plain_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_PACKAGE_LEN
        && !text.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A parsed FINDINGS result.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Findings {
    /// Critical findings.
    #[serde(default)]
    pub critical: u32,
    /// High findings.
    #[serde(default)]
    pub high: u32,
    /// Medium findings.
    #[serde(default)]
    pub medium: u32,
    /// Low findings.
    #[serde(default)]
    pub low: u32,
    /// Findings of unknown severity.
    #[serde(default)]
    pub unknown: u32,
    /// The findings by ID, where the scanner names them; exceptions match these.
    #[serde(default)]
    pub ids: Vec<FindingId>,
}

impl Findings {
    /// The counts as status shows them.
    pub fn counts(&self) -> FindingCounts {
        FindingCounts {
            critical: self.critical,
            high: self.high,
            medium: self.medium,
            low: self.low,
            unknown: self.unknown,
        }
    }
}

/// A parsed QUALITY result: `{"coverage": 83.4, "issues": {"error": 0, "warning": 3, "info": 7}}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Quality {
    coverage: f64,
    issues: Issues,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Issues {
    error: u32,
    warning: u32,
    info: u32,
}

/// Parses QUALITY: coverage must be a percentage, every issue level a count.
pub fn quality(results: &StageResults) -> Result<QualityReport, ResultError> {
    let parsed: Quality = json_object(QUALITY, results.get(QUALITY)?)?;
    if !(0.0..=100.0).contains(&parsed.coverage) {
        return Err(malformed(
            QUALITY,
            "coverage is not a percentage from 0 to 100",
        ));
    }
    Ok(QualityReport {
        coverage: parsed.coverage,
        issues: IssueCounts {
            error: parsed.issues.error,
            warning: parsed.issues.warning,
            info: parsed.issues.info,
        },
    })
}

/// Parses a result that must be one JSON object of type `T`. serde would also accept a JSON
/// array as a struct's fields in order; the contract is an object, so anything else is malformed.
fn json_object<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, ResultError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| malformed(name, json_detail(&e)))?;
    if !value.is_object() {
        return Err(malformed(name, "not a JSON object"));
    }
    let ids_are_objects = value
        .get("ids")
        .and_then(serde_json::Value::as_array)
        .is_none_or(|ids| ids.iter().all(serde_json::Value::is_object));
    if !ids_are_objects {
        return Err(malformed(name, "every ids entry must be an object"));
    }
    serde_json::from_value(value).map_err(|e| malformed(name, json_detail(&e)))
}

/// Parses TEST_OUTPUT.
pub fn test_output(results: &StageResults) -> Result<TestOutput, ResultError> {
    json_object(TEST_OUTPUT, results.get(TEST_OUTPUT)?)
}

/// Parses FINDINGS, checking the bounds of its ID list.
pub fn findings(results: &StageResults) -> Result<Findings, ResultError> {
    let parsed: Findings = json_object(FINDINGS, results.get(FINDINGS)?)?;
    if parsed.ids.len() > MAX_FINDING_IDS {
        return Err(malformed(
            FINDINGS,
            format!("more than {MAX_FINDING_IDS} ids"),
        ));
    }
    if parsed
        .ids
        .iter()
        .any(|f| f.id.is_empty() || f.id.len() > MAX_ID_LEN || f.id.chars().any(char::is_control))
    {
        return Err(malformed(
            FINDINGS,
            format!("an id is empty, longer than {MAX_ID_LEN} bytes or has control characters"),
        ));
    }
    let bad_fix = parsed.ids.iter().any(|f| {
        [&f.package, &f.installed, &f.fixed_in]
            .into_iter()
            .flatten()
            .any(|t| !plain_token(t))
    });
    if bad_fix {
        return Err(malformed(
            FINDINGS,
            format!(
                "a package or version is empty, longer than {MAX_PACKAGE_LEN} bytes or has spaces or control characters"
            ),
        ));
    }
    Ok(parsed)
}

/// The image a build stage reports, checked against the pipeline's repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Repository, without tag or digest.
    pub repository: String,
    /// sha256:<64 hex> digest.
    pub digest: String,
}

/// Parses IMAGE_URL and IMAGE_DIGEST; the image must be in the expected repository.
pub fn built_image(results: &StageResults, expected_repo: &str) -> Result<BuiltImage, ResultError> {
    let url = results.get(IMAGE_URL)?.trim();
    let digest = results.get(IMAGE_DIGEST)?.trim();
    if !is_sha256_digest(digest) {
        return Err(malformed(
            IMAGE_DIGEST,
            "not of the form sha256:<64 lowercase hex>",
        ));
    }
    let repository = strip_tag_and_digest(url);
    if repository != expected_repo {
        return Err(malformed(
            IMAGE_URL,
            format!(
                "the image was pushed to {repository:?}, not to the pipeline's repository {expected_repo:?}"
            ),
        ));
    }
    Ok(BuiltImage {
        repository: repository.to_string(),
        digest: digest.to_string(),
    })
}

/// Whether a string is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Drops `@digest` and `:tag` from an image reference, keeping a registry port.
pub fn strip_tag_and_digest(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

fn json_detail(e: &serde_json::Error) -> String {
    // serde_json's message names the offending field or type, never the whole input.
    crate::text::bounded(&e.to_string(), 200)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn results(pairs: &[(&str, serde_json::Value)]) -> StageResults {
        StageResults::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn fix_versions_in_findings_are_bounded_plain_tokens() {
        let parse = |ids: &str| {
            findings(&results(&[(
                FINDINGS,
                json!(format!(r#"{{"high":1,"ids":[{ids}]}}"#)),
            )]))
        };
        let ok = parse(r#"{"id":"P-1","severity":"high","package":"flask","installed":"2.2.2","fixedIn":"2.2.5"}"#)
            .expect("valid");
        assert_eq!(ok.ids[0].fix(), Some(("flask", "2.2.2", "2.2.5")));
        for bad in [
            r#"{"id":"P-1","severity":"high","package":"","fixedIn":"1"}"#,
            r#"{"id":"P-1","severity":"high","package":"fl ask"}"#,
            r#"{"id":"P-1","severity":"high","fixedIn":"1\n2"}"#,
            r#"{"id":"P-1","severity":"high","fixed_in":"1"}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(ResultError::Malformed { .. })),
                "{bad}"
            );
        }
        let long = "x".repeat(MAX_PACKAGE_LEN + 1);
        assert!(
            parse(&format!(
                r#"{{"id":"P-1","severity":"high","package":"{long}"}}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn quality_is_strict_and_bounded() {
        let ok = quality(&results(&[(
            QUALITY,
            json!(r#"{"coverage": 83.4, "issues": {"error": 0, "warning": 3, "info": 7}}"#),
        )]))
        .expect("valid");
        assert!((ok.coverage - 83.4).abs() < 1e-9);
        assert_eq!(ok.issues.warning, 3);
        for bad in [
            r#"{"coverage": 101, "issues": {"error": 0, "warning": 0, "info": 0}}"#,
            r#"{"coverage": -1, "issues": {"error": 0, "warning": 0, "info": 0}}"#,
            r#"{"coverage": "90", "issues": {"error": 0, "warning": 0, "info": 0}}"#,
            r#"{"coverage": 90, "issues": {"error": -1, "warning": 0, "info": 0}}"#,
            r#"{"coverage": 90, "issues": {"error": 0, "warning": 0}}"#,
            r#"{"coverage": 90}"#,
            r#"{"coverage": 90, "issues": {"error": 0, "warning": 0, "info": 0}, "extra": 1}"#,
            r#"[90, {"error": 0, "warning": 0, "info": 0}]"#,
            "1e999",
        ] {
            let e = quality(&results(&[(QUALITY, json!(bad))])).expect_err(bad);
            assert_eq!(e.category(), "ResultMalformed", "{bad}: {e}");
        }
        assert_eq!(
            quality(&results(&[])).expect_err("missing").category(),
            "ResultMissing"
        );
    }

    #[test]
    fn parses_findings_with_ids() {
        let r = results(&[(
            FINDINGS,
            json!(
                r#"{"critical":1,"high":0,"medium":2,"low":0,"unknown":0,"ids":[{"id":"PYSEC-1","severity":"critical"}]}"#
            ),
        )]);
        let f = findings(&r).expect("valid");
        assert_eq!(f.critical, 1);
        assert_eq!(f.medium, 2);
        assert_eq!(f.ids[0].severity, Severity::Critical);
    }

    #[test]
    fn rejects_malformed_findings() {
        for bad in [
            r#"{"critical":-1}"#,
            r#"{"critical":"1"}"#,
            r#"{"critical":1,"extra":true}"#,
            r#"{"ids":[{"id":"X","severity":"catastrophic"}]}"#,
            r#"{"ids":[{"id":"","severity":"low"}]}"#,
            r#"[1,2]"#,
            "not json",
            r#"{"critical":99999999999}"#,
            r#"{"ids":[["X","low"]]}"#,
        ] {
            let err = findings(&results(&[(FINDINGS, json!(bad))])).expect_err(bad);
            assert_eq!(err.category(), "ResultMalformed", "{bad}");
        }
    }

    #[test]
    fn a_multi_byte_character_at_every_offset_of_an_error_detail_never_panics() {
        // serde_json echoes an unknown field's name in its message, which is cut at 200 bytes.
        for pad in 0..=210 {
            for ch in ["é", "€", "😀"] {
                let field = format!("{}{}{}", "x".repeat(pad), ch.repeat(80), "y");
                let bad = format!(r#"{{"critical":0,"{field}":1}}"#);
                let err = findings(&results(&[(FINDINGS, json!(bad))])).expect_err("unknown field");
                let ResultError::Malformed { detail, .. } = &err else {
                    panic!("{err:?}");
                };
                assert!(detail.len() <= 200, "{pad}: {} bytes", detail.len());
                let tests =
                    format!(r#"{{"result":"SUCCESS","successes":1,"failures":0,"{field}":1}}"#);
                let err =
                    test_output(&results(&[(TEST_OUTPUT, json!(tests))])).expect_err("unknown");
                assert_eq!(err.category(), "ResultMalformed");
            }
        }
    }

    #[test]
    fn rejects_missing_oversized_duplicate_and_non_string_results() {
        assert_eq!(
            findings(&results(&[])),
            Err(ResultError::Missing(FINDINGS.into()))
        );
        let big = format!(
            r#"{{"critical":0,"ids":[{}]}}"#,
            "1".repeat(MAX_RESULT_BYTES)
        );
        assert_eq!(
            findings(&results(&[(FINDINGS, json!(big))]))
                .expect_err("big")
                .category(),
            "ResultTooLarge"
        );
        let dup = results(&[(FINDINGS, json!("{}")), (FINDINGS, json!("{}"))]);
        assert_eq!(
            findings(&dup).expect_err("dup").category(),
            "ResultMalformed"
        );
        let obj = results(&[(FINDINGS, json!({"critical": 1}))]);
        assert_eq!(
            findings(&obj).expect_err("object").category(),
            "ResultMalformed"
        );
    }

    #[test]
    fn too_many_ids_are_rejected() {
        let ids: Vec<_> = (0..=MAX_FINDING_IDS)
            .map(|i| json!({"id": format!("I{i}"), "severity": "low"}))
            .collect();
        let text = json!({"ids": ids}).to_string();
        // The list alone would pass the byte limit only if small; either bound must reject it.
        let err = findings(&results(&[(FINDINGS, json!(text))])).expect_err("too many");
        assert!(matches!(
            err.category(),
            "ResultMalformed" | "ResultTooLarge"
        ));
    }

    #[test]
    fn parses_test_output() {
        let r = results(&[(
            TEST_OUTPUT,
            json!(r#"{"result":"FAILURE","successes":10,"failures":2,"warnings":0}"#),
        )]);
        let t = test_output(&r).expect("valid");
        assert_eq!(t.result, TestResult::Failure);
        assert_eq!(t.failures, 2);
        let bad = results(&[(
            TEST_OUTPUT,
            json!(r#"{"result":"MAYBE","successes":1,"failures":0}"#),
        )]);
        assert!(test_output(&bad).is_err());
    }

    #[test]
    fn built_image_must_be_in_the_pipeline_repository() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let ok = results(&[
            (IMAGE_URL, json!("127.0.0.1:5000/evip/predictor:3f2a9c1")),
            (IMAGE_DIGEST, json!(digest)),
        ]);
        let img = built_image(&ok, "127.0.0.1:5000/evip/predictor").expect("valid");
        assert_eq!(img.repository, "127.0.0.1:5000/evip/predictor");
        let other = results(&[
            (IMAGE_URL, json!("evil.example/predictor")),
            (IMAGE_DIGEST, json!(digest)),
        ]);
        assert!(built_image(&other, "127.0.0.1:5000/evip/predictor").is_err());
        let short = results(&[
            (IMAGE_URL, json!("127.0.0.1:5000/evip/predictor")),
            (IMAGE_DIGEST, json!("sha256:abc")),
        ]);
        assert!(built_image(&short, "127.0.0.1:5000/evip/predictor").is_err());
    }

    #[test]
    fn strips_tags_and_digests_but_not_ports() {
        assert_eq!(
            strip_tag_and_digest("localhost:5000/a/b:v1"),
            "localhost:5000/a/b"
        );
        assert_eq!(
            strip_tag_and_digest("localhost:5000/a/b@sha256:00"),
            "localhost:5000/a/b"
        );
        assert_eq!(
            strip_tag_and_digest("localhost:5000/a/b"),
            "localhost:5000/a/b"
        );
        assert_eq!(strip_tag_and_digest("a/b:v1@sha256:00"), "a/b");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,600}") {
            let r = results(&[(FINDINGS, json!(s.clone())), (TEST_OUTPUT, json!(s.clone())), (IMAGE_URL, json!(s.clone())), (IMAGE_DIGEST, json!(s))]);
            let _ = findings(&r);
            let _ = test_output(&r);
            let _ = built_image(&r, "r/x");
        }

        #[test]
        fn counts_round_trip(c in 0u32..1000, h in 0u32..1000, m in 0u32..1000, l in 0u32..1000) {
            let text = json!({"critical": c, "high": h, "medium": m, "low": l}).to_string();
            let f = findings(&results(&[(FINDINGS, json!(text))])).expect("valid");
            prop_assert_eq!((f.critical, f.high, f.medium, f.low, f.unknown), (c, h, m, l, 0));
        }
    }
}
