//! The stage graph of a pipeline: validation (what CEL cannot check) and readiness.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::Stage;

/// Why a pipeline's stage graph is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// A runAfter entry names no stage.
    #[error("stage {stage} runs after {missing}, which is not a stage of this pipeline")]
    UnknownStage {
        /// The stage with the bad reference.
        stage: String,
        /// The missing name.
        missing: String,
    },
    /// Two stages share a name.
    #[error("stage name {0} is used twice")]
    Duplicate(String),
    /// runAfter edges form a cycle.
    #[error("stages {0} depend on each other in a cycle")]
    Cycle(String),
}

/// Checks names and edges and returns the stages in an order where each follows its runAfter stages.
pub fn order(stages: &[Stage]) -> Result<Vec<&Stage>, DagError> {
    let mut by_name = BTreeMap::new();
    for s in stages {
        if by_name.insert(s.name.as_str(), s).is_some() {
            return Err(DagError::Duplicate(s.name.clone()));
        }
    }
    for s in stages {
        if let Some(missing) = s
            .run_after
            .iter()
            .find(|r| !by_name.contains_key(r.as_str()))
        {
            return Err(DagError::UnknownStage {
                stage: s.name.clone(),
                missing: missing.clone(),
            });
        }
    }
    // Kahn's algorithm, visiting stages in declaration order so the result is stable.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(stages.len());
    while ordered.len() < stages.len() {
        let next = stages.iter().find(|s| {
            !done.contains(s.name.as_str()) && s.run_after.iter().all(|r| done.contains(r.as_str()))
        });
        match next {
            Some(s) => {
                done.insert(&s.name);
                ordered.push(s);
            }
            None => {
                let rest: Vec<&str> = stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .filter(|n| !done.contains(n))
                    .collect();
                return Err(DagError::Cycle(rest.join(", ")));
            }
        }
    }
    Ok(ordered)
}

/// Whether every stage this one runs after has passed.
pub fn is_ready(stage: &Stage, passed: &BTreeSet<String>) -> bool {
    stage.run_after.iter().all(|r| passed.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::pipeline::TaskRef;

    fn s(name: &str, after: &[&str]) -> Stage {
        Stage {
            name: name.into(),
            task_ref: TaskRef {
                name: Some("t".into()),
                kind: None,
                resolver: None,
                params: vec![],
            },
            params: vec![],
            workspaces: vec![],
            run_after: after.iter().map(|a| a.to_string()).collect(),
            gate: None,
            when: None,
            produces: None,
            timeout: None,
            pod_template: None,
        }
    }

    fn names(v: &[&Stage]) -> Vec<String> {
        v.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn orders_dependencies_first_and_keeps_declaration_order_otherwise() {
        let stages = [
            s("build", &["test", "audit"]),
            s("test", &[]),
            s("audit", &[]),
            s("dast", &["build"]),
        ];
        assert_eq!(
            names(&order(&stages).expect("acyclic")),
            ["test", "audit", "build", "dast"]
        );
    }

    #[test]
    fn reports_cycles_unknown_and_duplicate_stages() {
        let cyc = [s("a", &["c"]), s("b", &["a"]), s("c", &["b"]), s("d", &[])];
        assert_eq!(
            order(&cyc).expect_err("cycle"),
            DagError::Cycle("a, b, c".into())
        );
        let self_loop = [s("a", &["a"])];
        assert!(matches!(order(&self_loop), Err(DagError::Cycle(_))));
        let unknown = [s("a", &["zzz"])];
        assert_eq!(
            order(&unknown).expect_err("unknown").to_string(),
            "stage a runs after zzz, which is not a stage of this pipeline"
        );
        let dup = [s("a", &[]), s("a", &[])];
        assert_eq!(
            order(&dup).expect_err("dup"),
            DagError::Duplicate("a".into())
        );
    }

    #[test]
    fn readiness_needs_every_dependency_passed() {
        let build = s("build", &["test", "audit"]);
        let mut passed = BTreeSet::from(["test".to_string()]);
        assert!(!is_ready(&build, &passed));
        passed.insert("audit".to_string());
        assert!(is_ready(&build, &passed));
    }
}
