//! A stage's TaskRun results (TEST_OUTPUT, FINDINGS, IMAGE_URL/IMAGE_DIGEST), judged by every kind
//! of gate: whatever a Task writes, the verdict is a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::{
    api::{Stage, pipeline::Exception},
    gates::{GateContext, RunOutcome, judge, results::StageResults},
};

fn stages() -> Vec<Stage> {
    [
        r#"{"name":"t","taskRef":{"name":"x"},"gate":{"tests":{"maxFailures":1,"minTests":2}}}"#,
        r#"{"name":"f","taskRef":{"name":"x"},"gate":{"findings":{"maxSeverity":"medium","max":{"high":1}}}}"#,
        r#"{"name":"b","taskRef":{"name":"x"},"produces":"image"}"#,
    ]
    .iter()
    .filter_map(|s| serde_json::from_str(s).ok())
    .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The first line picks the result's name, the rest is its value; also the failure message.
    let (name, value) = text.split_once('\n').unwrap_or(("FINDINGS", &text));
    let exceptions: Vec<Exception> = serde_json::from_str(
        r#"[{"id":"PYSEC-1","reason":"r","expires":"2099-01-01"}]"#,
    )
    .unwrap_or_default();
    let ctx = GateContext {
        exceptions: &exceptions,
        today: jiff::civil::date(2026, 11, 24),
        repository: "127.0.0.1:5000/evip/predictor",
    };
    for result in ["TEST_OUTPUT", "FINDINGS", "IMAGE_URL", "IMAGE_DIGEST", name] {
        let results = StageResults::new(vec![
            (result.to_string(), serde_json::Value::String(value.to_string())),
            ("IMAGE_URL".into(), serde_json::Value::String(value.to_string())),
        ]);
        for stage in &stages() {
            let _ = judge(stage, &RunOutcome::Succeeded, &results, ctx);
            let failed = RunOutcome::Failed {
                reason: name.to_string(),
                message: value.to_string(),
            };
            let _ = judge(stage, &failed, &results, ctx);
        }
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        let results = StageResults::new(vec![("FINDINGS".into(), json)]);
        let _ = sluice::gates::results::findings(&results);
    }
});
