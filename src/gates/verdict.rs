//! Judging one finished stage: its TaskRun outcome and results in, a verdict with a reason out.

use jiff::civil::Date;

use super::results::{self, BuiltImage, Findings, ResultError, StageResults, TestResult};
use crate::api::{
    Stage,
    pipeline::{
        Exception, FindingsGate, IssueLimits, MaxSeverity, Produces, QualityGate, SeverityLimits,
        TestsGate,
    },
    release::{FindingCounts, FixAdvice, QualityReport, TestCounts, Verdict},
};

/// How a stage's TaskRun ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every step exited zero.
    Succeeded,
    /// A step failed or the Task could not run; Tekton's reason and message.
    Failed {
        /// Tekton's reason, e.g. Failed or TaskRunResolutionFailed.
        reason: String,
        /// Tekton's message.
        message: String,
    },
    /// The TaskRun exceeded its timeout.
    TimedOut,
    /// The TaskRun was cancelled.
    Cancelled,
}

/// The decision on one stage, with everything status records about it.
#[derive(Debug, Clone, PartialEq)]
pub struct GateVerdict {
    /// Passed or Blocked.
    pub verdict: Verdict,
    /// Bounded category: Passed, StepFailed, TimedOut, Cancelled, ResultMissing, ResultMalformed,
    /// ResultTooLarge, TestsFailed, FindingsOverLimit.
    pub category: &'static str,
    /// Human-readable reason naming the stage and the counts.
    pub reason: String,
    /// Findings that counted, after exceptions.
    pub findings: Option<FindingCounts>,
    /// Test counts.
    pub tests: Option<TestCounts>,
    /// Coverage and lint issues.
    pub quality: Option<QualityReport>,
    /// Exception IDs subtracted.
    pub exceptions_applied: Vec<String>,
    /// Upgrades that fix the findings that counted.
    pub fixes: Vec<FixAdvice>,
    /// The image, for the stage that produces it.
    pub image: Option<BuiltImage>,
}

impl GateVerdict {
    /// This verdict, with the counts read so far, turned into a block for `category`.
    fn block(mut self, category: &'static str, reason: String) -> Self {
        self.verdict = Verdict::Blocked;
        self.category = category;
        self.reason = reason;
        self
    }

    fn blocked(category: &'static str, reason: String) -> Self {
        Self {
            verdict: Verdict::Blocked,
            category,
            reason,
            findings: None,
            tests: None,
            quality: None,
            exceptions_applied: Vec::new(),
            fixes: Vec::new(),
            image: None,
        }
    }
}

/// Everything a gate needs besides the stage itself.
#[derive(Debug, Clone, Copy)]
pub struct GateContext<'a> {
    /// The pipeline's accepted risks.
    pub exceptions: &'a [Exception],
    /// Today (UTC): exceptions expire after their date.
    pub today: Date,
    /// Repository the build stage must push to.
    pub repository: &'a str,
}

/// Judges a finished stage.
pub fn judge(
    stage: &Stage,
    outcome: &RunOutcome,
    results: &StageResults,
    ctx: GateContext<'_>,
) -> GateVerdict {
    let name = &stage.name;
    match outcome {
        RunOutcome::Succeeded => {}
        RunOutcome::Failed { reason, message } => {
            let message = crate::text::bounded(message, 300);
            return GateVerdict::blocked(
                "StepFailed",
                format!("stage {name}: TaskRun failed ({reason}): {message}"),
            );
        }
        RunOutcome::TimedOut => {
            return GateVerdict::blocked("TimedOut", format!("stage {name}: TaskRun timed out"));
        }
        RunOutcome::Cancelled => {
            return GateVerdict::blocked(
                "Cancelled",
                format!("stage {name}: TaskRun was cancelled"),
            );
        }
    }
    match judge_results(stage, results, ctx) {
        Ok(v) => v,
        Err(e) => GateVerdict::blocked(e.category(), format!("stage {name}: {e}")),
    }
}

fn judge_results(
    stage: &Stage,
    results: &StageResults,
    ctx: GateContext<'_>,
) -> Result<GateVerdict, ResultError> {
    let name = &stage.name;
    let mut verdict = GateVerdict {
        verdict: Verdict::Passed,
        category: "Passed",
        reason: String::new(),
        findings: None,
        tests: None,
        quality: None,
        exceptions_applied: Vec::new(),
        fixes: Vec::new(),
        image: None,
    };
    let mut passed_parts = Vec::new();
    if stage.produces == Some(Produces::Image) {
        let image = results::built_image(results, ctx.repository)?;
        passed_parts.push(format!("built {}@{}", image.repository, image.digest));
        verdict.image = Some(image);
    }
    let gate = stage.gate.clone().unwrap_or_default();
    if let Some(tests_gate) = &gate.tests {
        let output = results::test_output(results)?;
        verdict.tests = Some(output.counts());
        if let Some(why) = tests_violation(tests_gate, &output) {
            return Ok(verdict.block("TestsFailed", format!("stage {name}: {why}")));
        }
        passed_parts.push(format!(
            "{} tests passed, {} failed",
            output.successes, output.failures
        ));
    }
    if let Some(findings_gate) = &gate.findings {
        let found = results::findings(results)?;
        let (counts, applied) = apply_exceptions(&found, ctx.exceptions, ctx.today);
        verdict.findings = Some(counts.clone());
        verdict.exceptions_applied = applied;
        verdict.fixes = fixes(found.ids.iter().filter(|f| {
            !verdict
                .exceptions_applied
                .iter()
                .any(|e| e.eq_ignore_ascii_case(&f.id))
        }));
        if let Some(why) = findings_violation(findings_gate, &counts) {
            let blocking = blocking(findings_gate, &counts, &found, &verdict.exceptions_applied);
            let ids = named_ids(&blocking);
            let advice = advice(&fixes(blocking.into_iter()));
            return Ok(verdict.block(
                "FindingsOverLimit",
                format!("stage {name}: {why}{ids}{advice}"),
            ));
        }
        passed_parts.push(format!("findings {} within the gate", describe(&counts)));
    }
    if let Some(quality_gate) = &gate.quality {
        let report = results::quality(results)?;
        verdict.quality = Some(report.clone());
        if let Some(why) = quality_violation(quality_gate, &report) {
            return Ok(verdict.block("QualityBelowGate", format!("stage {name}: {why}")));
        }
        passed_parts.push(format!(
            "coverage {:.1}%, issues {} within the gate",
            report.coverage,
            describe_issues(&report)
        ));
    }
    verdict.reason = if passed_parts.is_empty() {
        format!("stage {name}: TaskRun succeeded")
    } else {
        format!("stage {name}: {}", passed_parts.join("; "))
    };
    Ok(verdict)
}

fn tests_violation(gate: &TestsGate, output: &results::TestOutput) -> Option<String> {
    if output.result == TestResult::Error {
        return Some("the test run reported ERROR".to_string());
    }
    let ran = u64::from(output.successes) + u64::from(output.failures) + u64::from(output.warnings);
    if ran < u64::from(gate.min_tests) {
        return Some(format!(
            "{ran} tests ran, fewer than the {} required (minTests); a run that collected no test proves nothing",
            gate.min_tests
        ));
    }
    (output.failures > gate.max_failures).then(|| {
        format!(
            "{} tests failed, more than the {} allowed",
            output.failures, gate.max_failures
        )
    })
}

fn quality_violation(gate: &QualityGate, report: &QualityReport) -> Option<String> {
    let mut why = Vec::new();
    if let Some(min) = gate.min_coverage
        && report.coverage < min
    {
        why.push(format!(
            "coverage {:.1}% is below the {min}% required (minCoverage)",
            report.coverage
        ));
    }
    let limits = gate.max_issues.clone().unwrap_or_default();
    let IssueLimits {
        error,
        warning,
        info,
    } = limits;
    let issues = &report.issues;
    for (level, n, limit) in [
        ("error", issues.error, error),
        ("warning", issues.warning, warning),
        ("info", issues.info, info),
    ] {
        if let Some(limit) = limit
            && n > limit
        {
            why.push(format!("{n} {level} issues, more than the {limit} allowed"));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn describe_issues(report: &QualityReport) -> String {
    let i = &report.issues;
    format!("{} error, {} warning, {} info", i.error, i.warning, i.info)
}

/// Subtracts findings whose ID has an unexpired exception; returns the counts and the IDs applied.
pub fn apply_exceptions(
    found: &Findings,
    exceptions: &[Exception],
    today: Date,
) -> (FindingCounts, Vec<String>) {
    let mut counts = found.counts();
    let mut applied: Vec<String> = Vec::new();
    for finding in &found.ids {
        let excepted = exceptions
            .iter()
            .any(|e| e.id.eq_ignore_ascii_case(&finding.id) && is_unexpired(e, today));
        if !excepted || applied.iter().any(|a| a.eq_ignore_ascii_case(&finding.id)) {
            continue;
        }
        let slot = match finding.severity {
            results::Severity::Critical => &mut counts.critical,
            results::Severity::High => &mut counts.high,
            results::Severity::Medium => &mut counts.medium,
            results::Severity::Low => &mut counts.low,
            results::Severity::Unknown => &mut counts.unknown,
        };
        *slot = slot.saturating_sub(1);
        applied.push(finding.id.clone());
    }
    (counts, applied)
}

/// An exception applies through the end of its expiry day; an unreadable date never applies.
pub fn is_unexpired(exception: &Exception, today: Date) -> bool {
    exception
        .expires
        .parse::<Date>()
        .is_ok_and(|expires| today <= expires)
}

fn findings_violation(gate: &FindingsGate, counts: &FindingCounts) -> Option<String> {
    let mut problems = Vec::new();
    if let Some(max) = gate.max_severity {
        let above = above_severity(max, counts);
        if above.total() > 0 {
            problems.push(format!(
                "{} above maxSeverity {}",
                describe(&above),
                severity_name(max)
            ));
        }
    }
    if let Some(limits) = &gate.max {
        problems.extend(over_limits(limits, counts));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Most finding IDs a blocked reason names.
const REASON_IDS: usize = 8;

/// Most upgrades a blocked reason names.
const REASON_FIXES: usize = 5;

/// One upgrade per package that fixes all of `findings` that name one: the highest `fixedIn`
/// among them (a version every listed fix is at or below), packages in name order.
pub fn fixes<'a>(findings: impl Iterator<Item = &'a results::FindingId>) -> Vec<FixAdvice> {
    let mut by_package: std::collections::BTreeMap<String, FixAdvice> = Default::default();
    for f in findings {
        let Some((package, installed, fixed_in)) = f.fix() else {
            continue;
        };
        let key = package.to_ascii_lowercase().replace('_', "-");
        let entry = by_package.entry(key).or_insert_with(|| FixAdvice {
            package: package.to_string(),
            installed: installed.to_string(),
            fixed_in: fixed_in.to_string(),
            ids: Vec::new(),
        });
        if crate::text::version_cmp(fixed_in, &entry.fixed_in).is_gt() {
            entry.fixed_in = fixed_in.to_string();
        }
        if !entry.ids.contains(&f.id) {
            entry.ids.push(f.id.clone());
        }
    }
    by_package.into_values().collect()
}

/// The upgrades as a reason suffix (`; fix: flask 2.2.2 → 2.2.5 fixes PYSEC-…`), empty when none.
fn advice(fixes: &[FixAdvice]) -> String {
    if fixes.is_empty() {
        return String::new();
    }
    let named: Vec<String> = fixes
        .iter()
        .take(REASON_FIXES)
        .map(|f| crate::text::bounded(&f.to_string(), 200))
        .collect();
    let more = fixes.len().saturating_sub(REASON_FIXES);
    let more = if more > 0 {
        format!("; and {more} more upgrades")
    } else {
        String::new()
    };
    format!("; fix: {}{more}", named.join("; "))
}

/// The IDs of `ids` as a reason suffix (` (PYSEC-2023-221 high, … and 9 more)`); empty when none.
fn named_ids(ids: &[&results::FindingId]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let named: Vec<String> = ids
        .iter()
        .take(REASON_IDS)
        .map(|f| {
            format!(
                "{} {}",
                crate::text::bounded(&f.id, 64),
                severity_label(f.severity)
            )
        })
        .collect();
    let more = ids.len().saturating_sub(REASON_IDS);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(" ({}{more})", named.join(", "))
}

/// The findings that broke the gate (not excepted, above its maxSeverity or in a severity over
/// its limit), most severe first.
fn blocking<'a>(
    gate: &FindingsGate,
    counts: &FindingCounts,
    found: &'a Findings,
    excepted: &[String],
) -> Vec<&'a results::FindingId> {
    let over_limit = |severity: results::Severity| {
        let Some(limits) = &gate.max else {
            return false;
        };
        let (n, limit) = match severity {
            results::Severity::Critical => (counts.critical, limits.critical),
            results::Severity::High => (counts.high, limits.high),
            results::Severity::Medium => (counts.medium, limits.medium),
            results::Severity::Low => (counts.low, limits.low),
            results::Severity::Unknown => (counts.unknown, limits.unknown),
        };
        limit.is_some_and(|limit| n > limit)
    };
    let mut ids: Vec<&results::FindingId> = found
        .ids
        .iter()
        .filter(|f| !excepted.iter().any(|e| e.eq_ignore_ascii_case(&f.id)))
        .filter(|f| {
            gate.max_severity
                .is_some_and(|max| max < gate_level(f.severity))
                || over_limit(f.severity)
        })
        .collect();
    ids.sort_by_key(|f| std::cmp::Reverse(gate_level(f.severity)));
    ids
}

/// Where a finding's severity sits on the gate's scale; unknown counts as high.
fn gate_level(severity: results::Severity) -> MaxSeverity {
    match severity {
        results::Severity::Critical => MaxSeverity::Critical,
        results::Severity::High | results::Severity::Unknown => MaxSeverity::High,
        results::Severity::Medium => MaxSeverity::Medium,
        results::Severity::Low => MaxSeverity::Low,
    }
}

fn severity_label(severity: results::Severity) -> &'static str {
    match severity {
        results::Severity::Critical => "critical",
        results::Severity::High => "high",
        results::Severity::Medium => "medium",
        results::Severity::Low => "low",
        results::Severity::Unknown => "unknown",
    }
}

fn above_severity(max: MaxSeverity, c: &FindingCounts) -> FindingCounts {
    // Unknown severities count as high: a scanner that cannot rate a finding must not hide it.
    let keep = |level: MaxSeverity, n: u32| if max < level { n } else { 0 };
    FindingCounts {
        critical: keep(MaxSeverity::Critical, c.critical),
        high: keep(MaxSeverity::High, c.high),
        medium: keep(MaxSeverity::Medium, c.medium),
        low: keep(MaxSeverity::Low, c.low),
        unknown: keep(MaxSeverity::High, c.unknown),
    }
}

fn over_limits(limits: &SeverityLimits, c: &FindingCounts) -> Vec<String> {
    [
        ("critical", limits.critical, c.critical),
        ("high", limits.high, c.high),
        ("medium", limits.medium, c.medium),
        ("low", limits.low, c.low),
        ("unknown", limits.unknown, c.unknown),
    ]
    .into_iter()
    .filter_map(|(name, limit, n)| {
        let limit = limit?;
        (n > limit).then(|| format!("{n} {name} findings, more than the {limit} allowed"))
    })
    .collect()
}

trait Total {
    fn total(&self) -> u64;
}

impl Total for FindingCounts {
    fn total(&self) -> u64 {
        [
            self.critical,
            self.high,
            self.medium,
            self.low,
            self.unknown,
        ]
        .iter()
        .map(|&n| u64::from(n))
        .sum()
    }
}

/// "1 critical, 2 high" — the non-zero counts, or "none".
pub fn describe(c: &FindingCounts) -> String {
    let parts: Vec<String> = [
        ("critical", c.critical),
        ("high", c.high),
        ("medium", c.medium),
        ("low", c.low),
        ("unknown", c.unknown),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{n} {name}"))
    .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

fn severity_name(s: MaxSeverity) -> &'static str {
    match s {
        MaxSeverity::None => "none",
        MaxSeverity::Low => "low",
        MaxSeverity::Medium => "medium",
        MaxSeverity::High => "high",
        MaxSeverity::Critical => "critical",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::api::pipeline::{Gate, TaskRef};

    const REPO: &str = "127.0.0.1:5000/evip/predictor";

    fn stage(gate: Option<Gate>) -> Stage {
        Stage {
            name: "audit".into(),
            task_ref: TaskRef {
                name: Some("pip-audit".into()),
                kind: None,
                resolver: None,
                params: vec![],
            },
            params: vec![],
            workspaces: vec![],
            run_after: vec![],
            gate,
            when: None,
            produces: None,
            timeout: None,
            pod_template: None,
        }
    }

    fn findings_gate(
        max_severity: Option<MaxSeverity>,
        max: Option<SeverityLimits>,
    ) -> Option<Gate> {
        Some(Gate {
            tests: None,
            findings: Some(FindingsGate { max_severity, max }),
            quality: None,
        })
    }

    fn findings_result(json_text: &str) -> StageResults {
        StageResults::new(vec![(results::FINDINGS.into(), json!(json_text))])
    }

    fn today() -> Date {
        jiff::civil::date(2026, 11, 23)
    }

    fn ctx(exceptions: &[Exception]) -> GateContext<'_> {
        GateContext {
            exceptions,
            today: today(),
            repository: REPO,
        }
    }

    #[test]
    fn critical_finding_blocks_a_medium_gate_and_names_the_stage() {
        let v = judge(
            &stage(findings_gate(Some(MaxSeverity::Medium), None)),
            &RunOutcome::Succeeded,
            &findings_result(r#"{"critical":1,"high":0,"medium":3,"low":1}"#),
            ctx(&[]),
        );
        assert_eq!(v.verdict, Verdict::Blocked);
        assert_eq!(v.category, "FindingsOverLimit");
        assert_eq!(v.reason, "stage audit: 1 critical above maxSeverity medium");
    }

    #[test]
    fn per_severity_limits() {
        let limits = SeverityLimits {
            high: Some(0),
            medium: Some(5),
            ..Default::default()
        };
        let gate = findings_gate(None, Some(limits));
        let pass = judge(
            &stage(gate.clone()),
            &RunOutcome::Succeeded,
            &findings_result(r#"{"medium":5,"low":40}"#),
            ctx(&[]),
        );
        assert_eq!(pass.verdict, Verdict::Passed);
        let block = judge(
            &stage(gate),
            &RunOutcome::Succeeded,
            &findings_result(r#"{"medium":6}"#),
            ctx(&[]),
        );
        assert_eq!(
            block.reason,
            "stage audit: 6 medium findings, more than the 5 allowed"
        );
    }

    #[test]
    fn unexpired_exceptions_are_subtracted_and_expired_ones_are_not() {
        let exception = |expires: &str| Exception {
            id: "PYSEC-2024-48".into(),
            reason: "unreachable".into(),
            expires: expires.into(),
        };
        let result =
            findings_result(r#"{"high":1,"ids":[{"id":"PYSEC-2024-48","severity":"high"}]}"#);
        let gate = stage(findings_gate(Some(MaxSeverity::Medium), None));
        let live = [exception("2026-11-23")];
        let v = judge(&gate, &RunOutcome::Succeeded, &result, ctx(&live));
        assert_eq!(v.verdict, Verdict::Passed);
        assert_eq!(v.exceptions_applied, vec!["PYSEC-2024-48".to_string()]);
        assert_eq!(v.findings.expect("counts").high, 0);
        let expired = [exception("2026-11-22")];
        assert_eq!(
            judge(&gate, &RunOutcome::Succeeded, &result, ctx(&expired)).verdict,
            Verdict::Blocked
        );
        let invalid = [exception("2026-02-31")];
        assert_eq!(
            judge(&gate, &RunOutcome::Succeeded, &result, ctx(&invalid)).verdict,
            Verdict::Blocked
        );
    }

    #[test]
    fn a_repeated_id_is_excepted_once() {
        let found: Findings = serde_json::from_str(
            r#"{"high":2,"ids":[{"id":"X","severity":"high"},{"id":"X","severity":"high"}]}"#,
        )
        .expect("valid");
        let e = [Exception {
            id: "x".into(),
            reason: "r".into(),
            expires: "2030-01-01".into(),
        }];
        let (counts, applied) = apply_exceptions(&found, &e, today());
        assert_eq!(counts.high, 1);
        assert_eq!(applied, vec!["X".to_string()]);
    }

    #[test]
    fn a_blocked_reason_and_the_verdict_name_the_upgrade_that_fixes_the_findings() {
        let found = findings_result(
            r#"{"critical":1,"high":2,"low":1,"ids":[
              {"id":"PYSEC-2023-62","severity":"critical","package":"flask","installed":"2.2.2","fixedIn":"2.2.5"},
              {"id":"PYSEC-2023-63","severity":"high","package":"Flask","installed":"2.2.2","fixedIn":"2.2.10"},
              {"id":"GHSA-xx","severity":"high","package":"werkzeug","installed":"2.2.2"},
              {"id":"PYSEC-low","severity":"low","package":"idna","installed":"3.3","fixedIn":"3.7"}]}"#,
        );
        let v = judge(
            &stage(findings_gate(Some(MaxSeverity::Medium), None)),
            &RunOutcome::Succeeded,
            &found,
            ctx(&[]),
        );
        assert_eq!(v.verdict, Verdict::Blocked);
        // One upgrade per package, the highest fix (2.2.10 > 2.2.5 as versions, not as text).
        assert!(
            v.reason
                .ends_with("; fix: flask 2.2.2 → 2.2.10 fixes PYSEC-2023-62, PYSEC-2023-63"),
            "{}",
            v.reason
        );
        // The low finding did not block, so the reason does not name its fix; the status does.
        assert!(!v.reason.contains("idna"), "{}", v.reason);
        let packages: Vec<&str> = v.fixes.iter().map(|f| f.package.as_str()).collect();
        assert_eq!(packages, ["flask", "idna"]);
        // Without a fixed version there is nothing to advise.
        assert!(!v.fixes.iter().any(|f| f.package == "werkzeug"));
    }

    #[test]
    fn versions_compare_by_number_where_they_are_numbers() {
        use crate::text::version_cmp;
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("2.2.10", "2.2.5"), Greater);
        assert_eq!(version_cmp("2.2", "2.2.0"), Less);
        assert_eq!(version_cmp("1.0", "1.0"), Equal);
        assert_eq!(version_cmp("1.0rc1", "1.0rc2"), Less);
        assert_eq!(version_cmp("10", "9"), Greater);
    }

    #[test]
    fn a_blocked_reason_names_the_findings_that_broke_the_gate_most_severe_first() {
        let mut ids: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"id":"PYSEC-2018-{i}","severity":"unknown"}}"#))
            .collect();
        ids.push(r#"{"id":"GHSA-crit","severity":"critical"}"#.to_string());
        ids.push(r#"{"id":"PYSEC-low","severity":"low"}"#.to_string());
        ids.push(r#"{"id":"PYSEC-2024-48","severity":"high"}"#.to_string());
        let found = findings_result(&format!(
            r#"{{"critical":1,"high":1,"low":1,"unknown":10,"ids":[{}]}}"#,
            ids.join(",")
        ));
        let exceptions = [Exception {
            id: "PYSEC-2024-48".into(),
            reason: "not reachable".into(),
            expires: "2099-01-01".into(),
        }];
        let v = judge(
            &stage(findings_gate(Some(MaxSeverity::Medium), None)),
            &RunOutcome::Succeeded,
            &found,
            ctx(&exceptions),
        );
        assert_eq!(v.verdict, Verdict::Blocked);
        assert!(
            v.reason
                .contains("(GHSA-crit critical, PYSEC-2018-0 unknown,"),
            "{}",
            v.reason
        );
        assert!(
            v.reason.ends_with("PYSEC-2018-6 unknown and 3 more)"),
            "{}",
            v.reason
        );
        assert!(
            !v.reason.contains("PYSEC-low") && !v.reason.contains("PYSEC-2024-48"),
            "{}",
            v.reason
        );
        // Per-severity limits name the severities over their limit only.
        let limits = SeverityLimits {
            low: Some(0),
            ..SeverityLimits::default()
        };
        let v = judge(
            &stage(findings_gate(None, Some(limits))),
            &RunOutcome::Succeeded,
            &found,
            ctx(&exceptions),
        );
        assert!(v.reason.ends_with("(PYSEC-low low)"), "{}", v.reason);
    }

    #[test]
    fn unknown_severity_counts_as_high() {
        let v = judge(
            &stage(findings_gate(Some(MaxSeverity::Medium), None)),
            &RunOutcome::Succeeded,
            &findings_result(r#"{"unknown":1}"#),
            ctx(&[]),
        );
        assert_eq!(v.verdict, Verdict::Blocked);
        let v = judge(
            &stage(findings_gate(Some(MaxSeverity::High), None)),
            &RunOutcome::Succeeded,
            &findings_result(r#"{"unknown":1}"#),
            ctx(&[]),
        );
        assert_eq!(v.verdict, Verdict::Passed);
    }

    #[test]
    fn failed_timed_out_missing_and_malformed_each_block_with_a_distinct_category() {
        let s = stage(findings_gate(Some(MaxSeverity::Medium), None));
        let ok = findings_result("{}");
        let failed = RunOutcome::Failed {
            reason: "Failed".into(),
            message: "step exited 2".into(),
        };
        let cases = [
            (judge(&s, &failed, &ok, ctx(&[])), "StepFailed"),
            (judge(&s, &RunOutcome::TimedOut, &ok, ctx(&[])), "TimedOut"),
            (
                judge(
                    &s,
                    &RunOutcome::Succeeded,
                    &StageResults::default(),
                    ctx(&[]),
                ),
                "ResultMissing",
            ),
            (
                judge(
                    &s,
                    &RunOutcome::Succeeded,
                    &findings_result("{oops"),
                    ctx(&[]),
                ),
                "ResultMalformed",
            ),
        ];
        for (v, category) in cases {
            assert_eq!(v.verdict, Verdict::Blocked);
            assert_eq!(v.category, category);
            assert!(v.reason.starts_with("stage audit: "), "{}", v.reason);
        }
    }

    #[test]
    fn quality_gate_blocks_on_coverage_or_issues_and_names_both() {
        let gate = |min_coverage: Option<f64>, error: Option<u32>| {
            stage(Some(Gate {
                quality: Some(QualityGate {
                    min_coverage,
                    max_issues: error.map(|e| IssueLimits {
                        error: Some(e),
                        ..IssueLimits::default()
                    }),
                }),
                ..Gate::default()
            }))
        };
        let result = |coverage: f64, error: u32| {
            StageResults::new(vec![(
                "QUALITY".to_string(),
                serde_json::Value::String(format!(
                    r#"{{"coverage": {coverage}, "issues": {{"error": {error}, "warning": 9, "info": 9}}}}"#
                )),
            )])
        };
        let ok = judge(
            &gate(Some(80.0), Some(0)),
            &RunOutcome::Succeeded,
            &result(85.5, 0),
            ctx(&[]),
        );
        assert_eq!(ok.verdict, Verdict::Passed, "{}", ok.reason);
        assert!(ok.reason.contains("coverage 85.5%"), "{}", ok.reason);
        assert_eq!(ok.quality.expect("report").issues.warning, 9);
        let low = judge(
            &gate(Some(80.0), None),
            &RunOutcome::Succeeded,
            &result(79.9, 3),
            ctx(&[]),
        );
        assert_eq!(
            (low.verdict, low.category),
            (Verdict::Blocked, "QualityBelowGate")
        );
        assert!(
            low.reason
                .contains("coverage 79.9% is below the 80% required"),
            "{}",
            low.reason
        );
        let both = judge(
            &gate(Some(80.0), Some(1)),
            &RunOutcome::Succeeded,
            &result(10.0, 2),
            ctx(&[]),
        );
        assert!(
            both.reason.contains("below")
                && both
                    .reason
                    .contains("2 error issues, more than the 1 allowed"),
            "{}",
            both.reason
        );
        let missing = judge(
            &gate(Some(80.0), None),
            &RunOutcome::Succeeded,
            &StageResults::default(),
            ctx(&[]),
        );
        assert_eq!(
            (missing.verdict, missing.category),
            (Verdict::Blocked, "ResultMissing")
        );
    }

    #[test]
    fn tests_gate() {
        let s = stage(Some(Gate {
            tests: Some(TestsGate {
                max_failures: 1,
                min_tests: 1,
            }),
            findings: None,
            quality: None,
        }));
        let out = |t: &str| StageResults::new(vec![(results::TEST_OUTPUT.into(), json!(t))]);
        let pass = judge(
            &s,
            &RunOutcome::Succeeded,
            &out(r#"{"result":"FAILURE","successes":9,"failures":1}"#),
            ctx(&[]),
        );
        assert_eq!(pass.verdict, Verdict::Passed);
        let block = judge(
            &s,
            &RunOutcome::Succeeded,
            &out(r#"{"result":"FAILURE","successes":8,"failures":2}"#),
            ctx(&[]),
        );
        assert_eq!(
            block.reason,
            "stage audit: 2 tests failed, more than the 1 allowed"
        );
        let error = judge(
            &s,
            &RunOutcome::Succeeded,
            &out(r#"{"result":"ERROR","successes":0,"failures":0}"#),
            ctx(&[]),
        );
        assert_eq!(error.category, "TestsFailed");
    }

    #[test]
    fn a_run_that_collected_no_test_blocks_unless_min_tests_is_zero() {
        let out = |t: &str| StageResults::new(vec![(results::TEST_OUTPUT.into(), json!(t))]);
        let empty = out(r#"{"result":"SUCCESS","successes":0,"failures":0}"#);
        let gate = |min_tests| {
            stage(Some(Gate {
                tests: Some(TestsGate {
                    max_failures: 0,
                    min_tests,
                }),
                findings: None,
                quality: None,
            }))
        };
        let blocked = judge(&gate(1), &RunOutcome::Succeeded, &empty, ctx(&[]));
        assert_eq!(blocked.verdict, Verdict::Blocked);
        assert_eq!(blocked.category, "TestsFailed");
        assert!(blocked.reason.contains("0 tests ran"), "{}", blocked.reason);
        let allowed = judge(&gate(0), &RunOutcome::Succeeded, &empty, ctx(&[]));
        assert_eq!(allowed.verdict, Verdict::Passed);
        // A default gate, as `tests: {}` reads from YAML, requires one test.
        let parsed: TestsGate = serde_json::from_value(json!({})).expect("defaults");
        assert_eq!(parsed.min_tests, 1);
        let three = out(r#"{"result":"SUCCESS","successes":2,"failures":0,"warnings":1}"#);
        assert_eq!(
            judge(&gate(3), &RunOutcome::Succeeded, &three, ctx(&[])).verdict,
            Verdict::Passed
        );
    }

    #[test]
    fn build_stage_reports_its_image() {
        let mut s = stage(None);
        s.produces = Some(Produces::Image);
        let digest = format!("sha256:{}", "b".repeat(64));
        let r = StageResults::new(vec![
            (results::IMAGE_URL.into(), json!(format!("{REPO}:3f2a9c1"))),
            (results::IMAGE_DIGEST.into(), json!(digest.clone())),
        ]);
        let v = judge(&s, &RunOutcome::Succeeded, &r, ctx(&[]));
        assert_eq!(v.verdict, Verdict::Passed);
        assert_eq!(v.image.expect("image").digest, digest);
    }

    fn severity() -> impl Strategy<Value = MaxSeverity> {
        prop_oneof![
            Just(MaxSeverity::None),
            Just(MaxSeverity::Low),
            Just(MaxSeverity::Medium),
            Just(MaxSeverity::High),
            Just(MaxSeverity::Critical)
        ]
    }

    proptest! {
        // Raising maxSeverity never turns a pass into a block.
        #[test]
        fn gates_are_monotonic_in_max_severity(a in severity(), b in severity(), c in 0u32..5, h in 0u32..5, m in 0u32..5, l in 0u32..5, u in 0u32..5) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let r = findings_result(&json!({"critical": c, "high": h, "medium": m, "low": l, "unknown": u}).to_string());
            let strict = judge(&stage(findings_gate(Some(lo), None)), &RunOutcome::Succeeded, &r, ctx(&[]));
            let lax = judge(&stage(findings_gate(Some(hi), None)), &RunOutcome::Succeeded, &r, ctx(&[]));
            prop_assert!(!(strict.verdict == Verdict::Passed && lax.verdict == Verdict::Blocked));
        }

        // maxSeverity none passes exactly when there are no findings at all.
        #[test]
        fn none_blocks_every_finding(c in 0u32..3, h in 0u32..3, m in 0u32..3, l in 0u32..3) {
            let r = findings_result(&json!({"critical": c, "high": h, "medium": m, "low": l}).to_string());
            let v = judge(&stage(findings_gate(Some(MaxSeverity::None), None)), &RunOutcome::Succeeded, &r, ctx(&[]));
            prop_assert_eq!(v.verdict == Verdict::Passed, c + h + m + l == 0);
        }
    }
}
