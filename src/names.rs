//! Deterministic names of the objects Sluice creates.

use sha2::{Digest, Sha256};

/// Longest name usable as a label value (Tekton labels pods with their TaskRun's name).
pub const MAX_NAME_LEN: usize = 63;

/// `<release>-<stage>`, shortened with a hash of the full name when it would exceed 63 characters.
pub fn task_run_name(release: &str, stage: &str) -> String {
    let full = format!("{release}-{stage}");
    if full.len() <= MAX_NAME_LEN {
        return full;
    }
    let hash = hex8(&full);
    let keep = MAX_NAME_LEN - hash.len() - 1;
    // Kubernetes names are ASCII, but this must not panic on anything: cut on a char boundary.
    let prefix = crate::text::bounded(&full, keep);
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}")
}

/// The TaskRun of a stage's attempt: the first is `task_run_name`, a retry after an
/// infrastructure failure gets `-retry<N>` so the failed one stays as evidence.
pub fn attempt_name(release: &str, stage: &str, attempt: u32) -> String {
    if attempt == 0 {
        task_run_name(release, stage)
    } else {
        task_run_name(release, &format!("{stage}-retry{attempt}"))
    }
}

fn hex8(s: &str) -> String {
    Sha256::digest(s.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(
            task_run_name("predictor-42", "unit-tests"),
            "predictor-42-unit-tests"
        );
    }

    #[test]
    fn long_names_are_shortened_deterministically_and_distinctly() {
        let release = "a".repeat(60);
        let one = task_run_name(&release, "dependency-audit");
        let two = task_run_name(&release, "dependency-audit-2");
        assert_eq!(one.len(), MAX_NAME_LEN);
        assert_eq!(one, task_run_name(&release, "dependency-audit"));
        assert_ne!(one, two);
    }

    proptest! {
        #[test]
        fn names_are_valid_dns_labels(release in "[a-z0-9]([-a-z0-9]{0,80}[a-z0-9])?", stage in "[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?") {
            let n = task_run_name(&release, &stage);
            prop_assert!(n.len() <= MAX_NAME_LEN);
            prop_assert!(!n.ends_with('-') && !n.starts_with('-'));
            prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }

        #[test]
        fn any_text_gives_a_bounded_name_without_a_panic(release in ".{0,80}", stage in ".{0,40}") {
            // Found by the image_reference fuzz target: a cut inside a multi-byte character.
            prop_assert!(task_run_name(&release, &stage).len() <= MAX_NAME_LEN);
        }
    }
}
