//! Fix advice: a dependency-audit finding that names its package, the installed version and the
//! version that fixes it blocks the release with the upgrade in the stage status, the Ready
//! condition, the GateBlocked Event; `sluice advise` prints it as a patch that `git apply`
//! takes. Stage outcomes are scripted (`sim.sluice.dev/*`): the real audit Task's output is
//! shaped the same way (examples/evip/tasks.yaml, pypa-audit), this proves what Sluice does with it.

use std::{process::Command, time::Duration};

use sluice::api::{Phase, conditions};
use sluice_e2e::{ENDED, Sim, TestNamespace, clean_sims, repo_dir, state_dir};

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_blocked_audit_names_the_upgrade_and_sluice_advise_prints_the_patch() -> anyhow::Result<()>
{
    let ns = TestNamespace::new("advice").await?;
    let findings = serde_json::json!({"critical": 1, "high": 1, "medium": 0, "low": 0, "unknown": 0, "ids": [
        {"id": "PYSEC-2023-62", "severity": "critical", "package": "flask", "installed": "2.2.2", "fixedIn": "2.2.5"},
        {"id": "GHSA-j8r2-6x86-q33q", "severity": "high", "package": "requests", "installed": "2.28.1", "fixedIn": "2.31.0"}
    ]})
    .to_string();
    let mut sims = clean_sims();
    sims[1] = ("dependency-audit", Sim::results(&[("FINDINGS", &findings)]));
    ns.release("predictor-95", &sims).await?;
    let r = ns.wait_phase("predictor-95", &ENDED, TIMEOUT).await?;
    let status = r.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Phase::Blocked, "{:?}", status.conditions);
    let audit = status
        .stages
        .iter()
        .find(|s| s.name == "dependency-audit")
        .expect("audit stage");
    let fixes: Vec<String> = audit.fixes.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        fixes,
        [
            "flask 2.2.2 → 2.2.5 fixes PYSEC-2023-62",
            "requests 2.28.1 → 2.31.0 fixes GHSA-j8r2-6x86-q33q"
        ]
    );
    let ready = conditions::get(&status.conditions, conditions::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(ready.contains("fix: flask 2.2.2 → 2.2.5"), "{ready}");
    let events = ns.kubectl(&[
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={range .items[?(@.reason==\"GateBlocked\")]}{.note}{\"\\n\"}{end}",
    ])?;
    assert!(
        events.contains("flask 2.2.2 → 2.2.5 fixes PYSEC-2023-62"),
        "{events}"
    );

    // `sluice advise` against the app's requirements file: a patch `git apply` takes.
    let dir = std::env::temp_dir().join(format!("{}-app", ns.name));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("requirements.txt"),
        "flask==2.2.2\nnumpy==1.26.4\nrequests==2.28.1\n",
    )?;
    let out = Command::new(repo_dir().join("target/debug/sluice"))
        .current_dir(&dir)
        .env("KUBECONFIG", state_dir().join("kubeconfig"))
        .args(["advise", "predictor-95", "-n", &ns.name])
        .output()?;
    assert!(
        out.status.success(),
        "sluice advise: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let patch = String::from_utf8(out.stdout)?;
    assert!(patch.contains("-flask==2.2.2\n+flask==2.2.5\n"), "{patch}");
    assert!(
        patch.contains("-requests==2.28.1\n+requests==2.31.0\n"),
        "{patch}"
    );
    std::fs::write(dir.join("fix.patch"), &patch)?;
    let git = |args: &[&str]| Command::new("git").current_dir(&dir).args(args).output();
    git(&["init", "-q"])?;
    let applied = git(&["apply", "fix.patch"])?;
    assert!(
        applied.status.success(),
        "git apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("requirements.txt"))?,
        "flask==2.2.5\nnumpy==1.26.4\nrequests==2.31.0\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
